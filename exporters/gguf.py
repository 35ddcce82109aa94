"""GGUF exporter for causal LMs of every registered family, written with the ``gguf`` package's writer.

What llama.cpp needs that is easy to get wrong (the family's spec says which apply):
  * q/k rows permuted from HF's rotate-half layout to llama.cpp's interleaved rotary layout for
    architectures llama.cpp runs with non-NeoX rope (rows only: blocks run along rows, so permuting
    packed rows equals packing permuted rows);
  * norm weights stored with the family's offset (Gemma keeps ``w`` for ``x * (1 + w)``; GGUF ``1 + w``);
  * no ``output.weight`` when the head is tied to the embedding;
  * metadata (``gguf_meta``) and the tokenizer fields (``compressor.vocab``).
Tensor names come from the registry's tensor table through gguf-py's ``MODEL_TENSOR`` names.
Types we pack ourselves come from the quantize stage (``artifact.quantized``); K-quant mixtures are
produced by llama.cpp's quantizer from an F32 file we write first.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from compressor.arch import ARCHITECTURES, ArchSpec, Slot, TensorId, gguf_name, identify, spec_for
from compressor.arch.spec import FUSED
from compressor.arch.tensors import NORM_SLOTS
from compressor.artifact import ModelArtifact, weight_inventory
from compressor.errors import ConfigError, OutputError, require
from compressor.quant import LLAMA_FTYPES
from compressor.vocab import write_gguf_vocab
from exporters.gguf_meta import add_metadata, arch_name, rope_freqs

log = logging.getLogger(__name__)

# llama_ftype values written as general.file_type (mostly-TYPE)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "IQ4_NL": 25}


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved order, per head. (rows, ...) -> same shape."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_layout(artifact: ModelArtifact) -> tuple[ArchSpec, bool]:
    """(spec whose GGUF architecture and tensor names the file uses, whether q/k rows are permuted)."""
    spec, f = spec_for(artifact.model), artifact.facts
    if spec.gguf_pruned_arch and f.n_heads * f.head_dim != f.hidden_size:
        target = ARCHITECTURES[spec.gguf_pruned_arch]
        return target, target.permute_qk
    return spec, spec.permute_qk


def _parts(artifact: ModelArtifact, target: ArchSpec) -> list[tuple[str, str, TensorId, slice | None]]:
    """(gguf name, torch name, the part's id, its rows in the torch tensor) for every stored tensor;
    a fused tensor becomes one entry per part when the target architecture has no fused slot."""
    spec, f = spec_for(artifact.model), artifact.facts
    widths = {Slot.Q: f.n_heads * f.head_dim, Slot.K: f.n_kv_heads * f.head_dim}
    widths |= {Slot.V: widths[Slot.K], Slot.GATE: f.intermediate_size, Slot.UP: f.intermediate_size}
    out: list[tuple[str, str, TensorId, slice | None]] = []
    for w in weight_inventory(artifact.model):
        tid = identify(spec, w.name)
        assert tid is not None  # weight_inventory refuses names outside the table
        if tid.slot in FUSED and not target.has(tid.slot):
            start = 0
            for part in FUSED[tid.slot]:
                pid = TensorId(part, tid.layer, tid.kind)
                out.append((gguf_name(target, pid), w.name, pid, slice(start, start + widths[part])))
                start += widths[part]
        else:
            out.append((gguf_name(target, tid), w.name, tid, None))
    return out


def _tensor_payloads(artifact: ModelArtifact, own_types: bool) -> list[tuple[str, np.ndarray, Any]]:
    """(gguf name, array, raw ggml type or None) for every weight, in the model's order."""
    gguf = require("gguf", "all")
    f, spec = artifact.facts, spec_for(artifact.model)
    target, permute = gguf_layout(artifact)
    params = dict(artifact.model.named_parameters(remove_duplicate=False))
    out = []
    for gname, name, tid, rows in _parts(artifact, target):
        q = artifact.quantized.get(name) if own_types else None
        if q is not None:
            data, raw = q.data, gguf.GGMLQuantizationType[q.kind]
        else:
            data, raw = params[name].detach().float().numpy().astype(np.float32), None
            if tid.slot in NORM_SLOTS and tid.kind == "weight" and spec.norm_offset:
                data = data + np.float32(spec.norm_offset)
        if rows is not None:  # packed blocks run along rows: a row range of blocks is that part
            data = data[rows]
        if permute and tid.slot in (Slot.Q, Slot.K):
            data = _permute_rows(data, f.n_heads if tid.slot is Slot.Q else f.n_kv_heads)
        out.append((gname, np.ascontiguousarray(data), raw))
    freqs = rope_freqs(artifact.model.config, f.head_dim)
    if freqs is not None:
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs, None))
    return out


