"""GGUF export of BERT-family encoders for llama.cpp's ``bert`` architecture, and its validation.

llama.cpp runs an encoder as post-LN BERT (token + position + token-type-0 embeddings, LayerNorm,
layers of attention / LayerNorm / GELU MLP / LayerNorm) and pools inside its graph, as the file's
``<arch>.pooling_type`` says: mean, CLS (first token), or rank, which is a classifier head on the
first token: ``cls`` (dense + tanh) then ``cls.output`` (the logits, ``n_cls_out`` of them, as many as
``classifier.output_labels``). That head is BERT's pooler + classifier and RoBERTa's classification
head alike, so a sequence classifier is written with rank pooling; its pooled output is the logits.

What the file holds, per the family's spec and tensor table (``compressor.arch``):
  * tensors under gguf-py's names for the slot; RoBERTa-style position tables lose their first
    ``spec.position_offset`` rows (llama.cpp counts positions from 0);
  * packed types from the quantize stage (``artifact.quantized``) as they are, except the token-type
    table, which llama.cpp adds to the embeddings as a plain row and so must be F32 (written from the
    torch parameter, which already holds the dequantized values: the computation is unchanged);
  * the tokenizer: WordPiece as llama.cpp's ``bert`` vocabulary ("phantom space" form: a word-initial
    piece gets a leading ``▁``, a ``##`` continuation loses its prefix, special tokens stay as they
    are), or byte-level BPE as ``gpt2`` (``compressor.vocab``), with the CLS/SEP/mask ids.

llama.cpp returns pooled vectors un-normalised; a sentence-transformers Normalize module is applied
by the caller (``gguf_embed(..., normalize=True)``, as llama-cpp-python's ``embed(normalize=True)``).
``encoder_gguf_problems`` says before any work what llama.cpp cannot run as the torch model does.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from compressor.arch import ArchSpec, Slot, TensorId, gguf_name, identify, spec_for
from compressor.artifact import ModelArtifact, weight_inventory
from compressor.errors import ConfigError, OutputError, ValidationError, require
from compressor.vocab import vocab_from_hf_tokenizer, write_gguf_vocab
from exporters.gguf import FILE_TYPES, llama_cpp_quantize
from exporters.gguf_meta import arch_name

log = logging.getLogger(__name__)

# slots llama.cpp reads as plain F32 rows (the token-type row is added to the embeddings directly)
F32_ONLY = frozenset({Slot.TYPE_EMBED})
HEAD_SLOTS = (Slot.POOLER, Slot.CLASSIFIER)
_TOKENIZER = "tokenizer.ggml"
GELU_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # llama.cpp: GELU (tanh form)
# cosine to the torch model a validated file must reach, by what the file holds relative to it
MIN_COSINE = {"exact": 0.9999, "half": 0.999, "quantized": 0.99, "delegated": 0.95}


# ---------------------------------------------------------------- what cannot be written


def _head(artifact: ModelArtifact) -> list[tuple[str, Any]]:
    """The classifier head's Linear modules, input side first: the rows of the family's table whose
    slot is a head slot, in table order, that the model has (BERT: pooler, classifier; RoBERTa:
    classifier.dense, classifier.out_proj)."""
    spec, model = spec_for(artifact.model), artifact.model
    out = []
    for rule in spec.tensors:
        if rule.slot in HEAD_SLOTS and not rule.in_layer:
            try:
                out.append((rule.module, model.get_submodule(rule.module)))
            except AttributeError:
                continue
    return out


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _tokenizer_problems(artifact: ModelArtifact) -> list[str]:
    tok = artifact.tokenizer
    if tok is None or not getattr(tok, "is_fast", False):
        return ["GGUF export needs a fast (tokenizer.json) tokenizer"]
    spec = _backend_json(tok)
    kind = spec.get("model", {}).get("type")
    n_rows = artifact.facts.vocab_size
    if len(tok) > n_rows:
        return [f"the tokenizer has {len(tok)} tokens but the embedding only {n_rows} rows"]
    if kind == "BPE":
        try:
            vocab_from_hf_tokenizer(tok)
        except Exception as exc:  # ModelLoadError naming what is not supported
            return [f"tokenizer: {exc}"]
        return []
    if kind != "WordPiece":
        return [
            f"tokenizer model {kind!r} has no llama.cpp BERT form here "
            "(written: WordPiece as 'bert', byte-level BPE as 'gpt2')"
        ]
    problems = []
    norm = spec.get("normalizer") or {}
    pre = spec.get("pre_tokenizer") or {}
    if norm.get("type") != "BertNormalizer":
        problems.append(
            f"WordPiece normalizer {norm.get('type')}: llama.cpp normalizes as BertNormalizer does"
        )
    elif not norm.get("handle_chinese_chars", True) or not norm.get("clean_text", True):
        problems.append("BertNormalizer without clean_text/handle_chinese_chars: llama.cpp always does both")
    if pre.get("type") != "BertPreTokenizer":
        problems.append(
            f"WordPiece pre-tokenizer {pre.get('type')}: llama.cpp splits text as BertPreTokenizer does"
        )
    if spec["model"].get("continuing_subword_prefix", "##") != "##":
        problems.append("WordPiece continuation prefix is not '##'")
    return problems


def encoder_gguf_problems(artifact: ModelArtifact) -> list[str]:
    """What keeps a GGUF of this encoder from running in llama.cpp as it does in torch ([] = none);
    asked before any work starts."""
    from compressor.encoder import PoolingMode, Task

    spec, f, model = spec_for(artifact.model), artifact.facts, artifact.model
    if not spec.is_encoder:
        return [f"{spec.family} is not an encoder family"]
    cfg, problems = model.config, []
    if model.task is Task.EMBEDDING and model.pooling.mode is PoolingMode.MAX:
        problems.append("max pooling: llama.cpp pools by mean, first (CLS) or last token only")
    if model.task is Task.CLASSIFICATION:
        head = _head(artifact)
        shapes = [tuple(m.weight.shape) for _, m in head]
        fits = (
            len(head) == 2
            and shapes[0] == (f.hidden_size, f.hidden_size)
            and shapes[1][1] == f.hidden_size
            and all(getattr(m, "bias", None) is not None for _, m in head)
        )
        if not fits:
            problems.append(
                f"classifier head {[n for n, _ in head]} with shapes {shapes}: llama.cpp's rank pooling "
                "runs dense + tanh + output projection on the first token only"
            )
    act = str(getattr(cfg, "hidden_act", "gelu"))
    if act not in GELU_ACTS:
        problems.append(f"activation '{act}': llama.cpp's BERT MLP is GELU")
    pos_type = getattr(cfg, "position_embedding_type", "absolute")
    if pos_type not in (None, "absolute"):
        problems.append(f"position embeddings '{pos_type}': llama.cpp's BERT adds absolute positions")
    if f.n_heads * f.head_dim != f.hidden_size:
        problems.append(
            f"pruned attention ({f.n_heads} heads x {f.head_dim} != hidden {f.hidden_size}): "
            "llama.cpp's BERT takes q/k/v/o as hidden x hidden"
        )
    return problems + _tokenizer_problems(artifact)


# ---------------------------------------------------------------- writing


def _token_type(name: str) -> int:
    import gguf

    return int(gguf.TokenType[name])


def _special_ids(tok: Any) -> dict[str, int | None]:
    ids = {k: getattr(tok, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "unk", "mask", "bos", "eos")}
    return {k: (int(v) if isinstance(v, int) else None) for k, v in ids.items()}


def _write_wordpiece(writer: Any, tok: Any, n_rows: int) -> dict[str, Any]:
    """WordPiece as llama.cpp's ``bert`` vocabulary; returns the summary fields."""
    spec = _backend_json(tok)
    tokens = [f"[PAD{i}]" for i in range(n_rows)]
    types = [_token_type("UNUSED")] * n_rows
    for piece, i in spec["model"]["vocab"].items():
        word_start = not piece.startswith("##")
        tokens[i], types[i] = ("\u2581" + piece) if word_start else piece[2:], _token_type("NORMAL")
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = _token_type("CONTROL" if added.get("special") else "USER_DEFINED")
    ids = _special_ids(tok)
    single = tok("a", add_special_tokens=True).input_ids
    pair = tok("a", "b", add_special_tokens=True).input_ids
    cls_id, sep_id = ids["cls"], ids["sep"]
    norm = spec.get("normalizer") or {}
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # BertNormalizer's options (llama.cpp's default when absent: uncased, accents stripped)
    writer.add_bool(f"{_TOKENIZER}.normalizer.lowercase", lowercase)
    writer.add_bool(f"{_TOKENIZER}.normalizer.strip_accents", lowercase if strip is None else bool(strip))
    for setter, value in (
        (writer.add_bos_token_id, cls_id),  # llama.cpp's WordPiece starts a text with BOS = CLS
        (writer.add_eos_token_id, sep_id),
        (partial(writer.add_uint32, f"{_TOKENIZER}.cls_token_id"), cls_id),  # no gguf-py setter yet
        (writer.add_sep_token_id, sep_id),
        (writer.add_unk_token_id, ids["unk"]),
        (writer.add_pad_token_id, ids["pad"]),
        (writer.add_mask_token_id, ids["mask"]),
    ):
        if value is not None:
            setter(value)
    writer.add_add_bos_token(cls_id is not None and single[:1] == [cls_id])
    writer.add_add_eos_token(sep_id is not None and single[-1:] == [sep_id])
    writer.add_add_sep_token(sep_id is not None and pair.count(sep_id) > single.count(sep_id))
    return {"tokenizer": "bert", "n_tokens": n_rows}


