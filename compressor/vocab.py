"""GGUFVocab: a tokenizer as llama.cpp stores it (``tokenizer.*`` fields), and the bridge to a HF fast
tokenizer in both directions. Two ``tokenizer.ggml.model`` kinds:

* ``gpt2``: byte-level BPE ranked by merges, after the split llama.cpp does for ``tokenizer.ggml.pre``
  (Llama 3 ``llama-bpe``, Qwen2/2.5/3 ``qwen2``, SmolLM ``smollm``, ``gpt-2``, ``default``);
* ``llama``: SentencePiece BPE merged by score with ``<0xNN>`` byte fallback (Llama 2, Mistral, Phi-3
  with a space prefix; Gemma without): see ``compressor.vocab_spm``.

Why our own bridge: transformers' GGUF tokenizers differ from llama.cpp (SmolLM2's eos is ``<|im_start|>``
although turns end on ``<|im_end|>``; Gemma becomes a Unigram where llama.cpp merges by score). Built
from the GGUF's fields the way llama.cpp reads them, ours gives llama.cpp's ids, and the same fields can
be written back into our GGUF.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from compressor.errors import ModelLoadError
from compressor.vocab_spm import (
    BYTE_TOKEN,
    PHI3_KEEP_SPACE,
    phi3_rstrip,
    scores_from_merges,
    spm_backend,
    spm_space_prefix,
)

# The Split regexes of Meta-Llama-3's and Qwen2's tokenizer.json, which llama.cpp's llama-vocab.cpp
# implements for the pre-tokenizers "llama-bpe" and "qwen2" (\p{N}{1,3} vs single digits).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp's "default" BPE pre-tokenizer: these regexes one after the other, each splitting the pieces
# of the one before (punctuation runs, GPT-2, digit runs, digit triples).
DEFAULT_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]")

BYTE_LEVEL_PRES = ("llama-bpe", "qwen2", "smollm", "gpt-2", "default")
PRE_ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "gpt2": "gpt-2"}  # "gpt2": our old files
TOKENIZER_MODELS = ("gpt2", "llama")


class GGUFVocab(BaseModel):
    """The ``tokenizer.*`` fields of a GGUF; lists are indexed by token id."""

    model_config = ConfigDict(frozen=True)
    model: Literal["gpt2", "llama"]  # tokenizer.ggml.model: byte-level BPE / SentencePiece BPE
    pre: str  # tokenizer.ggml.pre: which pre-tokenizer llama.cpp applies ("default" for "llama")
    tokens: list[str]
    token_types: list[int]  # gguf.TokenType values
    merges: list[str] = []  # "left right", rank order ("gpt2" only)
    scores: list[float] | None = None  # merge priority, higher first ("llama" only)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False  # "llama": a space before the text and after special tokens
    chat_template: str | None = None
    rstrip_special: bool = False  # Phi-3: whitespace after special tokens is dropped (not a GGUF field)


def _unsupported_pre(found: str) -> ModelLoadError:
    return ModelLoadError(
        f"the tokenizer pre-tokenizer '{found}' is not supported "
        f"(supported: {', '.join(BYTE_LEVEL_PRES)}; aliases {', '.join(PRE_ALIASES)})"
    )


def _byte_level_pre_tokenizer(pre: str) -> Any:
    """The HF pre-tokenizer that splits text as llama.cpp does for ``tokenizer.ggml.pre == pre``."""
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    pre = PRE_ALIASES.get(pre, pre)
    if pre == "smollm":  # llama.cpp: "\p{N}" split, then the GPT-2 regex
        return pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)])
    if pre == "gpt-2":
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    regexes = {"llama-bpe": (LLAMA3_REGEX,), "qwen2": (QWEN2_REGEX,), "default": DEFAULT_REGEXES}
    if pre not in regexes:
        raise _unsupported_pre(pre)
    splits = [pt.Split(Regex(r), behavior="isolated", invert=False) for r in regexes[pre]]
    return pt.Sequence([*splits, pt.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def vocab_from_gguf_fields(fields: dict[str, Any]) -> GGUFVocab:
    """Read the ``tokenizer.*`` fields of a GGUF (values as ``GGUFReader.fields[k].contents()``),
    with llama.cpp's defaults for the optional ones."""
    model = fields.get("tokenizer.ggml.model")
    if model not in TOKENIZER_MODELS:
        raise ModelLoadError(
            f"the GGUF's tokenizer model is '{model}'; supported: 'gpt2' (byte-level BPE) and 'llama' "
            "(SentencePiece BPE with byte fallback)"
        )
    pre = str(fields.get("tokenizer.ggml.pre") or "default")
    if model == "gpt2" and PRE_ALIASES.get(pre, pre) not in BYTE_LEVEL_PRES:
        raise _unsupported_pre(pre)
    spm, tokens = model == "llama", list(fields["tokenizer.ggml.tokens"])
    scores = fields.get("tokenizer.ggml.scores", [0.0] * len(tokens) if spm else None)  # llama.cpp's default
    return GGUFVocab(
        model=model,
        pre=pre,
        tokens=tokens,
        token_types=[int(t) for t in fields["tokenizer.ggml.token_type"]],
        merges=list(fields.get("tokenizer.ggml.merges", [])),
        scores=[float(s) for s in scores] if scores is not None else None,
        bos_id=fields.get("tokenizer.ggml.bos_token_id", 1 if spm else None),
        eos_id=fields.get("tokenizer.ggml.eos_token_id", 2 if spm else None),
        unk_id=fields.get("tokenizer.ggml.unknown_token_id", 0 if spm else None),
        pad_id=fields.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(
            fields.get("tokenizer.ggml.add_bos_token", spm or PRE_ALIASES.get(pre, pre) == "llama-bpe")
        ),
        add_eos=bool(fields.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(fields.get("tokenizer.ggml.add_space_prefix", spm)),
        rstrip_special=phi3_rstrip(fields.get("general.name")),
        chat_template=fields.get("tokenizer.chat_template"),
    )


def _name(vocab: GGUFVocab, i: int | None) -> str | None:
    return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else None


def _backend(vocab: GGUFVocab) -> Any:
    """The ``tokenizers.Tokenizer`` (model, pre-tokenizer/normalizer, decoder) for ``vocab``."""
    from tokenizers import Tokenizer, decoders, models

    if vocab.model == "llama":
        scores = vocab.scores if vocab.scores is not None else [0.0] * len(vocab.tokens)
        return spm_backend(vocab.tokens, scores, _name(vocab, vocab.unk_id), vocab.add_space_prefix)
    ids = {tok: i for i, tok in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    # llama.cpp's llama-bpe takes a pre-token that is itself a token whole, before any merge
    whole = PRE_ALIASES.get(vocab.pre, vocab.pre) == "llama-bpe"
    tk = Tokenizer(
        models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=whole)
    )
    tk.pre_tokenizer = _byte_level_pre_tokenizer(vocab.pre)
    tk.decoder = decoders.ByteLevel()
    return tk


def _post_processor(vocab: GGUFVocab) -> Any:
    """BOS/EOS around a text where llama.cpp adds them (``add_special=True``); None if neither."""
    from tokenizers import processors

    bos, eos = (
        [(_name(vocab, i), i)] if on and _name(vocab, i) else []
        for on, i in ((vocab.add_bos, vocab.bos_id), (vocab.add_eos, vocab.eos_id))
    )
    if not bos and not eos:
        return None
    one = [t for t, _ in bos] + ["$A"] + [t for t, _ in eos]
    two = [f"{t}:1" for t, _ in bos] + ["$B:1"] + [f"{t}:1" for t, _ in eos]
    return processors.TemplateProcessing(
        single=one, pair=one + two, special_tokens=list(dict.fromkeys(bos + eos))
    )


def hf_tokenizer_from_vocab(vocab: GGUFVocab) -> Any:
    """Build a ``PreTrainedTokenizerFast`` that tokenizes exactly as llama.cpp does for this vocab.

    Control and unknown tokens become special added tokens and user-defined ones plain added tokens,
    all matched on the raw text as llama.cpp does before splitting the rest.
    """
    from gguf import TokenType
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tk = _backend(vocab)
    special, strip = {TokenType.CONTROL, TokenType.UNKNOWN}, vocab.rstrip_special
    added = [
        AddedToken(t, special=kind in special, normalized=False, rstrip=strip and t not in PHI3_KEEP_SPACE)
        for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind in special or kind == TokenType.USER_DEFINED
    ]
    tk.add_tokens(added)
    processor = _post_processor(vocab)
    if processor is not None:
        tk.post_processor = processor
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=_name(vocab, vocab.bos_id),
        eos_token=_name(vocab, vocab.eos_id),
        unk_token=_name(vocab, vocab.unk_id),
        pad_token=_name(vocab, vocab.pad_id),
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # a decoder takes no token_type_ids
    )
    if vocab.chat_template:
        tok.chat_template = vocab.chat_template
    return tok


