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
from compressor.paths import unreachable

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


Doc = str | list[Any]  # plain text, or chat messages to render with the model's chat template


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None."""
    if (why := unreachable(path)) is not None:
        return f"{path}: {why}"
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())[:8]
        listed = f" (it holds: {', '.join(inside)})" if inside else " (it holds no files)"
        return f"{path}: is a directory; pass the text files in it{listed}"
    if not path.is_file():
        return f"{path}: not a regular file"
    return None


def _file_docs(path: Path, problems: list[str]) -> list[Doc]:
    """The documents of one file; every problem is appended to ``problems``."""
    if (bad := _path_problem(path)) is not None:
        problems.append(bad)
        return []
    raw = path.read_bytes()
    if b"\x00" in raw:
        problems.append(f"{path}: binary data (NUL bytes); give UTF-8 text, .txt or .jsonl")
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8")
        return []
    if not text.strip():
        problems.append(f"{path}: empty; give a file with text in it")
        return []
    if path.suffix != ".jsonl":  # .txt or any other file: plain text as is
        return [text]
    docs: list[Doc] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(f"{path}:{i}: not JSON ({exc})")
            continue
        messages = row.get("messages") if isinstance(row, dict) else None
        if (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            docs.append(messages)
        elif isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            docs.append(row["text"])
        else:
            problems.append(
                f'{path}:{i}: expected {{"text": "..."}} or '
                f'{{"messages": [{{"role": "...", "content": "..."}}, ...]}}'
            )
    if not docs and not any(p.startswith(f"{path}:") for p in problems):
        problems.append(f"{path}: no text lines")
    return docs


def check_text_files(paths: Sequence[Path]) -> list[Doc]:
    """Read and validate every data file before any work (no tokenizer needed); all problems at once."""
    docs: list[Doc] = []
    problems: list[str] = []
    for path in paths:
        docs += _file_docs(path, problems)
    if problems:
        raise InputError("could not read the text data", problems[:20])
    return docs


def read_texts(paths: Sequence[Path], tokenizer: Any) -> list[str]:
    """Documents from the user's files, chat rows rendered with the model's chat template."""
    out, problems = [], []
    for doc in check_text_files(paths):
        if isinstance(doc, str):
            out.append(doc)
            continue
        try:
            out.append(tokenizer.apply_chat_template(doc, tokenize=False))
        except Exception as exc:  # jinja raises its own TemplateError types (e.g. raise_exception)
            problems.append(f"a 'messages' row does not fit the model's chat template: {exc}")
    if problems:
        raise InputError("could not read the text data", sorted(set(problems))[:20])
    return out


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