def _write_bpe(writer: Any, tok: Any, n_rows: int) -> dict[str, Any]:
    """Byte-level BPE as ``gpt2`` (compressor.vocab), padded to the embedding rows, with CLS/SEP/mask."""
    vocab = vocab_from_hf_tokenizer(tok)
    extra = n_rows - len(vocab.tokens)
    if extra > 0:
        vocab = vocab.model_copy(
            update={
                "tokens": [*vocab.tokens, *(f"[PAD{i}]" for i in range(len(vocab.tokens), n_rows))],
                "token_types": [*vocab.token_types, *[_token_type("UNUSED")] * extra],
            }
        )
    write_gguf_vocab(writer, vocab)
    ids = _special_ids(tok)
    for setter, value in (
        (partial(writer.add_uint32, f"{_TOKENIZER}.cls_token_id"), ids["cls"]),
        (writer.add_sep_token_id, ids["sep"]),
        (writer.add_mask_token_id, ids["mask"]),
    ):
        if value is not None:
            setter(value)
    return {"tokenizer": "gpt2", "pre": vocab.pre, "n_tokens": len(vocab.tokens)}


def _pooling(artifact: ModelArtifact) -> Any:
    import gguf

    from compressor.encoder import PoolingMode, Task

    model = artifact.model
    if model.task is Task.CLASSIFICATION:
        return gguf.PoolingType.RANK
    return gguf.PoolingType.CLS if model.pooling.mode is PoolingMode.CLS else gguf.PoolingType.MEAN


