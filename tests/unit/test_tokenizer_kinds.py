"""The GGUF tokenizer bridge for every supported family: HF -> GGUF fields -> HF keeps the ids, and
llama.cpp, reading the fields we write, gives the same ids as the HF tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compressor.errors import ModelLoadError
from compressor.vocab import (
    GGUFVocab,
    hf_tokenizer_from_vocab,
    vocab_from_gguf_fields,
    vocab_from_hf_tokenizer,
    write_gguf_vocab,
)
from tests.conftest import corpus
from tests.family_tokenizers import GEMMA_TEMPLATE, KINDS, build_tokenizer

GEMMA_GGUF = Path("/tmp/gemma/gemma-3-270m-q4_k_m.gguf")

PLAIN = (
    "Digits 12345 and pi 3.14159, 1,000,000 -42\n"
    "naïve café – 日本語 😀 Ünïcödé ß Ωmega 한국어 русский\n"
    "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2], \"b\": x}  # comment\n"
    "    spaced   out    text   \n\n\n\nI'm DON'T we'll it's\r\nend  "
)
MESSAGES = [
    {"role": "user", "content": "What is 12345 + 3.14159?"},
    {"role": "assistant", "content": "About 12348.14159 – naïve sum 😀"},
    {"role": "user", "content": "def f():\n    return {1: 2}"},
]

# kind -> (tokenizer model, pre, add_space_prefix, add_bos) the GGUF fields must say
EXPECTED = {
    "smollm": ("gpt2", "smollm", False, False),
    "llama3": ("gpt2", "llama-bpe", False, True),
    "qwen2": ("gpt2", "qwen2", False, False),
    "spm": ("llama", "default", True, True),
    "gemma": ("llama", "default", False, True),
}


def mixed_text(tok: Any, template: str | None = None) -> str:
    chat = tok.apply_chat_template(MESSAGES, tokenize=False, chat_template=template)
    return corpus()[:1500] + PLAIN + chat


@pytest.fixture(scope="module", params=KINDS)
def family(request: pytest.FixtureRequest) -> tuple[str, Any, GGUFVocab]:
    tok = build_tokenizer(request.param)
    return request.param, tok, vocab_from_hf_tokenizer(tok)


def write_vocab_gguf(path: Path, vocab: GGUFVocab, name: str | None = None) -> Path:
    """The least llama.cpp opens with ``vocab_only``: the architecture name and the tokenizer fields."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if name:
        writer.add_name(name)
    write_gguf_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_family_fields_are_detected(family) -> None:
    from gguf import TokenType

    kind, tok, vocab = family
    assert (vocab.model, vocab.pre, vocab.add_space_prefix, vocab.add_bos) == EXPECTED[kind]
    assert vocab.tokens[vocab.eos_id] == tok.eos_token
    assert len(vocab.tokens) == len(vocab.token_types) == len(tok)
    if vocab.model == "llama":
        assert vocab.scores is not None and not vocab.merges
        assert vocab.token_types[vocab.tokens.index("<0x41>")] == TokenType.BYTE
        assert vocab.token_types[vocab.unk_id] == TokenType.UNKNOWN
        assert vocab.token_types[vocab.bos_id] == TokenType.CONTROL
    else:
        assert vocab.scores is None and vocab.merges


def test_round_trip_through_gguf_fields_keeps_ids(family) -> None:
    _, tok, vocab = family
    rebuilt = hf_tokenizer_from_vocab(vocab)
    text = mixed_text(tok)
    ids = tok(text, add_special_tokens=False).input_ids
    assert rebuilt(text, add_special_tokens=False).input_ids == ids
    assert rebuilt(PLAIN).input_ids == tok(PLAIN).input_ids  # same BOS as the original
    assert rebuilt.decode(rebuilt(PLAIN, add_special_tokens=False).input_ids) == PLAIN
    assert rebuilt.decode(ids) == tok.decode(ids)
    assert rebuilt.eos_token == tok.eos_token and rebuilt.chat_template == tok.chat_template


def test_written_fields_read_back_equal(family, tmp_path: Path) -> None:
    from compressor.loading import read_gguf_fields

    _, _, vocab = family
    fields, _ = read_gguf_fields(write_vocab_gguf(tmp_path / "vocab.gguf", vocab))
    assert vocab_from_gguf_fields(fields) == vocab


