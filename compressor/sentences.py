"""Sentences for encoders: calibration, distillation and held-out evaluation.

An encoder's teacher cannot write its own text, so when the user gives none the tool uses a built-in
sample: ``compressor/data/sentences.txt``, 9,970 English sentences taken from the docstrings of the
Python 3.11 standard library (PSF License 2.0, a permissive licence), one per line, in a fixed
shuffled order (``bench/build_sentences.py`` rebuilds it). The domain is technical prose; pass your
own text (``--calib-data``) to distil for another one.

User files are read by ``compressor.textdata`` (the same formats and checks as for decoders); every
non-empty line of plain text is one sentence, each ``text`` field of a ``.jsonl`` row is one, and each
message of a chat row is one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from compressor.errors import InputError
from compressor.textdata import check_text_files

BUILTIN_SOURCE = "built-in sample (Python standard-library docstrings, PSF-2.0)"
MIN_SENTENCES = 64


def builtin_sentences() -> list[str]:
    text = resources.files("compressor.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def read_sentences(paths: Sequence[Path]) -> list[str]:
    out: list[str] = []
    for doc in check_text_files(paths):
        if isinstance(doc, str):
            out += [line.strip() for line in doc.splitlines() if line.strip()]
        else:
            out += [str(m.get("content", "")).strip() for m in doc if str(m.get("content", "")).strip()]
    return out


def _heldout(sentence: str, fraction: float) -> bool:
    """A fixed split by content hash: a sentence is held out (or not) whatever file it comes in."""
    h = int.from_bytes(hashlib.blake2b(sentence.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def sentence_split(paths: Sequence[Path], heldout_fraction: float = 0.3) -> tuple[list[str], list[str], str]:
    """(training sentences, held-out sentences, where they came from): duplicates removed, the split
    fixed by content so a sentence is never both trained on and used to judge."""
    if paths:
        raw, source = read_sentences(paths), ", ".join(str(p) for p in paths)
    else:
        raw, source = builtin_sentences(), BUILTIN_SOURCE
    unique = list(dict.fromkeys(raw))
    if len(unique) < MIN_SENTENCES:
        raise InputError(
            f"the text data has {len(unique)} distinct sentences; encoders need at least {MIN_SENTENCES} "
            "(one sentence per line in a .txt file, or one 'text' per .jsonl row)"
        )
    held = [s for s in unique if _heldout(s, heldout_fraction)]
    train = [s for s in unique if not _heldout(s, heldout_fraction)]
    return train, held, source