def _add_metadata(writer: Any, artifact: ModelArtifact, file_type: int) -> None:
    from compressor.arch.config_keys import get
    from compressor.encoder import Task

    f, cfg, spec = artifact.facts, artifact.model.config, spec_for(artifact.model)
    writer.add_name(Path(artifact.source.name).name or "model")
    writer.add_context_length(f.max_context)
    writer.add_embedding_length(f.hidden_size)
    writer.add_block_count(f.n_layers)
    writer.add_feed_forward_length(f.intermediate_size)
    writer.add_head_count(f.n_heads)
    writer.add_key_length(f.head_dim)
    writer.add_value_length(f.head_dim)
    writer.add_layer_norm_eps(float(get(cfg, spec.keys.norm_eps)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(artifact))
    writer.add_token_type_count(int(getattr(cfg, "type_vocab_size", 1)))
    writer.add_vocab_size(f.vocab_size)
    if artifact.model.task is Task.CLASSIFICATION:
        labels = getattr(cfg, "id2label", None) or {}
        names = [str(labels.get(i, f"LABEL_{i}")) for i in range(f.n_labels)]
        writer.add_classifier_output_labels(names)  # llama.cpp's n_cls_out is their count
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)


def _tensor_names(artifact: ModelArtifact) -> dict[str, str]:
    """torch parameter name -> GGUF tensor name; head tensors only for a classifier."""
    import gguf

    from compressor.encoder import Task

    spec = spec_for(artifact.model)
    head_names: dict[str, str] = {}
    if artifact.model.task is Task.CLASSIFICATION:
        parts = (gguf.MODEL_TENSOR.CLS, gguf.MODEL_TENSOR.CLS_OUT)  # dense + tanh, then the logits
        for (module, _), part in zip(_head(artifact), parts, strict=True):
            for kind in ("weight", "bias"):
                head_names[f"{module}.{kind}"] = f"{gguf.TENSOR_NAMES[part]}.{kind}"
    out = {}
    for w in weight_inventory(artifact.model):
        tid = identify(spec, w.name)
        assert tid is not None  # weight_inventory refuses names outside the table
        if tid.slot in HEAD_SLOTS:
            if w.name in head_names:
                out[w.name] = head_names[w.name]
            continue
        out[w.name] = gguf_name(spec, tid)
    return out


