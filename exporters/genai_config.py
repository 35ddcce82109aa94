"""``genai_config.json``: what onnxruntime-genai needs to run our ONNX decoder folder.

Our graph is optimum-onnx's ``text-generation-with-past`` layout (inputs ``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``; outputs ``logits``,
``present.N.key/value``, KV as [batch, kv_heads, seq, head_dim]). Those are onnxruntime-genai's default
names; we write them anyway so the file documents the layout. The KV cache grows by concatenation in
optimum's graph, so there ``past_present_share_buffer`` must be false; the GroupQueryAttention graph
``onnx_graph`` writes shares the buffer (no copy per token) and takes no ``position_ids``.
``model.type`` names the family where onnxruntime-genai has one and
is the generic ``decoder`` otherwise. Written by the ONNX exporter beside model.onnx; the bundle sets
the context to the budgeted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.artifact import ModelArtifact, facts_from_config
from compressor.generation import sampling_from_gguf

FILE = "genai_config.json"
GENAI_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "phi3": "phi3"}


def genai_config(artifact: ModelArtifact, filename: str = "model.onnx", fast: bool = True) -> dict[str, Any]:
    """``fast``: the GroupQueryAttention graph of ``onnx_graph`` (shared KV buffer, no position_ids,
    context up to its rotary cache); else optimum's graph."""
    from exporters.onnx_graph import cache_length

    f, v = facts_from_config(artifact.model.config, 0), artifact.vocab  # pruned: the model's own shape
    stop = list(artifact.stop_ids) or ([v.eos_id] if v and v.eos_id is not None else [])
    s = artifact.sampling or sampling_from_gguf({})
    n_layers = f.n_layers
    context = cache_length(artifact) if fast else f.max_context
    inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    if not fast:
        inputs["position_ids"] = "position_ids"
    return {
        "model": {
            "type": GENAI_TYPES.get(f.family, "decoder"),
            "bos_token_id": v.bos_id if v and v.bos_id is not None else stop[0] if stop else 0,
            "eos_token_id": stop if len(stop) > 1 else (stop[0] if stop else 0),
            "pad_token_id": v.pad_id if v and v.pad_id is not None else (stop[0] if stop else 0),
            "vocab_size": f.vocab_size,
            "context_length": context,
            "decoder": {
                "filename": filename,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": f.head_dim,
                "hidden_size": f.hidden_size,
                "num_attention_heads": f.n_heads,
                "num_key_value_heads": f.n_kv_heads,
                "num_hidden_layers": n_layers,
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": s.temperature > 0,
            "temperature": s.temperature if s.temperature > 0 else 1.0,
            "top_k": s.top_k if s.temperature > 0 else 1,
            "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": fast,
        },
    }


def write_genai_config(artifact: ModelArtifact, folder: Path, fast: bool) -> Path:
    path = folder / FILE
    path.write_text(json.dumps(genai_config(artifact, fast=fast), indent=2) + "\n", encoding="utf-8")
    return path


def with_context(path: Path, dest: Path, context_length: int) -> None:
    """Copy ``path`` to ``dest`` with the context (and so the longest generation) set."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    context = min(context_length, int(cfg["model"]["context_length"]))  # never past the rotary cache
    cfg["model"]["context_length"] = context
    cfg["search"]["max_length"] = context
    dest.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
