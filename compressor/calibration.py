"""Calibration and held-out token ids for the data-driven stages (pruning, distillation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compressor.textdata import read_texts, split_heldout, teacher_texts, tokenize_docs

SEQ_LEN = 256


def calibration_ids(
    artifact: Any, files: list[Path], n_tokens: int
) -> tuple[list[torch.Tensor], list[int], str]:
    """(batches (1, SEQ_LEN) for calibration, held-out ids, where the text came from)."""
    if files:
        docs, source = read_texts(files, artifact.tokenizer), ", ".join(str(f) for f in files)
    else:
        docs = teacher_texts(artifact.model, artifact.tokenizer, int(n_tokens * 1.2) + 128)
        source = "text sampled from the teacher (built-in prompts)"
    train, heldout = split_heldout(tokenize_docs(docs, artifact.tokenizer))
    train = train[:n_tokens]
    batches = [torch.tensor([train[i : i + SEQ_LEN]]) for i in range(0, len(train) - SEQ_LEN + 1, SEQ_LEN)]
    if not batches:
        batches = [torch.tensor([train])]
    return batches, heldout, source
