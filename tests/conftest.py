"""Shared fixtures: a tiny llama model with a real byte-level BPE tokenizer, built in code."""

from __future__ import annotations

from pathlib import Path

import pytest

LICENSE_TEXT = Path("/usr/share/common-licenses/GPL-3")


def corpus() -> str:
    if LICENSE_TEXT.is_file():
        return LICENSE_TEXT.read_text(encoding="utf-8")
    return "The quick brown fox jumps over the lazy dog 0123456789.\n" * 200


def build_tiny_model_dir(root: Path, seed: int = 0) -> Path:
    """A 2-layer llama (hidden 64, 4 q heads over 2 kv heads) + a 320-token SmolLM-style tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([corpus()], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.chat_template = (
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root


TINY_PROFILE = """
name = "tiny-test"
description = "generous budgets for the tiny test model"

[hardware]
cpu = "test"  # test fixture
cores = 2  # test fixture
ram_mib = 1024  # test fixture
memory_bandwidth_gbps = 10.0  # test fixture

[hardware.peak]
fp32_gflops = 50.0  # test fixture
int8_gops = 100.0  # test fixture

[runtime]
threads = 2
context_length = 256

[budgets]
max_size_mib = 50
max_ram_mib = 1024
max_decode_ms_per_token = 1000
max_ttft_ms = 10000
ttft_prompt_tokens = 32
"""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "tiny-test.toml"
    path.write_text(TINY_PROFILE, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_artifact(tiny_model_dir: Path):
    from compressor.loading import load_model

    return load_model(str(tiny_model_dir))
