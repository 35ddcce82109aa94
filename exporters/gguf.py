"""GGUF exporter for llama-architecture causal LMs, written with the ``gguf`` package's writer.

What llama.cpp needs that is easy to get wrong:
  * q/k rows permuted from HF's rotate-half layout to llama.cpp's interleaved rotary layout (rows only:
    blocks run along rows, so permuting packed rows equals packing permuted rows);
  * ``attention.key_length``/``value_length`` written, since head_dim need not be hidden/heads once
    heads are pruned;
  * no ``output.weight`` when the head is tied to the embedding;
  * the tokenizer fields (BPE tokens, merges, pre-tokenizer name, special ids, chat template).
Types we pack ourselves come from the quantize stage (``artifact.quantized``); K-quant mixtures are
produced by llama.cpp's quantizer from an F32 file we write first.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifact import ModelArtifact, weight_inventory
from compressor.errors import ConfigError, OutputError, require
from compressor.quant import LLAMA_FTYPES
from compressor.vocab import GGUFVocab

log = logging.getLogger(__name__)

# llama_ftype values written as general.file_type (mostly-TYPE)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "IQ4_NL": 25}


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved order, per head. (rows, ...) -> same shape."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_metadata(writer: Any, artifact: ModelArtifact, file_type: int) -> None:
    cfg, f = artifact.model.config, artifact.facts
    if getattr(cfg, "rope_scaling", None):
        raise ConfigError(f"GGUF export of rope_scaling={cfg.rope_scaling} is not supported yet")
    writer.add_name(artifact.source.name)
    writer.add_context_length(f.max_context)
    writer.add_embedding_length(f.hidden_size)
    writer.add_block_count(f.n_layers)
    writer.add_feed_forward_length(f.intermediate_size)
    writer.add_head_count(f.n_heads)
    writer.add_head_count_kv(f.n_kv_heads)
    writer.add_key_length(f.head_dim)
    writer.add_value_length(f.head_dim)
    writer.add_rope_dimension_count(f.head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(f.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)


def _add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for setter, value in (
        (writer.add_bos_token_id, vocab.bos_id),
        (writer.add_eos_token_id, vocab.eos_id),
        (writer.add_unk_token_id, vocab.unk_id),
        (writer.add_pad_token_id, vocab.pad_id),
    ):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _tensor_payloads(artifact: ModelArtifact, own_types: bool) -> list[tuple[str, np.ndarray, Any]]:
    """(gguf name, array, raw ggml type or None) for every weight, in the model's order."""
    gguf = require("gguf", "all")
    f = artifact.facts
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, f.n_layers)
    params = dict(artifact.model.named_parameters(remove_duplicate=False))
    out = []
    for w in weight_inventory(artifact.model):
        gname = name_map.get_name(w.name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ConfigError(f"no GGUF name for tensor {w.name}; this architecture is not supported")
        q = artifact.quantized.get(w.name) if own_types else None
        if q is not None:
            data, raw = q.data, gguf.GGMLQuantizationType[q.kind]
        else:
            data, raw = params[w.name].detach().float().numpy().astype(np.float32), None
        if gname.endswith("attn_q.weight"):
            data = _permute_rows(data, f.n_heads)
        elif gname.endswith("attn_k.weight"):
            data = _permute_rows(data, f.n_kv_heads)
        out.append((gname, np.ascontiguousarray(data), raw))
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
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_metadata(writer, artifact, FILE_TYPES.get(kind, 0))
    _add_vocab(writer, artifact.vocab)
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
        writer = gguf.GGUFWriter(str(path), "llama")
        _add_metadata(writer, artifact, 0)
        _add_vocab(writer, artifact.vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        head = path.stat().st_size
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, artifact.facts.n_layers)
    infos = 0
    for w in weight_inventory(artifact.model):
        name = name_map.get_name(w.name, try_suffixes=(".weight", ".bias")) or w.name
        infos += 8 + len(name.encode()) + 4 + 8 * len(w.shape) + 4 + 8 + 31  # info + data alignment
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