def _payloads(artifact: ModelArtifact, as_float: bool) -> list[tuple[str, np.ndarray, Any]]:
    """(GGUF name, array, raw ggml type or None for float32) per written tensor, in the model's order."""
    gguf = require("gguf", "all")
    spec: ArchSpec = spec_for(artifact.model)
    params = dict(artifact.model.named_parameters())
    out = []
    for name, gname in _tensor_names(artifact).items():
        tid = identify(spec, name)
        assert isinstance(tid, TensorId)
        q = None if as_float or tid.slot in F32_ONLY else artifact.quantized.get(name)
        if q is not None:
            data, raw = q.data, gguf.GGMLQuantizationType[q.kind]
        else:
            data, raw = params[name].detach().float().numpy().astype(np.float32), None
        if tid.slot is Slot.POS_EMBED and spec.position_offset:
            data = data[spec.position_offset :]  # packed blocks run along rows: whole rows drop
        out.append((gname, np.ascontiguousarray(data), raw))
    return out


def write_encoder_gguf(artifact: ModelArtifact, path: Path, as_float: bool = False) -> dict[str, Any]:
    """Write ``artifact`` to ``path`` (``as_float``: F32 weights, input for llama.cpp's quantizer)."""
    gguf = require("gguf", "all")
    scheme = artifact.scheme
    kind = "F32" if as_float or scheme is None else scheme.weight_type
    if kind == "mixed":
        kind = Counter(q.kind for q in artifact.quantized.values()).most_common(1)[0][0]
    payloads = _payloads(artifact, as_float)
    writer = gguf.GGUFWriter(str(path), arch_name(spec_for(artifact.model)))
    _add_metadata(writer, artifact, FILE_TYPES.get(kind, 0))
    n_rows = artifact.facts.vocab_size
    if _backend_json(artifact.tokenizer)["model"]["type"] == "WordPiece":
        vocab_summary = _write_wordpiece(writer, artifact.tokenizer, n_rows)
    else:
        vocab_summary = _write_bpe(writer, artifact.tokenizer, n_rows)
    for name, data, raw in payloads:
        writer.add_tensor(name, data, raw_dtype=raw)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as exc:
        raise OutputError(f"could not write {path}: {exc}") from None
    finally:
        writer.close()
    types = Counter("F32" if raw is None else raw.name for _, _, raw in payloads)
    return {**vocab_summary, "tensor_types": dict(sorted(types.items()))}


