"""ONNX exporter for BERT-family encoders: one file an app calls once per batch.

Inputs ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes), plus
``token_type_ids`` where the family has more than one token type (BERT; RoBERTa's type vocabulary
has one entry, so its graph reads the embedding's zero row and takes no such input). Output
``sentence_embedding`` (pooling and L2 normalisation inside the graph) or ``logits`` (classifiers).

Why our own exporter rather than optimum-onnx's feature-extraction export + onnxruntime's quantizer:

* optimum's export outputs token states: pooling and normalisation would be left to every app (its
  sentence-transformers path needs that package and runs its module code). We export
  ``EncoderModel`` itself with ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, as
  optimum uses: onnxruntime's transformer optimizer recognises that exporter's graph patterns), so
  the graph runs exactly what ``compressor.encoder.encode`` runs, ``pool`` included.
* ``quantize_dynamic`` chooses its own per-tensor int8 scales; we store *our* codes (the quantize
  stage's, what QAT trained through) as ``MatMulNBits`` / ``GatherBlockQuantized`` with the decoder
  exporter's rewrite (``exporters.onnx.rewrite_quantized``), so the file computes what the torch
  model holding the dequantized weights computes.
* Speed (all-MiniLM-L6-v2, 2 threads on a Xeon with AMX/VNNI, 8 x 128 tokens): ``MatMulNBits``
  (blockwise codes) runs 2.8-3.7x slower than onnxruntime's integer GEMM there, even slower than
  fp32 (int8 block 32: 126 ms; fp32: 105 ms; optimum + quantize_dynamic: 40 ms). Int8 weights with
  one block per row (a scale per output channel, still our codec and our codes) are therefore
  written as ``MatMulIntegerToFloat`` on a shared ``DynamicQuantizeLinear`` of the input (38 ms,
  cosine 0.993 to float torch, where quantize_dynamic's per-tensor scales give 0.960). Blockwise
  weights stay ``MatMulNBits``. ``fuse=True`` first runs onnxruntime's transformer optimizer with
  only the fusions that keep every weight in its own ``MatMul`` (LayerNormalization,
  SkipLayerNormalization with the output bias, BiasGelu, MultiHeadAttention over separate Q/K/V;
  the packed-QKV ``Attention`` and ``EmbedLayerNormalization`` fusions concatenate or absorb
  weights, which then no longer match our codes by content). It is off by default: the session's
  own load-time fusions of the unfused graph were faster on every batch shape measured (per-row
  int8 39 vs 45 ms, MatMulNBits int8 117 vs 126 ms; the CPU MultiHeadAttention is the slow part).
  Classifier heads on 2-D inputs come out of the exporter as ``Gemm``;
  those are split into ``MatMul`` + ``Add`` so they are rewritten too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.artifact import ModelArtifact, QuantizedTensor
from compressor.encoder import EncoderModel, Task, encode, encoder_facts, max_length, tokenize
from compressor.errors import ConfigError, OutputError, require
from compressor.onnx_blocks import BlockQuant
from exporters.onnx import MS_DOMAIN, ONNX_DIR, rewrite_quantized

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "sentence_embedding"
LOGITS_OUTPUT = "logits"


def uses_token_types(model: EncoderModel) -> bool:
    """Whether the graph takes ``token_type_ids`` (a type vocabulary of one needs no input)."""
    return int(getattr(model.config, "type_vocab_size", 1) or 1) > 1


class _Exportable(torch.nn.Module):
    """Positional forward for the TorchScript exporter (optional ``token_type_ids``)."""

    def __init__(self, model: EncoderModel, token_types: bool) -> None:
        super().__init__()
        self.model, self.token_types = model, token_types

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = inputs[0], inputs[1]
        token_type_ids = inputs[2] if self.token_types else None
        return self.model(input_ids, attention_mask, token_type_ids)


def _torch_export(model: EncoderModel, tokenizer: Any, path: Path) -> tuple[list[str], str]:
    """fp32 ONNX of ``model`` (pooling included) at ``path``; returns (input names, output name)."""
    token_types = uses_token_types(model)
    names = list(INPUT_NAMES if token_types else INPUT_NAMES[:2])
    output = LOGITS_OUTPUT if model.task is Task.CLASSIFICATION else EMBEDDING_OUTPUT
    sample = tokenize(tokenizer, ["a short one", "and a somewhat longer second input sentence"], 16)
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {output: {0: "batch"}}
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
            torch.onnx.export(
                _Exportable(model, token_types),
                args,
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise ConfigError(
            f"torch.onnx.export could not export this encoder: {type(exc).__name__}: {exc}"
        ) from None
    return names, output


def _fuse(path: Path, model: EncoderModel, out: Path, attention: bool = True) -> dict[str, int]:
    """onnxruntime's transformer fusions that keep every weight MatMul; returns the fused-op counts."""
    optimizer = require("onnxruntime.transformers.optimizer", "onnx")
    fusion = require("onnxruntime.transformers.fusion_options", "onnx")
    facts = encoder_facts(model)
    opts = fusion.FusionOptions("bert")
    opts.enable_embed_layer_norm = False  # would absorb the (quantized) embedding tables
    opts.use_multi_head_attention = True  # Q/K/V stay separate MatMuls (packed QKV breaks matching)
    opts.enable_gelu_approximation = False  # keep erf GELU: exact against torch
    opts.enable_attention = attention
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    fused = optimizer.optimize_model(
        str(path),
        model_type="bert",
        num_heads=facts.n_heads,
        hidden_size=facts.n_heads * facts.head_dim,
        optimization_options=opts,
        opt_level=0,  # python fusions only; the session applies onnxruntime's own optimizations
        use_gpu=False,
    )
    fused.save_model_to_file(str(out))
    return {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}