def test_llama_cpp_tokenizes_like_hf(family, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from exporters.llama_runtime import tokenize

    kind, tok, vocab = family
    text = mixed_text(tok)
    path = write_vocab_gguf(tmp_path / f"{kind}.gguf", vocab)
    assert tokenize(path, text) == tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("pre", ["default", "gpt-2"])
def test_llama_cpp_other_byte_level_pres(pre: str, tmp_path: Path) -> None:
    """Pre-tokenizers no family here uses, checked on the Llama-3 vocab against llama.cpp itself."""
    pytest.importorskip("llama_cpp")
    from exporters.llama_runtime import tokenize

    tok = build_tokenizer("llama3")
    vocab = vocab_from_hf_tokenizer(tok).model_copy(update={"pre": pre})
    rebuilt = hf_tokenizer_from_vocab(vocab)
    text = mixed_text(tok) + " $x+=1; a<=b>=c^d~e|f `g` ... !!! 1234567"
    ids = tokenize(write_vocab_gguf(tmp_path / f"{pre}.gguf", vocab), text)
    assert rebuilt(text, add_special_tokens=False).input_ids == ids
    assert ids != tok(text, add_special_tokens=False).input_ids  # the pre-tokenizer does matter


def test_metaspace_spm_tokenizer_is_read() -> None:
    """Newer Llama-2/Mistral conversions use a Metaspace pre-tokenizer instead of the normalizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer("spm")
    spec = json.loads(tok.backend_tokenizer.to_str())
    tk = Tokenizer.from_str(json.dumps({**spec, "normalizer": None}))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    meta = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    vocab = vocab_from_hf_tokenizer(meta)
    assert vocab.add_space_prefix and vocab.model == "llama"
    ids = meta(PLAIN, add_special_tokens=False).input_ids
    assert hf_tokenizer_from_vocab(vocab)(PLAIN, add_special_tokens=False).input_ids == ids


def test_phi3_special_tokens_drop_the_whitespace_after_them(tmp_path: Path) -> None:
    """Phi-3's tokenizer.json rstrips its special tokens; llama.cpp does so for a model named Phi-3."""
    pytest.importorskip("llama_cpp")
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from exporters.llama_runtime import tokenize

    spec = json.loads(build_tokenizer("spm").backend_tokenizer.to_str())
    for added in spec["added_tokens"]:
        added["rstrip"] = added["content"] == "</s>"
    tk = Tokenizer.from_str(json.dumps(spec))
    turns = [AddedToken(t, rstrip=True, normalized=False) for t in ("<|user|>", "<|assistant|>", "<|end|>")]
    tk.add_special_tokens([AddedToken("<|endoftext|>", normalized=False), *turns])
    phi3 = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    vocab = vocab_from_hf_tokenizer(phi3)
    assert vocab.rstrip_special
    text = "<|user|>\n  What is 12345? <|end|>\n<|assistant|>\n It is</s>  \n<|endoftext|> x" + PLAIN
    ids = phi3(text, add_special_tokens=False).input_ids
    assert hf_tokenizer_from_vocab(vocab)(text, add_special_tokens=False).input_ids == ids
    assert (
        tokenize(write_vocab_gguf(tmp_path / "phi3.gguf", vocab, name="Phi-3-mini-4k-instruct"), text) == ids
    )
    assert tokenize(write_vocab_gguf(tmp_path / "other.gguf", vocab, name="other"), text) != ids


def test_unsupported_gguf_tokenizers_name_what_is_supported() -> None:
    fields = {"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.token_type": [1]}
    with pytest.raises(ModelLoadError, match=r"'bert'.*supported: 'gpt2'.*'llama'"):
        vocab_from_gguf_fields({**fields, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelLoadError, match=r"'deepseek-coder'.*supported: llama-bpe, qwen2, smollm"):
        vocab_from_gguf_fields(
            {**fields, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-coder"}
        )


def test_unsupported_hf_tokenizers_name_what_is_supported() -> None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0))
    with pytest.raises(ModelLoadError, match=r"'Unigram'.*supported: byte-level BPE"):
        vocab_from_hf_tokenizer(PreTrainedTokenizerFast(tokenizer_object=unigram))
    spec = json.loads(build_tokenizer("qwen2").backend_tokenizer.to_str())
    tk = Tokenizer.from_str(json.dumps(spec))
    split = pre_tokenizers.Split(Regex(r"\p{N}{1,2}|\p{L}+|\s+"), behavior="isolated")
    tk.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(use_regex=False)])
    with pytest.raises(ModelLoadError, match=r"no known llama.cpp equivalent.*Llama-3.*Qwen2.*SmolLM"):
        vocab_from_hf_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tk))


@pytest.mark.integration
@pytest.mark.skipif(not GEMMA_GGUF.is_file(), reason=f"{GEMMA_GGUF} is absent")
def test_real_gemma3_vocab_tokenizes_like_llama_cpp() -> None:
    pytest.importorskip("llama_cpp")
    from compressor.loading import read_gguf_fields
    from exporters.llama_runtime import tokenize

    fields, _ = read_gguf_fields(GEMMA_GGUF)
    vocab = vocab_from_gguf_fields(fields)
    assert (vocab.model, len(vocab.tokens), vocab.add_space_prefix, vocab.add_bos) == (
        "llama",
        262144,
        False,
        True,
    )
    tok = hf_tokenizer_from_vocab(vocab)
    text = (
        mixed_text(tok, template=None if vocab.chat_template else GEMMA_TEMPLATE)
        + "<table><td>x</td></table>"
    )
    assert tok(text, add_special_tokens=False).input_ids == tokenize(GEMMA_GGUF, text)
    assert tok.decode(tok(PLAIN, add_special_tokens=False).input_ids) == PLAIN
    assert tok("hi").input_ids[0] == vocab.bos_id
