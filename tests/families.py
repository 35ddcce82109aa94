"""Tiny random models of every supported family, built in code: real config keys, shrunk sizes, the
family's tokenizer kind (``tests.family_tokenizers``). Used by the per-family chain tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
TOKENIZER_KIND = {
    "llama": "llama3",
    "mistral": "spm",
    "qwen2": "qwen2",
    "qwen3": "qwen2",
    "gemma3": "gemma",
    "phi3": "spm",
}
WINDOW = 8  # Gemma 3's sliding window, small so that test sequences run past it


def _config(family: str, tok: Any) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if family == "llama":  # Llama 3.2: tied head, llama3 rope scaling
        rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        rope["original_max_position_embeddings"] = 256
        return tf.LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=rope)
    if family == "mistral":
        return tf.MistralConfig(**common, tie_word_embeddings=False, sliding_window=None, rope_theta=1e6)
    if family == "qwen2":  # q/k/v biases
        return tf.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False)
    if family == "qwen3":  # q/k norms
        return tf.Qwen3Config(**common, tie_word_embeddings=True, rope_theta=1e6)
    if family == "gemma3":  # 3 layers: sliding, sliding, global
        common["num_hidden_layers"] = 3
        return tf.Gemma3TextConfig(
            **common,
            tie_word_embeddings=True,
            rope_theta=1e6,
            rope_local_base_freq=10000.0,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
        )
    if family == "phi3":  # fused qkv and gate_up
        return tf.Phi3Config(**common, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None)
    raise ValueError(family)


def build_family_model(family: str, root: Path, seed: int = 0, tokenizer: Any = None) -> Path:
    """Save a tiny random ``family`` model and its tokenizer (the family's kind unless ``tokenizer``
    is given) under ``root``; return ``root``."""
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        from tests.family_tokenizers import build_tokenizer

        tokenizer = build_tokenizer(TOKENIZER_KIND[family])
    tok = tokenizer
    config = _config(family, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norms, so that a wrong norm offset or a dropped norm shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root