def _split_gemms(model: Any) -> int:
    """``Gemm(A, W, C, transB=1)`` on a weight -> ``MatMul(A, W^T)`` + ``Add(C)``, so the rewrite
    (which matches MatMul weights) also quantizes 2-D linear layers (BERT pooler, classifier)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, n = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA")
        if node.op_type != "Gemm" or not simple or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        wt = node.input[1] + ".T"
        if wt not in inits:
            t = numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB") else w), wt)
            model.graph.initializer.append(t)
            inits[wt] = t
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + ".mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], wt], [mm_out], name=node.name + "_mm"))
        if has_bias:
            nodes.append(
                helper.make_node("Add", [mm_out, node.input[2]], list(node.output), name=node.name + "_b")
            )
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for nd in model.graph.node for i in nd.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return n


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).hexdigest()


def _is_per_row(bq: Any) -> bool:
    """Symmetric int8 with one block per row: a scale per output channel."""
    return isinstance(bq, BlockQuant) and bq.bits == 8 and bq.zero_points is None and bq.codes.shape[1] == 1


TOKEN_SHIFT = 1.0  # c: per-token quantization covers [-c, 254c]; GELU/SiLU outputs are >= -0.28


def _token_quant(helper: Any, x: str, outs: list[str], add: Any) -> list[Any]:
    """uint8 codes of ``x`` with one scale per token, for inputs bounded below (an FFN activation):
    s0 = (max(x) + c) / 255, z = max(1, floor(c / s0)), s = c / z, q = round(x / s) + z, one fused
    ``QuantizeLinear`` along the token axis. Because s * z = c for every token, the zero points'
    share of the product is the constant c * colsum(W), folded into the bias: the rescale is a single
    multiply by the token's scale. Outputs: codes, scales (tokens,), ``<scale>.col`` as a column."""
    xq, xs, _ = outs
    n = x + ".tq"
    c = add("tq.c", np.float32(TOKEN_SHIFT))
    inv = add("tq.inv255", np.float32(1.0 / 255.0))
    tiny = add("tq.tiny", np.float32(1e-8))
    one = add("tq.onef", np.float32(1.0))
    lastidx = add("tq.lastidx", np.array([-1], dtype=np.int64))
    rows = add("tq.rows", np.array([-1], dtype=np.int64))
    colone = add("tq.col", np.array([1], dtype=np.int64))
    zero_i = add("tq.zero_i", np.array([0], dtype=np.int64))
    return [
        helper.make_node("Shape", [x], [n + ".shape"], name=n + ".shape"),
        helper.make_node("Gather", [n + ".shape", lastidx], [n + ".k"], name=n + ".k", axis=0),
        helper.make_node("Concat", [rows, n + ".k"], [n + ".2d"], name=n + ".2d", axis=0),
        helper.make_node("Reshape", [x, n + ".2d"], [n + ".x2"], name=n + ".x2"),
        helper.make_node("ReduceMax", [n + ".x2"], [n + ".mx"], name=n + ".mx", axes=[1], keepdims=0),
        helper.make_node("Add", [n + ".mx", c], [n + ".range"], name=n + ".range"),
        helper.make_node("Mul", [n + ".range", inv], [n + ".s0"], name=n + ".s0"),
        helper.make_node("Max", [n + ".s0", tiny], [n + ".s1"], name=n + ".s1"),
        helper.make_node("Div", [c, n + ".s1"], [n + ".cs"], name=n + ".cs"),
        helper.make_node("Floor", [n + ".cs"], [n + ".zf0"], name=n + ".zf0"),
        helper.make_node("Max", [n + ".zf0", one], [n + ".zf"], name=n + ".zf"),
        helper.make_node("Div", [c, n + ".zf"], [xs], name=n + ".s"),
        helper.make_node("Cast", [n + ".zf"], [n + ".z"], name=n + ".z", to=2),  # uint8
        helper.make_node("QuantizeLinear", [n + ".x2", xs, n + ".z"], [n + ".q2"], name=n + ".q", axis=0),
        helper.make_node("Reshape", [n + ".q2", n + ".shape"], [xq], name=n + ".qshape"),
        helper.make_node("Slice", [n + ".shape", zero_i, lastidx], [n + ".lead"], name=n + ".lead"),
        helper.make_node("Concat", [n + ".lead", colone], [n + ".colshape"], name=n + ".colshape", axis=0),
        helper.make_node("Reshape", [xs, n + ".colshape"], [xs + ".col"], name=n + ".scol"),
    ]


