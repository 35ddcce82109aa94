"""Calibration, distillation and held-out token ids for the data-driven stages (prune, distill, quantize).

Where the text comes from: the user's files when given; otherwise the built-in general-text sample
(``textdata.builtin_split``: its held-out documents are never calibrated or trained on); or, on request
(``teacher=True``), text the teacher writes. Teacher-written text is cached (``$COMPRESSOR_CACHE`` or
``~/.cache/compressor``), keyed by the model files' identity, the amount and the sampling settings, so a
rerun reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from compressor.errors import InputError
from compressor.textdata import (
    GENERAL_TEXT_SOURCE,
    TEACHER_BATCH,
    TEACHER_NEW_TOKENS,
    builtin_split,
    read_texts,
    split_heldout,
    teacher_texts,
    tokenize_docs,
)

log = logging.getLogger(__name__)

SEQ_LEN = 256
TEACHER_SOURCE = "text sampled from the teacher (built-in prompts, cached)"
TEACHER_CACHE_VERSION = "v2"  # v2: batched sampling, answers cut at the first EOS, 32 prompts
# Held-out tokens from the built-in sample: about an eighth of the tokens asked for, within these bounds
# (compare() evaluates them in windows of 256; more costs every evaluation time, fewer is noisy).
SAMPLE_HELDOUT_MIN_TOKENS = 512
SAMPLE_HELDOUT_MAX_TOKENS = 2048


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def _model_identity(src: Path) -> str:
    """Path, size and mtime of the model file, or of every file in a model directory (a directory's own
    mtime does not change when a file in it is rewritten)."""
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else [src]
    return ";".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def _teacher_docs(artifact: Any, n_tokens: int, seed: int = 0) -> list[str]:
    settings = f"{n_tokens}:{seed}:{TEACHER_BATCH}:{TEACHER_NEW_TOKENS}:{TEACHER_CACHE_VERSION}"
    ident = f"{_model_identity(Path(artifact.source.path))}:{settings}"
    path = cache_dir() / "teacher-text" / (hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json")
    if path.is_file():
        try:
            docs = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(docs, list) and all(isinstance(d, str) for d in docs):
                return docs
        except (OSError, ValueError):
            pass  # a damaged cache entry is written anew
    docs = teacher_texts(artifact.model, artifact.tokenizer, n_tokens, seed=seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks may race
        tmp.write_text(json.dumps(docs), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time
    return docs


def check_token_counts(artifact: Any, files: list[Path], need_train_tokens: int) -> None:
    """The user's data renders, tokenizes and is long enough, checked before any output is written."""
    ids = tokenize_docs(read_texts(files, artifact.tokenizer), artifact.tokenizer)
    train, _ = split_heldout(ids)
    if len(train) < need_train_tokens:
        raise InputError(
            f"the text data ({', '.join(str(f) for f in files)}) has {len(train)} training tokens after "
            f"the held-out split; distillation needs at least {need_train_tokens} (one batch): add text"
        )


def _ids_upto(docs: list[str], tokenizer: Any, n_tokens: int) -> list[int]:
    """The token stream of ``docs`` (each ended by EOS), tokenizing only as many as ``n_tokens`` needs."""
    ids: list[int] = []
    for d in docs:
        if len(ids) >= n_tokens:
            break
        ids += tokenize_docs([d], tokenizer)
    return ids[:n_tokens]


def sample_stream(tokenizer: Any, n_tokens: int) -> tuple[list[int], list[int]]:
    """(training ids, held-out ids) from the built-in sample. Training ids are the first ``n_tokens`` of
    the training documents (all of them, about 80k SmolLM2 tokens, when more are asked for)."""
    train_docs, held_docs = builtin_split()
    train = _ids_upto(train_docs, tokenizer, n_tokens)
    want = min(max(n_tokens // 8, SAMPLE_HELDOUT_MIN_TOKENS), SAMPLE_HELDOUT_MAX_TOKENS)
    heldout = _ids_upto(held_docs, tokenizer, want)
    if len(train) < n_tokens:
        log.info("the built-in sample has %d training tokens; %d were asked for", len(train), n_tokens)
    return train, heldout


def token_stream(
    artifact: Any, files: list[Path], n_tokens: int, *, teacher: bool = False, seed: int = 0
) -> tuple[list[int], list[int], str]:
    """(training ids, held-out ids, where the text came from).

    Args:
        artifact: the model artifact (its tokenizer; its model too when ``teacher``).
        files: the user's text files; when given they are used whatever ``teacher`` says, split into
            the last tenth of the stream held out and the rest.
        n_tokens: training tokens wanted (fewer come back when the text is shorter).
        teacher: with no files, have the teacher write the text (cached) instead of using the
            built-in general-text sample.
        seed: the teacher's sampling seed (part of the cache key); the sample and files ignore it.
    """
    tokenizer = artifact.tokenizer
    if files:
        docs, source = read_texts(files, tokenizer), ", ".join(str(f) for f in files)
    elif teacher:
        docs, source = _teacher_docs(artifact, int(n_tokens * 1.2) + 128, seed), TEACHER_SOURCE
    else:
        train, heldout = sample_stream(tokenizer, n_tokens)
        return train, heldout, GENERAL_TEXT_SOURCE
    train, heldout = split_heldout(tokenize_docs(docs, tokenizer))
    return train[:n_tokens], heldout, source


def calibration_ids(
    artifact: Any, files: list[Path], n_tokens: int, *, teacher: bool = False, seed: int = 0
) -> tuple[list[torch.Tensor], list[int], str]:
    """(batches (1, SEQ_LEN) for calibration, held-out ids, where the text came from); the text as
    ``token_stream`` chooses it."""
    train, heldout, source = token_stream(artifact, files, n_tokens, teacher=teacher, seed=seed)
    batches = [torch.tensor([train[i : i + SEQ_LEN]]) for i in range(0, len(train) - SEQ_LEN + 1, SEQ_LEN)]
    if not batches:
        batches = [torch.tensor([train])]
    return batches, heldout, source
