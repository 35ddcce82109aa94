"""What the budget model needs, read from an exported ONNX decoder (for ``check`` and the final measure)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compressor.arch import spec_for_model_type
from compressor.arch.config_keys import get
from compressor.arch.config_keys import head_dim as config_head_dim
from compressor.artifact import kv_cache_bytes
from compressor.budget import ModelCost
from compressor.errors import ModelLoadError, require

_BYTES = {1: 4, 2: 1, 3: 1, 6: 4, 7: 8, 10: 2, 11: 8}  # onnx TensorProto data types we meet


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def external_data_locations(model: Any) -> set[str]:
    """The ``location`` of every initializer stored outside the .onnx file."""
    out = set()
    for t in model.graph.initializer:
        if t.data_location == 1:  # TensorProto.EXTERNAL
            out |= {e.value for e in t.external_data if e.key == "location"}
    return out


def _plain_relative(location: str) -> bool:
    parts = location.replace("\\", "/").split("/")
    return bool(location) and not location.startswith("/") and ":" not in location and ".." not in parts


def onnx_summary(path: Path) -> tuple[ModelCost, dict[str, Any]]:
    """(ModelCost of the ONNX file, a summary of its quantized operators). Needs config.json beside it."""
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    cfg_path = path.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        keys = spec_for_model_type(str(cfg.get("model_type")), str(cfg_path)).keys
        ns = SimpleNamespace(**cfg)
        n_layers, n_heads = int(get(ns, keys.n_layers)), int(get(ns, keys.n_heads))
        n_kv = int(get(ns, keys.n_kv_heads, n_heads))
        head_dim = config_head_dim(keys, ns)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{cfg_path} is missing or incomplete ({exc}); re-export the model") from None
    inits = {t.name: t for t in model.graph.initializer}
    bad = [loc for loc in external_data_locations(model) if not _plain_relative(loc)]
    if bad:
        raise ModelLoadError(
            f"{path} points its weights outside its folder ({', '.join(sorted(bad)[:3])}); "
            "refusing to read them: re-export the model"
        )
    stored = sum(_numel(t.dims) * _BYTES.get(t.data_type, 4) for t in inits.values())
    ops = Counter(n.op_type for n in model.graph.node)
    matmul = 0
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in n.attribute}
            matmul += attrs["K"] * attrs["N"]
        elif n.op_type == "MatMul" and n.input[1] in inits:
            matmul += _numel(inits[n.input[1]].dims)
    vocab = int(get(ns, keys.vocab, 0))
    if get(ns, keys.tied, False) and ops.get("MatMulNBits", 0) == 0:
        matmul += vocab * int(get(ns, keys.hidden))  # head exported as MatMul(x, Transpose(E))
    cost = ModelCost(
        stored_bytes=path.stat().st_size,
        streamed_bytes=stored,
        matmul_params=matmul,
        # onnxruntime keeps the cache in fp32, and the exported graph keeps every position in every layer
        kv_bytes_per_token=kv_cache_bytes((0,) * n_layers, n_kv * head_dim, 1, 4.0),
        vocab_size=vocab,
        quantized=ops.get("MatMulNBits", 0) > 0,
        basis="measured: bytes of the file",
    )
    summary = {
        "layers": n_layers,
        "heads": n_heads,
        "kv_heads": n_kv,
        "MatMulNBits": ops.get("MatMulNBits", 0),
        "GatherBlockQuantized": ops.get("GatherBlockQuantized", 0),
        "float_MatMul": ops.get("MatMul", 0),
    }
    return cost, summary