def export_encoder_gguf(artifact: ModelArtifact, out_dir: Path) -> tuple[list[Path], dict[str, Any]]:
    """Write ``out_dir/model.gguf`` in the artifact's scheme (F32 if it has none); returns the files
    and a summary (architecture, pooling, tokenizer, tensor types). Refuses what llama.cpp cannot run
    (``encoder_gguf_problems``) before writing anything."""
    import gguf

    problems = encoder_gguf_problems(artifact)
    if problems:
        raise ConfigError("this encoder cannot be written as a llama.cpp GGUF", problems)
    path = out_dir / "model.gguf"
    scheme = artifact.scheme
    if scheme is not None and scheme.delegated_to_llama_cpp:
        tmp = out_dir / "model.gguf.f32.tmp"
        try:
            summary = write_encoder_gguf(artifact, tmp, as_float=True)
            llama_cpp_quantize(tmp, path, scheme.weight_type)
            summary["tensor_types"] = {"(llama.cpp quantizer)": scheme.weight_type}
        finally:
            tmp.unlink(missing_ok=True)
    else:
        summary = write_encoder_gguf(artifact, path)
    pooling = _pooling(artifact)
    summary = {
        "architecture": arch_name(spec_for(artifact.model)),
        "task": artifact.model.task.value,
        "pooling": gguf.PoolingType(pooling).name.lower(),
        "normalize": bool(artifact.model.pooling.normalize) and pooling != gguf.PoolingType.RANK,
        **summary,
    }
    log.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)
    return [path], summary


# ---------------------------------------------------------------- running it in llama.cpp


def _context_length(path: Path) -> int:
    """The file's ``<arch>.context_length`` (the positions it has)."""
    gguf = require("gguf", "all")
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.context_length"].contents())


def _run_embed(
    path: Path,
    texts: Sequence[str],
    threads: int,
    max_len: int | None,
    with_ids: bool,
    repeats: int = 0,
    answer: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[list[int]] | None]:
    from exporters.workers import run_worker

    require("llama_cpp", "llamacpp")
    max_len = max_len or _context_length(path)
    with tempfile.TemporaryDirectory() as tmp:
        texts_file, out, ids_out = Path(tmp) / "texts.json", Path(tmp) / "out.npy", Path(tmp) / "ids.json"
        texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
        req = {
            "op": "embed",
            "model": str(Path(path).resolve()),
            "texts": str(texts_file),
            "out": str(out),
            "ids_out": str(ids_out) if with_ids else "",
            "threads": threads,
            "max_len": max_len,
            # one sequence per decode (llama-cpp-python's context holds one sequence); llama.cpp's
            # cost grows with the context/ubatch size, not the tokens in it: 8 x 128 tokens took
            # 125 ms at n_batch 128 and 415 ms at 1024 (MiniLM-L3, this host)
            "n_batch": max_len,
            "repeats": repeats,
        }
        got = run_worker("exporters.llama_embed_worker", req)
        if answer is not None:
            answer.update(got)
        ids = json.loads(ids_out.read_text(encoding="utf-8")) if with_ids else None
        return np.load(out), ids


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def gguf_embed(
    path: Path, texts: Sequence[str], threads: int = 2, normalize: bool = False, max_len: int | None = None
) -> np.ndarray:
    """(len(texts), d) float32: what llama.cpp pools for each text (embeddings, or a classifier's
    logits), L2-normalised when ``normalize``. ``max_len`` caps tokens per text (default: the file's
    context length), keeping the closing SEP/EOS as HF truncation does."""
    emb, _ = _run_embed(path, texts, threads, max_len, with_ids=False)
    return _l2(emb) if normalize else emb


