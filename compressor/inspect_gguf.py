"""Read what the budget model needs straight from a GGUF file (used by ``check`` and the final measure)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from compressor.budget import ModelCost
from compressor.errors import ModelLoadError
from compressor.loading import read_gguf_fields


def gguf_summary(path: Path) -> tuple[ModelCost, dict[str, Any]]:
    """(ModelCost of the file, a summary: architecture, tensor types, bits per weight)."""
    fields, reader = read_gguf_fields(path)
    arch = fields.get("general.architecture")
    try:
        n_layers = int(fields[f"{arch}.block_count"])
        n_heads = int(fields[f"{arch}.attention.head_count"])
        n_kv = int(fields.get(f"{arch}.attention.head_count_kv", n_heads))
        hidden = int(fields[f"{arch}.embedding_length"])
        head_dim = int(fields.get(f"{arch}.attention.key_length", hidden // n_heads))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} lacks the metadata of a decoder model ({exc})") from None
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    streamed, matmul, n_weights, n_bytes = 0.0, 0, 0, 0
    types: Counter[str] = Counter()
    for t in reader.tensors:
        types[t.tensor_type.name] += 1
        n_weights += int(t.n_elements)
        n_bytes += int(t.n_bytes)
        if t.name == "token_embd.weight" and not tied:
            continue
        streamed += int(t.n_bytes)
        if len(t.shape) == 2:
            matmul += int(t.n_elements)
    tokens = fields.get("tokenizer.ggml.tokens") or []
    cost = ModelCost(
        stored_bytes=path.stat().st_size,
        streamed_bytes=streamed,
        matmul_params=matmul,
        kv_bytes_per_token=2 * n_layers * n_kv * head_dim * 2.0,
        vocab_size=len(tokens) or int(fields.get(f"{arch}.vocab_size", 0)),
        quantized=any(k not in ("F32", "F16") for k in types),
        basis="measured: bytes of the file",
    )
    summary = {
        "architecture": arch,
        "layers": n_layers,
        "heads": n_heads,
        "kv_heads": n_kv,
        "tensor_types": dict(types),
        "bits_per_weight": round(8 * n_bytes / max(n_weights, 1), 3),
        "tied_embeddings": tied,
    }
    return cost, summary