def vocab_from_hf_tokenizer(tok: Any) -> GGUFVocab:
    """Derive GGUF tokenizer fields from a HF fast tokenizer (for HF-directory sources).

    Byte-level BPE becomes ``gpt2`` with the ``pre`` whose regex the tokenizer uses; BPE with byte
    fallback and SentencePiece-style spaces becomes ``llama`` with scores replaying the merge order.
    """
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ModelLoadError(
            f"tokenizer type {model.get('type')!r} cannot be written to GGUF (supported: byte-level BPE, "
            "and SentencePiece-style BPE with byte_fallback)"
        )
    spm = bool(model.get("byte_fallback"))
    tokens, types = _token_table(spec, max(len(tok), max(model["vocab"].values()) + 1), spm)
    merges = [
        (a, b) for a, b in (m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", []))
    ]

    def tid(t: str | None) -> int | None:
        return tok.convert_tokens_to_ids(t) if t else None

    unk_id, bos_id, eos_id = tid(tok.unk_token), tid(tok.bos_token), tid(tok.eos_token)
    if spm and unk_id is not None:
        types[unk_id] = _token_type("UNKNOWN")
    with_special = tok("a", add_special_tokens=True).input_ids
    return GGUFVocab(
        model="llama" if spm else "gpt2",
        pre="default" if spm else _detect_pre(spec),
        tokens=tokens,
        token_types=types,
        merges=[] if spm else [f"{a} {b}" for a, b in merges],
        scores=scores_from_merges(tokens, merges) if spm else None,
        bos_id=bos_id,
        eos_id=eos_id,
        unk_id=unk_id,
        pad_id=tid(tok.pad_token),
        add_bos=bos_id is not None and with_special[:1] == [bos_id],
        add_eos=eos_id is not None and with_special[-1:] == [eos_id],
        add_space_prefix=spm_space_prefix(spec) if spm else False,
        rstrip_special=any(a.get("special") and a.get("rstrip") for a in spec.get("added_tokens", [])),
        chat_template=tok.chat_template,
    )


def _token_type(name: str) -> int:
    from gguf import TokenType

    return int(TokenType[name])


def _token_table(spec: dict[str, Any], size: int, spm: bool) -> tuple[list[str], list[int]]:
    """Tokens and types by id: model vocab NORMAL (BYTE for SPM ``<0xNN>``), added tokens CONTROL when
    special else USER_DEFINED, ids nobody uses ``[PADn]`` USER_DEFINED (as llama.cpp's converter does)."""
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [_token_type("USER_DEFINED")] * size
    normal, byte = _token_type("NORMAL"), _token_type("BYTE")
    for t, i in spec["model"]["vocab"].items():
        tokens[i], types[i] = t, byte if spm and BYTE_TOKEN.fullmatch(t) else normal
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = _token_type("CONTROL" if added.get("special") else "USER_DEFINED")
    return tokens, types


def _detect_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's ``pre`` name for a byte-level ``tokenizer.json``, from its pre-tokenizer."""
    pre = spec.get("pre_tokenizer") or {}
    steps: list[dict[str, Any]] = pre.get("pretokenizers", [pre])
    kinds = [p.get("type") for p in steps]
    norm = (spec.get("normalizer") or {}).get("type")
    found = str(kinds)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        found = "smollm"
    elif kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        found = "gpt-2"
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        found = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}.get(regex, f"Split({regex!r})")
    # NFC (Qwen2) is accepted although llama.cpp does not normalize: ids differ only on non-NFC text
    if norm not in (None, "NFC") or found not in BYTE_LEVEL_PRES:
        raise ModelLoadError(
            f"the tokenizer's pre-tokenizer {found} (normalizer {norm}) has no known llama.cpp equivalent; "
            "GGUF export supports Llama-3 (Split regex with \\p{N}{1,3}), Qwen2 (Split regex with \\p{N}), "
            "SmolLM (Digits+ByteLevel) and GPT-2 (ByteLevel) byte-level tokenizers, and SentencePiece BPE"
        )
    return found


def write_gguf_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Write ``vocab`` as ``tokenizer.*`` fields with a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(PRE_ALIASES.get(vocab.pre, vocab.pre))  # a name llama.cpp knows
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
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
    if vocab.model == "llama" or vocab.add_eos:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":  # llama.cpp assumes a space prefix for SPM unless told otherwise
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
