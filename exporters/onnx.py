"""ONNX exporter for causal LMs with a KV cache (one graph: prefill and decode with past_key_values).

1. optimum-onnx exports the torch model (task ``text-generation-with-past``). The torch model already
   holds the weights the scheme will store (the quantize stage put the dequantized values back), and
   pruned, non-standard sizes export as they are (``head_dim`` stays explicit in config.json).
2. For int4/int8 schemes we rewrite the graph ourselves rather than run onnxruntime's quantizer, so
   that the stored codes and scales are *ours* (``onnx_blocks``, the same code the fake-quantizer
   follows): every ``MatMul`` by a weight becomes ``MatMulNBits``; the tied head, exported as
   ``MatMul(x, Transpose(embedding))``, becomes ``MatMulNBits`` on the embedding rows (which
   onnxruntime's quantizer skips); the embedding ``Gather`` becomes ``GatherBlockQuantized`` reading
   the same bytes. Initializers are matched to torch parameters by their exact contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifact import ModelArtifact, QuantizedTensor
from compressor.errors import ConfigError, OutputError, require
from compressor.onnx_blocks import BlockQuant, matmul_nbits_tensors
from exporters import onnx_graph
from exporters.genai_config import write_genai_config

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"
ONNX_DIR = "onnx"
EXTERNAL_ABOVE = 1_800_000_000  # bytes of graph + weights above which the weights go to model.onnx.data


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).hexdigest()


def _torch_export(artifact: ModelArtifact, work: Path) -> Path:
    """optimum-onnx export of the artifact's torch model into ``work/fp32``; returns model.onnx."""
    exporters = require("optimum.exporters.onnx", "onnx")
    hf_dir, onnx_dir = work / "hf", work / "fp32"
    model = artifact.model
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(hf_dir, safe_serialization=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # optimum prints notes to stdout
            exporters.main_export(
                str(hf_dir),
                output=str(onnx_dir),
                task="text-generation-with-past",
                do_validation=False,
                device="cpu",
                local_files_only=True,
            )
    except Exception as exc:
        raise ConfigError(f"optimum-onnx could not export this model: {type(exc).__name__}: {exc}") from None
    return onnx_dir / "model.onnx"


class _Graph:
    """Indexes over an ONNX graph for the rewrite."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array

    def weight(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        if t is None or len(t.dims) != 2 or t.data_type != 1:  # 1 = FLOAT
            return None
        return self.to_array(t)

    def add(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            t = self.from_array(np.ascontiguousarray(array), name)
            self.graph.initializer.append(t)
            self.inits[name] = t
        return name


def _nbits_inputs(g: _Graph, key: str, bq: BlockQuant) -> list[str]:
    t = matmul_nbits_tensors(bq)
    names = [g.add(f"{key}.qB", t["B"]), g.add(f"{key}.qscales", t["scales"])]
    if "zero_points" in t:
        names.append(g.add(f"{key}.qzeros", t["zero_points"]))
    return names


def rewrite_quantized(
    model: Any, quantized: dict[str, QuantizedTensor], params: dict[str, np.ndarray], level: int
) -> dict:
    """Replace MatMul/Gather on quantized weights; returns counts of what was rewritten.

    ``params``: torch parameters by name (float32 arrays); an initializer is matched to the one with
    exactly its contents. Also used by the encoder exporter (``onnx_encoder``)."""
    from onnx import helper

    g = _Graph(model)
    by_digest = {_digest(w): name for name, w in params.items() if name in quantized}
    new_nodes, counts = [], {"MatMulNBits": 0, "GatherBlockQuantized": 0, "tied_head": 0}

    def lookup(a: np.ndarray | None) -> tuple[str, QuantizedTensor] | None:
        if a is None:
            return None
        name = by_digest.get(_digest(a))
        return (name, quantized[name]) if name else None

    for node in g.graph.node:
        hit, tied = None, False
        if node.op_type == "MatMul":
            w = g.weight(node.input[1])
            hit = lookup(w.T if w is not None else None)  # initializer is (K, N); ours (N, K)
            src = g.producer.get(node.input[1])
            if hit is None and src is not None and src.op_type == "Transpose":
                hit, tied = lookup(g.weight(src.input[0])), True  # tied head: MatMul(x, E^T)
        if hit and node.op_type == "MatMul":
            pname, q = hit
            bq: BlockQuant = q.data
            n, k = bq.shape
            new_nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], *_nbits_inputs(g, pname, bq)],
                    list(node.output),
                    name=node.name + "_nbits",
                    domain=MS_DOMAIN,
                    K=k,
                    N=n,
                    bits=bq.bits,
                    block_size=bq.block,
                    accuracy_level=level,
                )
            )
            counts["MatMulNBits"] += 1
            counts["tied_head"] += tied
            continue
        if node.op_type == "Gather" and (hit := lookup(g.weight(node.input[0]))):
            pname, q = hit
            bq = q.data
            n, _ = bq.shape
            names = _nbits_inputs(g, pname, bq)
            shape2d = g.add(f"{pname}.qshape2d", np.array([n, -1], dtype=np.int64))
            flat = []
            for src_name in names:  # GatherBlockQuantized wants (N, ...) views of the same bytes
                out = src_name + ".2d"
                new_nodes.append(helper.make_node("Reshape", [src_name, shape2d], [out], name=out))
                flat.append(out)
            data, scales, *zp = flat
            new_nodes.append(
                helper.make_node(
                    "GatherBlockQuantized",
                    [data, node.input[1], scales, *zp],
                    list(node.output),
                    name=node.name + "_bq",
                    domain=MS_DOMAIN,
                    bits=bq.bits,
                    block_size=bq.block,
                    gather_axis=0,
                    quantize_axis=1,
                )
            )
            counts["GatherBlockQuantized"] += 1
            continue
        new_nodes.append(node)
    del g.graph.node[:]
    g.graph.node.extend(_drop_dead(new_nodes, g))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def _drop_dead(nodes: list, g: _Graph) -> list:
    """Remove nodes whose outputs nobody reads (the old Transpose) and unreferenced initializers."""
    outputs = {o.name for o in g.graph.output}
    changed = True
    while changed:
        used = {i for n in nodes for i in n.input} | outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        changed = len(keep) != len(nodes)
        nodes = keep
    used = {i for n in nodes for i in n.input}
    dead = [t for t in g.graph.initializer if t.name not in used]
    for t in dead:
        g.graph.initializer.remove(t)
    return nodes


def export_onnx(artifact: ModelArtifact, out_dir: Path, layout: str = "auto") -> tuple[Path, dict[str, int]]:
    """Write ``out_dir/onnx/`` (model.onnx, genai_config.json, config.json, tokenizer) in the artifact's
    scheme: the direct GroupQueryAttention graph (``onnx_graph``) for the families it writes, else (or
    with ``layout="optimum"``) optimum's export rewritten to our blocks.

    Returns the model path and the counts of rewritten nodes.
    """
    onnx = require("onnx", "onnx")
    target = out_dir / ONNX_DIR
    if layout == "auto" and onnx_graph.supports(artifact):
        return _export_direct(artifact, target)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fp32 = _torch_export(artifact, Path(tmp))
        model = onnx.load(str(fp32))
        counts: dict[str, int] = {}
        scheme = artifact.scheme
        if artifact.quantized and scheme is not None:
            params = {n: p.detach().float().numpy() for n, p in artifact.model.named_parameters()}
            counts = rewrite_quantized(model, artifact.quantized, params, scheme.accuracy_level)
            expected = sum(1 for q in artifact.quantized.values() if isinstance(q.data, BlockQuant))
            if counts["MatMulNBits"] + counts["GatherBlockQuantized"] < expected:
                raise ConfigError(
                    f"ONNX rewrite found {counts} for {expected} quantized weights; the exported graph "
                    "does not have the expected MatMul/Gather structure"
                )
        target.mkdir(parents=True, exist_ok=True)
        try:
            onnx.save(model, str(target / "model.onnx"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"could not write {target / 'model.onnx'}: {exc}") from None
        for name in ("config.json", "generation_config.json"):
            if (fp32.parent / name).is_file():
                shutil.copy(fp32.parent / name, target / name)
    artifact.tokenizer.save_pretrained(target)
    write_genai_config(artifact, target, fast=False)  # onnxruntime-genai opens this folder as it is
    log.info("wrote %s (%s)", target / "model.onnx", counts)
    return target / "model.onnx", counts


def _export_direct(artifact: ModelArtifact, target: Path) -> tuple[Path, dict[str, int]]:
    """The GroupQueryAttention graph written from the torch model and our blocks."""
    import onnx

    scheme = artifact.scheme
    level = scheme.accuracy_level if scheme is not None else 4
    model = onnx_graph.build_decoder(artifact, level)
    counts = {
        "MatMulNBits": sum(n.op_type == "MatMulNBits" for n in model.graph.node),
        "GatherBlockQuantized": sum(n.op_type == "GatherBlockQuantized" for n in model.graph.node),
        "GroupQueryAttention": sum(n.op_type == "GroupQueryAttention" for n in model.graph.node),
        "tied_head": int(
            artifact.facts.tied_embeddings and "model.embed_tokens.weight" in artifact.quantized
        ),
    }
    target.mkdir(parents=True, exist_ok=True)
    path = target / "model.onnx"
    try:
        if model.ByteSize() > EXTERNAL_ABOVE:  # protobuf's 2 GiB limit: weights beside the graph
            onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        else:
            onnx.save(model, str(path))
    except (OSError, ValueError) as exc:
        raise OutputError(f"could not write {path}: {exc}") from None
    artifact.model.config.save_pretrained(target)
    artifact.tokenizer.save_pretrained(target)
    write_genai_config(artifact, target, fast=True)
    log.info("wrote %s (%s)", path, counts)
    return path, counts


def load_ort_causal_lm(onnx_dir: Path) -> Any:
    """``optimum.onnxruntime.ORTModelForCausalLM`` for our export directory.

    optimum-onnx 0.1.0 derives the KV head size as hidden / heads and ignores
    ``config.head_dim``; after head pruning those differ (576 / 6 != 64), so set it from the config.
    """
    ort_models = require("optimum.onnxruntime", "onnx")
    model = ort_models.ORTModelForCausalLM.from_pretrained(onnx_dir, use_cache=True, use_io_binding=False)
    head_dim = getattr(model.config, "head_dim", None)
    if head_dim:
        model.embed_size_per_head = head_dim
    return model
