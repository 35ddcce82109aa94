"""SentencePiece-style BPE (GGUF ``tokenizer.ggml.model == "llama"``) <-> HF fast tokenizer.

llama.cpp's SPM tokenizer starts from UTF-8 characters and repeatedly merges the adjacent pair whose
concatenation is a vocabulary token with the highest *score* (ties: leftmost), then emits ``<0xNN>``
byte tokens for characters that are not tokens. A HF ``BPE`` with ``byte_fallback`` does the same when
its merge list holds every (left, right) split of every token, ranked by the token's score -- which is
how SentencePiece models are converted to ``tokenizer.json``. So:

* GGUF -> HF: merges are rebuilt from the scores (:func:`merges_from_scores`);
* HF -> GGUF: a token's score is minus the rank of the first merge that makes it
  (:func:`scores_from_merges`), which makes llama.cpp's score order replay the HF merge order.

Space handling: with ``add_space_prefix`` llama.cpp puts a space before the text and after every
special or user-defined token, then writes spaces as ``▁``; the HF equivalent is the normalizer
``Prepend("▁") + Replace(" ", "▁")``, which runs on each stretch of text between added tokens.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from compressor.errors import ModelLoadError

log = logging.getLogger(__name__)

SPACE = "▁"  # U+2581, SentencePiece's escaped space
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of every token into two tokens, highest-scoring result first (ties: lower id).

    The splits of one token share its score. llama.cpp breaks a tie between two candidate pairs by
    position, HF by rank; the two can only disagree for a periodic token ("▁▁▁") whose splits overlap
    ([▁▁][▁][▁▁]), as for HF's own SentencePiece conversions.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, piece in enumerate(tokens):
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, k, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def scores_from_merges(tokens: list[str], merges: list[tuple[str, str]]) -> list[float]:
    """Minus the rank of the first merge making each token; tokens no merge makes score below all.

    Scores are float32 in GGUF, exact for integers up to 2**24 (16.7 M merges).
    """
    first_rank: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first_rank.setdefault(left + right, rank)
    floor = -float(len(merges))
    return [-float(first_rank[t]) if t in first_rank else floor for t in tokens]


def spm_backend(tokens: list[str], scores: list[float], unk: str | None, space_prefix: bool) -> Any:
    """A ``tokenizers.Tokenizer`` (model, normalizer, decoder) that splits text as llama.cpp's SPM does."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    model = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=merges_from_scores(tokens, scores),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tk = Tokenizer(model)
    steps = [normalizers.Prepend(SPACE)] if space_prefix else []
    tk.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    parts = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:  # the prefix llama.cpp added is not part of the text
        parts.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(parts)
    return tk


# llama.cpp drops the whitespace after special and user-defined tokens when ``general.name`` says Phi-3
# (Phi-3's tokenizer.json marks them ``rstrip``), except after these.
PHI3_KEEP_SPACE = ("<unk>", "<s>", "<|endoftext|>")


def phi3_rstrip(general_name: str | None) -> bool:
    """Whether llama.cpp gives special tokens Phi-3's ``rstrip`` for a model of this name."""
    name = (general_name or "").lower()
    return "phi-3" in name or "phi3" in name


def spm_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style ``tokenizer.json`` adds a leading ``▁`` (llama.cpp's
    ``add_space_prefix``): Prepend+Replace normalizer (Llama-2, Mistral, Phi-3), Replace alone (Gemma),
    or a Metaspace pre-tokenizer. Anything else raises ``ModelLoadError``."""
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    steps = norm.get("normalizers", [norm] if norm else [])
    kinds = [s.get("type") for s in steps]
    replaces = bool(steps) and steps[-1] == {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if replaces and pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}:
        pre = {}  # Gemma's: splits on spaces the normalizer has already replaced, a no-op
    if replaces and not pre and kinds == ["Replace"]:
        return False
    if replaces and not pre and len(steps) == 2 and steps[0] == {"type": "Prepend", "prepend": SPACE}:
        return True
    if not steps and pre.get("type") == "Metaspace" and pre.get("replacement") == SPACE:
        if pre.get("prepend_scheme") == "first":
            log.warning(
                "the tokenizer adds no space after special tokens (Metaspace prepend_scheme 'first'); "
                "llama.cpp does, so token ids can differ right after them"
            )
        return pre.get("prepend_scheme", "always") != "never"
    raise ModelLoadError(
        f"the SentencePiece-style tokenizer has normalizer {kinds or None} and pre-tokenizer "
        f"{pre.get('type')!r}, which have no llama.cpp equivalent (supported: Prepend+Replace or Replace "
        "normalizer without pre-tokenizer, or a Metaspace pre-tokenizer)"
    )