def write_gguf(artifact: ModelArtifact, path: Path, as_float: bool = False) -> None:
    """Write ``artifact`` to ``path``; ``as_float`` writes F32 weights (input for llama.cpp's quantizer)."""
    gguf = require("gguf", "all")
    if artifact.vocab is None:
        raise ConfigError("GGUF export needs a tokenizer vocabulary; the artifact has none")
    scheme = artifact.scheme
    kind = "F32" if as_float or scheme is None else scheme.weight_type
    if kind == "mixed":  # general.file_type is informational: name the type most weights have
        kind = Counter(q.kind for q in artifact.quantized.values()).most_common(1)[0][0]
    writer = gguf.GGUFWriter(str(path), arch_name(gguf_layout(artifact)[0]))
    add_metadata(writer, artifact, FILE_TYPES.get(kind, 0))
    write_gguf_vocab(writer, artifact.vocab)
    for name, data, raw in _tensor_payloads(artifact, own_types=not as_float):
        writer.add_tensor(name, data, raw_dtype=raw)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as exc:
        raise OutputError(f"could not write {path}: {exc}") from None
    finally:
        writer.close()


def overhead_bytes(artifact: ModelArtifact) -> int:
    """Bytes of a GGUF file that are not tensor data, an upper bound within 32 bytes a tensor:
    header, metadata and vocabulary (written for real to a scratch file), tensor infos, alignment."""
    import tempfile

    gguf = require("gguf", "all")
    if artifact.vocab is None:
        raise ConfigError("GGUF export needs a tokenizer vocabulary; the artifact has none")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "head.gguf"
        writer = gguf.GGUFWriter(str(path), arch_name(gguf_layout(artifact)[0]))
        add_metadata(writer, artifact, 0)
        write_gguf_vocab(writer, artifact.vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        head = path.stat().st_size
    shapes = {w.name: w.shape for w in weight_inventory(artifact.model)}
    infos = 0
    for name, torch_name, _, _ in _parts(artifact, gguf_layout(artifact)[0]):
        infos += 8 + len(name.encode()) + 4 + 8 * len(shapes[torch_name]) + 4 + 8 + 31  # + alignment
    if rope_freqs(artifact.model.config, artifact.facts.head_dim) is not None:
        infos += 8 + len("rope_freqs.weight") + 4 + 8 + 4 + 8 + 31 + 4 * artifact.facts.head_dim // 2
    return head + infos + 31


def llama_cpp_quantize(src: Path, dst: Path, ftype_name: str, pure: bool = False, threads: int = 2) -> None:
    """Run llama.cpp's own quantizer (``llama_model_quantize``) from an F32/F16 GGUF, in the worker."""
    from exporters.llama_runtime import quantize_file

    ftype = LLAMA_FTYPES[ftype_name][0] if ftype_name in LLAMA_FTYPES else FILE_TYPES[ftype_name]
    quantize_file(src, dst, ftype, pure=pure, threads=threads)


def export_gguf(artifact: ModelArtifact, out_dir: Path, filename: str = "model.gguf") -> Path:
    """Write ``out_dir/filename`` in the artifact's scheme (F32 if it has none) and return the path."""
    path = out_dir / filename
    scheme = artifact.scheme
    if scheme is not None and scheme.delegated_to_llama_cpp:
        tmp = out_dir / (filename + ".f32.tmp")
        try:
            write_gguf(artifact, tmp, as_float=True)
            llama_cpp_quantize(tmp, path, scheme.weight_type)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        write_gguf(artifact, path)
    log.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)
    return path
