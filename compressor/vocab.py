"""GGUFVocab: a byte-level BPE tokenizer as llama.cpp stores it, and the bridge to a HF fast tokenizer.

Why our own bridge: the tokenizer transformers builds from a GGUF is slightly wrong for SmolLM2 (eos
is ``<|im_start|>`` although turns end on ``<|im_end|>``, a BOS is prepended to every text, and
``save_pretrained`` copies the whole GGUF as ``tokenizer.model``). Building the HF tokenizer from the
GGUF's own fields, with the pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre``,
gives the same token ids as llama.cpp, and the same fields can be written back into our GGUF.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from compressor.errors import ModelLoadError

# llama.cpp token types (llama_token_type / gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


class GGUFVocab(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str  # tokenizer.ggml.model: only "gpt2" (byte-level BPE) is supported
    pre: str  # tokenizer.ggml.pre: which pre-tokenizer regex llama.cpp applies
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp: "\p{N}" split, then the GPT-2 regex
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "default"):
        return byte_level
    raise ModelLoadError(f"tokenizer pre-tokenizer '{pre}' is not supported yet (supported: smollm, gpt2)")


def vocab_from_gguf_fields(fields: dict[str, Any]) -> GGUFVocab:
    """Read the ``tokenizer.*`` fields of a GGUF (values as ``GGUFReader.fields[k].contents()``)."""
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelLoadError(
            f"the GGUF's tokenizer model is '{model}'; only byte-level BPE ('gpt2') is supported yet"
        )
    return GGUFVocab(
        model=model,
        pre=fields.get("tokenizer.ggml.pre", "default"),
        tokens=list(fields["tokenizer.ggml.tokens"]),
        token_types=[int(t) for t in fields["tokenizer.ggml.token_type"]],
        merges=list(fields.get("tokenizer.ggml.merges", [])),
        bos_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_id=fields.get("tokenizer.ggml.eos_token_id"),
        unk_id=fields.get("tokenizer.ggml.unknown_token_id"),
        pad_id=fields.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=fields.get("tokenizer.chat_template"),
    )


def hf_tokenizer_from_vocab(vocab: GGUFVocab) -> Any:
    """Build a ``PreTrainedTokenizerFast`` that tokenizes exactly as llama.cpp does for this vocab."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tk = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = _pre_tokenizer(vocab.pre)
    tk.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=(kind == CONTROL), normalized=False)
        for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind in (CONTROL, USER_DEFINED)
    ]
    tk.add_tokens(added)

    def name(i: int | None) -> str | None:
        return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else None

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name(vocab.bos_id),
        eos_token=name(vocab.eos_id),
        unk_token=name(vocab.unk_id),
        pad_token=name(vocab.pad_id),
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # a decoder takes no token_type_ids
    )
    if vocab.chat_template:
        tok.chat_template = vocab.chat_template
    return tok


def vocab_from_hf_tokenizer(tok: Any) -> GGUFVocab:
    """Derive GGUF tokenizer fields from a HF fast byte-level BPE tokenizer (for HF-directory sources)."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ModelLoadError(
            f"tokenizer type {model.get('type')!r} cannot be written to GGUF yet (only byte-level BPE)"
        )
    pre = _detect_pre(spec.get("pre_tokenizer") or {})
    size = max(len(tok), max(model["vocab"].values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [USER_DEFINED] * size
    for t, i in model["vocab"].items():
        tokens[i], types[i] = t, NORMAL
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def tid(t: str | None) -> int | None:
        return tok.convert_tokens_to_ids(t) if t else None

    return GGUFVocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=tid(tok.bos_token),
        eos_id=tid(tok.eos_token),
        unk_id=tid(tok.unk_token),
        pad_id=tid(tok.pad_token),
        add_bos=False,
        chat_template=tok.chat_template,
    )


def _detect_pre(pre: dict[str, Any]) -> str:
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if kinds == ["Digits", "ByteLevel"] and pre["pretokenizers"][0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt2"
    raise ModelLoadError(
        f"the tokenizer's pre-tokenizer {kinds} has no known llama.cpp equivalent; "
        "GGUF export supports SmolLM-style (Digits+ByteLevel) and GPT-2 (ByteLevel) tokenizers"
    )