def _fold_into_bias(graph_nodes: Any, inits: dict[str, Any], y: str, delta: np.ndarray, add: Any) -> bool:
    """Add ``delta`` to the bias of the ``Add(y, bias)`` that follows ``y``; False if there is none."""
    from onnx import numpy_helper

    for node in graph_nodes:
        if node.op_type == "Add" and y in node.input:
            other = node.input[1 - list(node.input).index(y)]
            if other in inits and tuple(inits[other].dims) == delta.shape:
                bias = numpy_helper.to_array(inits[other]).astype(np.float32)
                node.input[list(node.input).index(other)] = add(other + ".shifted", bias + delta)
                return True
    return False


def _rewrite_per_row(
    graph: Any,
    quantized: dict[str, QuantizedTensor],
    params: dict[str, np.ndarray],
    per_token: set[str],
    row_limit: dict[str, int] | None = None,
) -> dict:
    """int8 weights with one block per row (a scale per output channel) need no MatMulNBits: a
    ``MatMul`` by one becomes ``MatMulIntegerToFloat`` on its input quantized once to uint8 by
    ``DynamicQuantizeLinear`` (shared by Q, K and V): onnxruntime's int8 GEMM (AMX / VNNI on x86),
    5-10x faster per matrix than MatMulNBits there. An embedding ``Gather`` reads int8 rows and
    their scales.
    Codes and scales are ours, so the result equals the dequantized weights up to the activations'
    per-tensor uint8 rounding. Other weights are left for ``rewrite_quantized``."""
    from onnx import helper, numpy_helper

    rows: dict[str, BlockQuant] = {n: q.data for n, q in quantized.items() if _is_per_row(q.data)}
    by_digest = {_digest(w): n for n, w in params.items() if n in rows}
    inits = {t.name: t for t in graph.graph.initializer}
    counts = {"MatMulIntegerToFloat": 0, "Gather": 0}

    def add(name: str, a: Any) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(a), name)
            graph.graph.initializer.append(inits[name])
        return name

    def weight(name: str) -> np.ndarray | None:
        t = inits.get(name)
        return numpy_helper.to_array(t) if t is not None and len(t.dims) == 2 and t.data_type == 1 else None

    nodes: list[Any] = []
    shared: dict[str, list[str]] = {}
    shifts: list[tuple[str, np.ndarray]] = []  # (product, constant to add): per-token zero points
    for node in graph.graph.node:
        w = weight(node.input[1]) if node.op_type == "MatMul" else None
        pname = by_digest.get(_digest(w.T)) if w is not None else None
        if pname is not None:
            bq = rows[pname]
            q8 = (bq.codes[:, 0, :].astype(np.int16) - bq.implicit_zero_point()).astype(np.int8)  # (N, K)
            b = add(pname + ".q8", q8.T)
            s = add(pname + ".qscale", bq.scales[:, 0].astype(np.float32))
            x = node.input[0]
            if pname in per_token:  # FFN-down: GELU's outputs have outlier tokens, so a scale per token
                if x not in shared:
                    shared[x] = [f"{x}.u8", f"{x}.u8scale", ""]
                    nodes += _token_quant(helper, x, shared[x], add)
                xq, xs, _ = shared[x]
                one, zero_u8 = add("tq.one", np.float32(1.0)), add("tq.zero_u8", np.uint8(0))
                y = node.output[0]
                nodes += [
                    helper.make_node(
                        "MatMulIntegerToFloat",
                        [xq, b, one, s, zero_u8],
                        [y + ".f"],
                        name=y + ".mm",
                        domain=MS_DOMAIN,
                    ),
                    helper.make_node("Mul", [y + ".f", xs + ".col"], [y], name=y + ".out"),
                ]
                deq_colsum = q8.astype(np.float32).sum(axis=1) * bq.scales[:, 0]  # (N,)
                shifts.append((y, (-TOKEN_SHIFT * deq_colsum).astype(np.float32)))
            else:  # smoothed inputs (stages.smooth): one uint8 scale for the tensor, shared by Q, K, V
                if x not in shared:
                    shared[x] = [f"{x}.u8", f"{x}.u8scale", f"{x}.u8zero"]
                    nodes.append(helper.make_node("DynamicQuantizeLinear", [x], shared[x], name=x + ".u8"))
                xq, xs, xz = shared[x]
                nodes.append(
                    helper.make_node(
                        "MatMulIntegerToFloat",
                        [xq, b, xs, s, xz],
                        list(node.output),
                        name=node.name + "_dq",
                        domain=MS_DOMAIN,
                    )
                )
            counts["MatMulIntegerToFloat"] += 1
            continue
        w = weight(node.input[0]) if node.op_type == "Gather" else None
        pname = by_digest.get(_digest(w)) if w is not None else None
        if pname is not None:
            bq = rows[pname]
            keep = (row_limit or {}).get(pname, len(bq.codes))  # positions past the served length
            q8 = (bq.codes[:keep, 0, :].astype(np.int16) - bq.implicit_zero_point()).astype(np.int8)
            table, scales = (
                add(pname + ".q8", q8),
                add(pname + ".qscale", bq.scales[:keep, :1].astype(np.float32)),
            )
            out, ids = node.output[0], node.input[1]
            nodes += [
                helper.make_node("Gather", [table, ids], [out + ".q8"], name=out + ".q8"),
                helper.make_node("Gather", [scales, ids], [out + ".s"], name=out + ".s"),
                helper.make_node("Cast", [out + ".q8"], [out + ".f"], name=out + ".f", to=1),
                helper.make_node("Mul", [out + ".f", out + ".s"], [out], name=out + ".mul"),
            ]
            counts["Gather"] += 1
            continue
        nodes.append(node)
    for y, delta in shifts:
        if not _fold_into_bias(nodes, inits, y, delta, add):
            const = add(y + ".shift", delta)
            for nd in nodes:
                for k, name in enumerate(nd.input):
                    if name == y and nd.name != y + ".shiftadd":
                        nd.input[k] = y + ".shifted"
            nodes.append(helper.make_node("Add", [y, const], [y + ".shifted"], name=y + ".shiftadd"))
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    used = {i for nd in graph.graph.node for i in nd.input}
    for t in [t for t in graph.graph.initializer if t.name not in used]:
        graph.graph.initializer.remove(t)
    if counts["MatMulIntegerToFloat"] and not any(o.domain == MS_DOMAIN for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def compact_names(model: Any) -> None:
    """Short names for every value, initializer and node (the graph's inputs and outputs keep theirs):
    the exporter's path-like names cost ~150 KB in a 6-layer encoder file."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"v{len(names):x}"
        return names[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    for v in graph.value_info:
        v.name = short(v.name)
    del graph.value_info[:]  # shapes are re-inferred by the runtime; keep the file lean
    for node in graph.node:
        node.ClearField("doc_string")
    graph.ClearField("doc_string")


def op_counts(model: Any) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def export_encoder_onnx(
    artifact: ModelArtifact,
    out_dir: Path,
    *,
    fuse: bool = False,
    attention: bool = True,
    accuracy_level: int | None = None,
) -> tuple[list[Path], dict]:
    """Write ``out_dir/onnx/`` (model.onnx, config.json, tokenizer files) in the artifact's scheme.

    ``fuse``: onnxruntime's transformer fusions (see the module docstring; off by default, measured
    slower than the session's own load-time fusions); ``attention``: the MultiHeadAttention fusion;
    ``accuracy_level`` overrides the scheme's MatMulNBits compute type. Returns the written files and
    the facts for the report: file size, inputs/outputs, op counts, fusions, rewritten weights.
    """
    onnx = require("onnx", "onnx")
    model: EncoderModel = artifact.model
    if not isinstance(model, EncoderModel):
        raise ConfigError("export_encoder_onnx needs an encoder (BERT family) artifact")
    target = out_dir / ONNX_DIR
    target.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {"opset": OPSET, "task": model.task.value}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        inputs, output = _torch_export(model, artifact.tokenizer, fp32)
        src = fp32
        if fuse:
            src = Path(tmp) / "fused.onnx"
            facts["fusions"] = _fuse(fp32, model, src, attention)
        graph = onnx.load(str(src))
    scheme = artifact.scheme
    if artifact.quantized and scheme is not None:
        level = scheme.accuracy_level if accuracy_level is None else accuracy_level
        facts["gemms_split"] = _split_gemms(graph)
        params = {n: p.detach().float().numpy() for n, p in model.named_parameters()}
        from compressor.arch import Slot, identify

        slots = {n: t.slot for n in artifact.quantized if (t := identify(model.spec, n)) is not None}
        per_token = {n for n, slot in slots.items() if slot is Slot.DOWN}
        served = max_length(model, artifact.tokenizer) + model.spec.position_offset
        limit = {n: served for n, slot in slots.items() if slot is Slot.POS_EMBED}
        per_row = _rewrite_per_row(graph, artifact.quantized, params, per_token, limit)
        facts["positions_stored"] = served
        counts = rewrite_quantized(graph, artifact.quantized, params, level)
        counts["MatMulIntegerToFloat"] = per_row["MatMulIntegerToFloat"]
        counts["GatherBlockQuantized"] += per_row["Gather"]
        expected = sum(1 for q in artifact.quantized.values() if isinstance(q.data, BlockQuant))
        if counts["MatMulNBits"] + counts["GatherBlockQuantized"] + counts["MatMulIntegerToFloat"] < expected:
            raise ConfigError(
                f"ONNX rewrite found {counts} for {expected} quantized weights; the exported encoder "
                "graph does not have the expected MatMul/Gather structure"
            )
        facts |= {"scheme": scheme.name, "accuracy_level": level, "rewritten": counts}
    else:
        facts["scheme"] = scheme.name if scheme is not None else "onnx:fp32"
    path = target / "model.onnx"
    compact_names(graph)
    try:
        onnx.save(graph, str(path))
    except (OSError, ValueError) as exc:
        raise OutputError(f"could not write {path}: {exc}") from None
    model.config.to_json_file(str(target / "config.json"))
    if "positions_stored" in facts:  # the file holds only the served positions: say so to its readers
        cfg = json.loads((target / "config.json").read_text(encoding="utf-8"))
        cfg["max_position_embeddings"] = facts["positions_stored"]
        (target / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    tok_files = [Path(p) for p in artifact.tokenizer.save_pretrained(target)]
    files = [path, target / "config.json", *(p for p in tok_files if p.is_file())]
    facts |= {
        "file_bytes": path.stat().st_size,
        "inputs": inputs,
        "outputs": [output],
        "max_length": max_length(model, artifact.tokenizer),
        "ops": op_counts(graph),
    }
    if not any(o.domain == MS_DOMAIN for o in graph.opset_import) and facts.get("rewritten"):
        raise OutputError(f"{path}: rewritten graph lacks the {MS_DOMAIN} opset")
    log.info("wrote %s (%.1f MiB, %s)", path, facts["file_bytes"] / 2**20, facts.get("rewritten", "fp32"))
    return files, facts


# --- running the file -------------------------------------------------------------------------


def ort_session(path: Path, threads: int = 2) -> Any:
    """A CPU onnxruntime session as the pipeline measures it: ``threads`` intra-op threads, all
    graph optimizations, sequential execution."""
    ort = require("onnxruntime", "onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(session: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The session's inputs from a tokenized batch (torch or numpy), as int64 arrays."""
    out = {}
    for i in session.get_inputs():
        v = batch[i.name]
        out[i.name] = np.ascontiguousarray(v.numpy() if isinstance(v, torch.Tensor) else v, dtype=np.int64)
    return out


def time_batch(session: Any, batch: dict[str, Any], runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Latency of one ``session.run`` on ``batch``: median, p90 and min in ms over ``runs``."""
    f = feeds(session, batch)
    for _ in range(warmup):
        session.run(None, f)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, f)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
        "min_ms": round(times[0], 3),
        "runs": runs,
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na, 1e-12)


def validate_encoder_onnx(
    path: Path, artifact: ModelArtifact, texts: Sequence[str], threads: int = 2, batch_size: int = 32
) -> dict[str, Any]:
    """Run ``path`` in onnxruntime on ``texts`` and compare with ``encode(artifact.model, ...)``:
    mean/min cosine for embeddings; max |Δlogit| and label agreement for classifiers."""
    model: EncoderModel = artifact.model
    n = max_length(model, artifact.tokenizer)
    session = ort_session(path, threads)
    got = []
    for i in range(0, len(texts), batch_size):
        batch = tokenize(artifact.tokenizer, list(texts[i : i + batch_size]), n)
        got.append(session.run(None, feeds(session, batch))[0])
    ours = np.concatenate(got).astype(np.float32)
    ref = encode(model, artifact.tokenizer, list(texts), max_len=n).numpy()
    out: dict[str, Any] = {"runtime": "onnxruntime", "texts": len(texts), "max_length": n}
    if model.task is Task.CLASSIFICATION:
        out["max_abs_logit_diff"] = float(np.abs(ours - ref).max())
        out["label_agreement"] = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    else:
        cos = _cosines(ours, ref)
        out["mean_cosine"], out["min_cosine"] = float(cos.mean()), float(cos.min())
    return out


# --- the peer pipeline ----------------------------------------------------------------------------


def peer_quantize_dynamic(model_dir: Path, out_dir: Path) -> Path:
    """The usual recipe we compare against: optimum-onnx's feature-extraction export (fp32, token
    states out) + ``onnxruntime.quantization.quantize_dynamic`` with default settings (QInt8
    weights). Returns the quantized model; pool its output with ``pool_numpy``."""
    import contextlib
    import io

    exporters = require("optimum.exporters.onnx", "onnx")
    quant = require("onnxruntime.quantization", "onnx")
    fp32_dir = out_dir / "peer-fp32"
    with contextlib.redirect_stdout(io.StringIO()):
        exporters.main_export(
            str(model_dir),
            output=str(fp32_dir),
            task="feature-extraction",
            library_name="transformers",  # token states, as a plain HF export gives
            do_validation=False,
            device="cpu",
            local_files_only=True,
        )
    out = out_dir / "peer-int8.onnx"
    quant.quantize_dynamic(str(fp32_dir / "model.onnx"), str(out), weight_type=quant.QuantType.QInt8)
    return out


def pool_numpy(
    hidden: np.ndarray, mask: np.ndarray, mode: str = "mean", normalize: bool = True
) -> np.ndarray:
    """Sentence-transformers pooling of token states in numpy (for the peer's token-state output)."""
    m = mask[..., None].astype(hidden.dtype)
    out = hidden[:, 0] if mode == "cls" else (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
