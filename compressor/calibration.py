"""Calibration, distillation and held-out token ids for the data-driven stages (prune, distill).

Teacher-written text is cached (``$COMPRESSOR_CACHE`` or ``~/.cache/compressor``), keyed by the source
model file's identity and the amount asked for, so a rerun reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from compressor.errors import InputError
from compressor.textdata import read_texts, split_heldout, teacher_texts, tokenize_docs

SEQ_LEN = 256


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def _teacher_docs(artifact: Any, n_tokens: int) -> list[str]:
    src = Path(artifact.source.path)
    ident = f"{src.resolve()}:{src.stat().st_size}:{src.stat().st_mtime_ns}:{n_tokens}:v1"
    path = cache_dir() / "teacher-text" / (hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json")
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    docs = teacher_texts(artifact.model, artifact.tokenizer, n_tokens)
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


def token_stream(artifact: Any, files: list[Path], n_tokens: int) -> tuple[list[int], list[int], str]:
    """(training ids, held-out ids, where the text came from)."""
    if files:
        docs, source = read_texts(files, artifact.tokenizer), ", ".join(str(f) for f in files)
    else:
        docs = _teacher_docs(artifact, int(n_tokens * 1.2) + 128)
        source = "text sampled from the teacher (built-in prompts, cached)"
    train, heldout = split_heldout(tokenize_docs(docs, artifact.tokenizer))
    return train[:n_tokens], heldout, source


def calibration_ids(
    artifact: Any, files: list[Path], n_tokens: int
) -> tuple[list[torch.Tensor], list[int], str]:
    """(batches (1, SEQ_LEN) for calibration, held-out ids, where the text came from)."""
    train, heldout, source = token_stream(artifact, files, n_tokens)
    batches = [torch.tensor([train[i : i + SEQ_LEN]]) for i in range(0, len(train) - SEQ_LEN + 1, SEQ_LEN)]
    if not batches:
        batches = [torch.tensor([train])]
    return batches, heldout, source
