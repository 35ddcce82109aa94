"""Text for calibration, distillation and evaluation: the user's files, or text the teacher writes.

Accepted files: plain text (``.txt`` or any name but ``.jsonl``, used as is), ``.jsonl`` with a
``"text"`` field per line, or chat ``.jsonl`` with ``"messages": [{"role", "content"}...]``
(rendered with the model's chat template).
With no files, the teacher samples continuations of a built-in set of varied prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compressor.errors import InputError

PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are three tips for learning a new language?",
    "Describe the water cycle to a ten-year-old.",
    "Write a Python function that reverses a string, and explain it.",
    "Summarize the causes of the French Revolution.",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "Write a polite email asking a colleague to review a document.",
    "How do vaccines train the immune system?",
    "List some good habits for writing clean code.",
    "Why is the sky blue?",
]


def read_texts(paths: Sequence[Path], tokenizer: Any) -> list[str]:
    """Documents from the user's files; every problem (missing file, bad JSON line) reported at once."""
    docs, problems = [], []
    for path in paths:
        if not path.is_file():
            problems.append(f"{path}: no such file")
            continue
        if path.suffix != ".jsonl":  # .txt or any other file: plain UTF-8 text
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "messages" in row:
                    docs.append(tokenizer.apply_chat_template(row["messages"], tokenize=False))
                else:
                    docs.append(str(row["text"]))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{path}:{i}: expected {{'text': ...}} or {{'messages': [...]}} ({exc})")
    if problems:
        raise InputError("could not read the text data", problems)
    return docs


@torch.no_grad()
def teacher_texts(model: Any, tokenizer: Any, n_tokens: int, seed: int = 0, batch: int = 6) -> list[str]:
    """Sample about ``n_tokens`` tokens of chat answers from the teacher (temperature 0.8, top-p 0.95)."""
    torch.manual_seed(seed)
    texts: list[str] = []
    per = 96
    rounds = max(1, -(-n_tokens // (per * batch)))
    for r in range(rounds):
        prompts = [PROMPTS[(r * batch + i) % len(PROMPTS)] for i in range(batch)]
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        tokenizer.padding_side = "left"
        enc = tokenizer(
            rendered, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False
        )
        out = model.generate(
            **enc,
            max_new_tokens=per,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        texts += [
            rendered[i] + tokenizer.decode(out[i, enc.input_ids.shape[1] :], skip_special_tokens=False)
            for i in range(batch)
        ]
    return texts


def tokenize_docs(docs: Sequence[str], tokenizer: Any) -> list[int]:
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False).input_ids
        if eos is not None:
            ids.append(eos)
    return ids


def split_heldout(
    ids: list[int], heldout_ratio: float = 0.1, min_heldout: int = 128
) -> tuple[list[int], list[int]]:
    """(train, held-out): the last ``heldout_ratio`` of the stream, at least ``min_heldout`` tokens."""
    n = max(min_heldout, int(len(ids) * heldout_ratio))
    if len(ids) < 2 * n:
        raise InputError(f"the text data has {len(ids)} tokens; give at least {2 * n} for a held-out split")
    return ids[:-n], ids[-n:]