def gguf_time_batch(
    path: Path, texts: Sequence[str], max_len: int, threads: int = 2, runs: int = 20
) -> dict[str, Any]:
    """Latency of embedding ``texts`` (one batch, ``max_len`` tokens each at most) in llama.cpp:
    median, p90 and min ms over ``runs`` after one untimed pass."""
    answer: dict[str, Any] = {}
    _run_embed(path, texts, threads, max_len, with_ids=False, repeats=runs, answer=answer)
    times = sorted(answer["times_ms"])
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": times[0],
        "runs": runs,
        "tokens": answer["tokens"],
    }


def _tolerance(artifact: ModelArtifact) -> tuple[str, float]:
    scheme = artifact.scheme
    if scheme is None or scheme.weight_type in ("F32", "fp32"):
        key = "exact"
    elif scheme.delegated_to_llama_cpp:
        key = "delegated"
    else:
        key = "half" if scheme.weight_type == "F16" else "quantized"
    return key, MIN_COSINE[key]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_l2(a.astype(np.float64)) * _l2(b.astype(np.float64))).sum(-1)


def validate_encoder_gguf(
    path: Path,
    artifact: ModelArtifact,
    texts: Sequence[str],
    threads: int = 2,
    min_cosine: float | None = None,
    reference: Any = None,
) -> dict[str, Any]:
    """Run ``path`` in llama.cpp on ``texts`` and compare with ``compressor.encoder.encode`` of
    ``reference`` (default: the artifact's model, which holds the file's quantized weights): token ids
    must equal the HF tokenizer's, and each text's cosine must reach ``min_cosine`` (default by what
    the file holds: MIN_COSINE). Raises one ValidationError listing every problem; returns the figures."""
    from compressor.encoder import Task, encode, max_length

    model = artifact.model
    max_len = max_length(model, artifact.tokenizer)
    ours, theirs_ids = _run_embed(path, texts, threads, max_len, with_ids=True)
    assert theirs_ids is not None
    ref = encode(reference if reference is not None else model, artifact.tokenizer, list(texts)).numpy()
    key, default_min = _tolerance(artifact)
    floor = default_min if min_cosine is None else min_cosine
    hf_ids = [
        artifact.tokenizer(t, truncation=True, max_length=max_len, add_special_tokens=True).input_ids
        for t in texts
    ]
    same = [a == b for a, b in zip(hf_ids, theirs_ids, strict=True)]
    classify = model.task is Task.CLASSIFICATION
    if model.pooling.normalize and not classify:
        ours = _l2(ours)
    cos = _cosines(ref, ours)
    stats: dict[str, Any] = {
        "texts": len(texts),
        "token_ids_equal": int(sum(same)),
        "mean_cosine": round(float(cos.mean()), 6),
        "min_cosine": round(float(cos.min()), 6),
        "max_abs_diff": round(float(np.abs(ref - ours).max()), 6),
        "min_cosine_required": floor,
        "compared_with": (
            "the given reference model"
            if reference is not None
            else "float torch model"
            if key == "delegated"
            else "torch model with the same weights"
        ),
    }
    if classify:
        stats["argmax_agreement"] = round(float((ref.argmax(-1) == ours.argmax(-1)).mean()), 6)
    problems = []
    if not all(same):
        i = same.index(False)
        problems.append(
            f"llama.cpp tokenizes {len(same) - sum(same)} of {len(same)} texts differently from the HF "
            f"tokenizer; first: text {i} {texts[i][:60]!r}: "
            f"HF {hf_ids[i][:12]}, llama.cpp {theirs_ids[i][:12]}"
        )
    if not float(cos.min()) >= floor:
        problems.append(f"min cosine to the torch model {float(cos.min()):.6f} < required {floor:g}")
    if problems:
        raise ValidationError(f"{Path(path).name} disagrees with the torch model in llama.cpp", problems)
    return stats
