"""Tiny tokenizers shaped like those of the model families we support, trained in code.

Each is a BPE of 400 tokens (plus the specials some families append after them) trained with the
``tokenizers`` library on ``tests.conftest.corpus()`` and dressed the way that family's real
``tokenizer.json`` is (pre-tokenizer, special tokens and their ids, normalizer, decoder, BOS
post-processor, chat template), so the GGUF bridge meets the shapes it meets on real checkpoints:

* ``smollm``: Digits + ByteLevel, ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` first, ChatML.
* ``llama3``: the Llama-3 Split regex + ByteLevel, ``ignore_merges``, header/eot tokens appended
  after the base vocab, ``<|begin_of_text|>`` prepended.
* ``qwen2``: NFC + the Qwen2 Split regex (single digits) + ByteLevel, ChatML tokens appended, no BOS.
* ``spm``: SentencePiece BPE as Llama-2 / Mistral / Phi-3 ship it: ``<unk>``, ``<s>``, ``</s>``, 256
  ``<0xNN>`` byte-fallback tokens, Prepend+Replace normalizer (space prefix), ``[INST]`` template.
* ``gemma``: SentencePiece BPE without a space prefix, Gemma's ids for ``<pad>``/``<eos>``/``<bos>``/
  ``<unk>``, turn tokens, newline runs as user-defined tokens, ``<bos>`` prepended.

SentencePiece-converted tokenizers list every (left, right) split of every piece as a merge, ordered by
the piece's score; the SPM kinds are completed the same way after training.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from tests.conftest import corpus

Kind = Literal["smollm", "llama3", "qwen2", "spm", "gemma"]
KINDS: tuple[Kind, ...] = ("smollm", "llama3", "qwen2", "spm", "gemma")
VOCAB_SIZE = 400

# As written in Meta-Llama-3's and Qwen2.5's tokenizer.json (restated here on purpose: the code under test
# must recognise the real strings, not its own constants).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3's vocab holds words that its merges do not build; so does ours ("Ġ" is a byte-level space).
WHOLE_WORDS = ("ĠSoftware", "Ġlicense", "Ġprogram", "Ġcopyright")

CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
INST_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' "
    "else m['role']) + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_tokenizer(kind: Kind) -> Any:
    """A ``PreTrainedTokenizerFast`` of ``kind`` (see the module docstring); deterministic."""
    return _BUILDERS[kind]()


def _wrap(tk: Any, template: str, **specials: str | None) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **specials,
    )
    tok.chat_template = template
    return tok


def _bos_processor(tk: Any, bos: str) -> Any:
    from tokenizers import processors

    bos_id = tk.token_to_id(bos)
    return processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


def _train_byte_level(pre: Any, specials_first: list[str], nfc: bool = False) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials_first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([corpus()], trainer)
    return tk


def _split_byte_level(regex: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _smollm() -> Any:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk = _train_byte_level(pre, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return _wrap(
        tk, CHATML, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )  # fmt: skip


def _llama3() -> Any:
    from tokenizers import AddedToken, Tokenizer

    tk = _train_byte_level(_split_byte_level(LLAMA3_REGEX), [])
    spec = json.loads(tk.to_str())
    spec["model"]["ignore_merges"] = True  # as in Meta-Llama-3's tokenizer.json; llama.cpp does the same
    vocab = spec["model"]["vocab"]
    for word in WHOLE_WORDS:  # tokens no merge reaches, which only ignore_merges produces
        vocab.setdefault(word, len(vocab))
    tk = Tokenizer.from_str(json.dumps(spec))
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"]
    names += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tk.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    tk.post_processor = _bos_processor(tk, "<|begin_of_text|>")
    return _wrap(tk, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


def _qwen2() -> Any:
    from tokenizers import AddedToken

    tk = _train_byte_level(_split_byte_level(QWEN2_REGEX), [], nfc=True)
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    return _wrap(tk, CHATML, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _train_spm(prefix: bool, specials: list[str], unk: str) -> Any:
    """SentencePiece-style BPE: pieces trained within words, then every split of a piece made a merge
    ranked by the piece's id (= its score order), as SentencePiece->tokenizer.json conversion does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token=unk, byte_fallback=True, fuse_unk=True))
    scheme = "always" if prefix else "never"
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials + byte_tokens, show_progress=False
    )
    tk.train_from_iterator([corpus()], trainer)
    spec = json.loads(tk.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    ranked = []
    for piece, pid in vocab.items():
        ranked += [(pid, vocab[piece[:k]], piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in vocab and piece[k:] in vocab]  # fmt: skip
    spec["model"]["merges"] = [[left, right] for *_, left, right in sorted(ranked)]
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_tokens]
    steps = [normalizers.Replace(" ", "▁")]
    if prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tk = Tokenizer.from_str(json.dumps(spec))
    # Gemma's tokenizer.json splits on " " after the normalizer has replaced them all: a no-op
    tk.pre_tokenizer = None if prefix else pre_tokenizers.Split(" ", "merged_with_previous")
    tk.normalizer = normalizers.Sequence(steps)
    parts = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(parts + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tk


def _spm() -> Any:
    tk = _train_spm(prefix=True, specials=["<unk>", "<s>", "</s>"], unk="<unk>")
    tk.post_processor = _bos_processor(tk, "<s>")
    return _wrap(tk, INST_TEMPLATE, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _gemma() -> Any:
    from tokenizers import AddedToken

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tk = _train_spm(prefix=False, specials=specials, unk="<unk>")
    tk.add_tokens([AddedToken("\n" * n, special=False, normalized=False) for n in (1, 2, 3)])
    tk.post_processor = _bos_processor(tk, "<bos>")
    return _wrap(
        tk, GEMMA_TEMPLATE, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )  # fmt: skip


_BUILDERS = {"smollm": _smollm, "llama3": _llama3, "qwen2": _qwen2, "spm": _spm, "gemma": _gemma}
