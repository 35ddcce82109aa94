"""What ``check`` needs to know about a written encoder file, read from the file (and, for ONNX, the
``config.json`` the exporter writes beside it): whether it is an encoder, and its cost model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.encoder_budget import EncoderCost
from compressor.errors import ModelLoadError, require

ENCODER_OUTPUTS = ("sentence_embedding", "logits")


def is_encoder_file(path: Path) -> bool:
    if path.suffix == ".gguf":
        from compressor.loading import read_gguf_fields

        fields, _ = read_gguf_fields(path)
        return fields.get("general.architecture") == "bert"
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    cached = any(n.startswith("past_key_values") for n in inputs)
    return "attention_mask" in inputs and not cached and bool(outputs & set(ENCODER_OUTPUTS))


def _gguf_cost(path: Path) -> tuple[EncoderCost, dict[str, Any]]:
    from compressor.loading import read_gguf_fields

    fields, reader = read_gguf_fields(path)
    arch = str(fields["general.architecture"])
    hidden = int(fields[f"{arch}.embedding_length"])
    heads = int(fields[f"{arch}.attention.head_count"])
    head_dim = int(fields.get(f"{arch}.attention.key_length", hidden // heads))
    mats = [t for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    cost = EncoderCost(
        stored_bytes=float(path.stat().st_size),
        matmul_bytes=float(sum(int(t.n_bytes) for t in mats)),
        matmul_params=int(sum(int(t.n_elements) for t in mats)),
        n_layers=int(fields[f"{arch}.block_count"]),
        hidden=hidden,
        attn_width=heads * head_dim,
        intermediate=int(fields[f"{arch}.feed_forward_length"]),
        quantized=any(t.tensor_type.name not in ("F32", "F16") for t in mats),
        basis="measured: bytes of the file",
    )
    return cost, {
        "layers": cost.n_layers,
        "heads": heads,
        "tensor_types": sorted({t.tensor_type.name for t in mats}),
    }


def _onnx_cost(path: Path) -> tuple[EncoderCost, dict[str, Any]]:
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    cfg_path = path.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        hidden, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        pruned = (cfg.get("pruned_heads") or {}).get("0", [])
        heads = n_heads - len(pruned)
        layers, inter = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{cfg_path} is missing or incomplete ({exc}); re-export the model") from None
    inits = {t.name: t for t in model.graph.initializer}
    params = 0
    nbytes = 0.0
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type == "MatMulNBits":
            a = {x.name: x.i for x in n.attribute}
            params += a["K"] * a["N"]
            nbytes += a["K"] * a["N"] * a.get("bits", 4) / 8
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            dims = list(inits[n.input[1]].dims)
            size = 1
            for d in dims:
                size *= d
            params += size
            nbytes += size * 4
    cost = EncoderCost(
        stored_bytes=float(path.stat().st_size),
        matmul_bytes=nbytes,
        matmul_params=params,
        n_layers=layers,
        hidden=hidden,
        attn_width=heads * (hidden // n_heads),
        intermediate=inter,
        quantized=ops.get("MatMulNBits", 0) > 0,
        basis="measured: bytes of the file",
    )
    return cost, {"layers": layers, "heads": heads, "MatMulNBits": ops.get("MatMulNBits", 0)}


def encoder_file_cost(path: Path) -> tuple[EncoderCost, dict[str, Any]]:
    return _gguf_cost(path) if path.suffix == ".gguf" else _onnx_cost(path)
