"""Read what the budget model needs straight from a GGUF file (used by ``check`` and the final measure)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from compressor.arch import spec_for_gguf_arch
from compressor.artifact import kv_cache_bytes
from compressor.budget import ModelCost
from compressor.errors import ModelLoadError
from compressor.loading import read_gguf_fields


def gguf_layer_windows(fields: dict[str, Any], arch: str, n_layers: int, where: str) -> tuple[int, ...]:
    """Per layer, the sliding window llama.cpp will use for this file (0 = whole context)."""
    spec = spec_for_gguf_arch(arch, where)
    window = int(fields.get(f"{arch}.attention.sliding_window") or 0)
    if spec.gguf_ignores_window or window <= 0:
        return ()
    pattern = fields.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return tuple(window if p else 0 for p in pattern)
    n = int(pattern or spec.gguf_swa_period)
    return tuple(window if n == 0 or i % n < n - 1 else 0 for i in range(n_layers))


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
    windows = gguf_layer_windows(fields, str(arch), n_layers, str(path))
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
        kv_bytes_per_token=kv_cache_bytes((0,) * n_layers, n_kv * head_dim, 1, 2.0),
        kv_windows=windows,
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
        "sliding_window_layers": sum(1 for w in windows if w),
    }
    return cost, summary
