"""Text for calibration, distillation and evaluation: the user's files, a built-in sample, or text the
teacher writes.

Accepted files: plain text (``.txt`` or any name but ``.jsonl``, used as is), ``.jsonl`` with a
``"text"`` field per line, or chat ``.jsonl`` with ``"messages": [{"role", "content"}...]``
(rendered with the model's chat template).

With no files, the built-in sample ``compressor/data/general_text.txt`` (public-domain English: CIA World
Factbook essays, *Alice's Adventures in Wonderland*, Acts I-II of *As You Like It*; see
``compressor/data/NOTICE.txt``; ``bench/build_general_text.py`` rebuilds it), split into training and
held-out documents by content hash. On request the teacher instead samples answers to a built-in set of
varied prompts, many sequences at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from importlib import resources
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
    "Plan a three-day trip to Rome on a small budget.",
    "What should I look for when buying a used bicycle?",
    "Write a poem about the first snow of winter.",
    "How does compound interest work? Give an example.",
    "Explain photosynthesis in simple terms.",
    "What are the pros and cons of working from home?",
    "Tell me about the history of the printing press.",
    "How do I politely decline an invitation to a party?",
    "Describe how a bill becomes a law in a parliament.",
    "Write a dialogue between a customer and a baker.",
    "What is machine learning, in two paragraphs?",
    "Give me a weekly exercise plan for a beginner.",
    "Why do cats purr?",
    "Explain the rules of chess to a new player.",
    "Write a product description for a waterproof hiking jacket.",
    "How did the ancient Egyptians build the pyramids?",
    "What are some ways to reduce household energy use?",
    "Explain what a prime number is and list the first ten.",
    "Write a short speech for a friend's wedding.",
    "How do earthquakes happen?",
]
TEACHER_BATCH = 32  # sequences sampled together: a decode step costs little more for 32 rows than for 1
TEACHER_NEW_TOKENS = 128

GENERAL_TEXT = "general_text.txt"
GENERAL_TEXT_SOURCE = (
    "built-in general-text sample (CIA World Factbook essays, Carroll's Alice's Adventures in "
    "Wonderland, Shakespeare's As You Like It; public domain)"
)
GENERAL_HELDOUT_FRACTION = 0.1


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


def builtin_docs() -> list[str]:
    """The documents of the built-in general-text sample, in its fixed shuffled order."""
    text = resources.files("compressor.data").joinpath(GENERAL_TEXT).read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def is_heldout(doc: str, fraction: float = GENERAL_HELDOUT_FRACTION) -> bool:
    """A fixed split by content hash: a document is held out (or not) wherever it appears."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def builtin_split(heldout_fraction: float = GENERAL_HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of the built-in sample; disjoint, the same every run."""
    docs = builtin_docs()
    return (
        [d for d in docs if not is_heldout(d, heldout_fraction)],
        [d for d in docs if is_heldout(d, heldout_fraction)],
    )


def _render(tokenizer: Any, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        )
    return prompt + "\n"  # a base model without a chat template continues the prompt


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos])
    ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {i for i in ids if i is not None}


def _free_threads(most: int, foreign_cores: float) -> int:
    return max(1, min(most, math.floor((os.cpu_count() or 1) - foreign_cores + 0.5)))


class _ThreadGovernor:
    """Passed to ``generate`` as a stopping criterion that never stops: at the start and then every
    ``CHECK_S`` seconds it sets torch's threads (at most ``most``) to the cores other processes leave
    free. On a 2-core host with another busy process, 2 threads made each SmolLM2 decode step 10-15x
    slower (1.7-2 s: every parallel region waits at a barrier for the preempted thread; a step has
    hundreds) while 1 thread took 110-150 ms."""

    CHECK_S = 2.0

    def __init__(self, most: int) -> None:
        from exporters.hostload import LoadProbe, foreign_load

        self.most = most
        self.probe_type: Any = LoadProbe  # a fake in tests
        torch.set_num_threads(_free_threads(most, foreign_load(0.25)))
        self.probe: Any = LoadProbe().__enter__()  # others' CPU use while we generate

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        if time.perf_counter() - self.probe.t0 >= self.CHECK_S:
            self.probe.__exit__()
            threads = _free_threads(self.most, self.probe.foreign_cores)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            self.probe = self.probe_type().__enter__()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _sample_round(
    model: Any, tokenizer: Any, rendered: list[str], new_tokens: int, pad: int, stop: set[int], threads: int
) -> list[tuple[str, int]]:
    """One batched ``generate`` (KV cache on): (prompt + answer, its tokens) for each prompt."""
    from transformers import StoppingCriteriaList

    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in rendered]
    width = max(map(len, prompts))
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(  # (rows, width + up to new_tokens); rows that stop early are padded
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([_ThreadGovernor(threads)]),
    )
    docs = []
    for text, prompt, row in zip(rendered, prompts, out[:, width:].tolist(), strict=True):
        answer = next((row[:i] for i, t in enumerate(row) if t in stop), row)  # cut at the first EOS
        docs.append((text + tokenizer.decode(answer, skip_special_tokens=False), len(prompt) + len(answer)))
    return docs


@torch.no_grad()
def teacher_texts(
    model: Any,
    tokenizer: Any,
    n_tokens: int,
    seed: int = 0,
    batch: int = TEACHER_BATCH,
    new_tokens: int = TEACHER_NEW_TOKENS,
) -> list[str]:
    """Prompt + sampled answer documents from the teacher (temperature 0.8, top-p 0.95) until they hold
    about ``n_tokens`` tokens (as ``tokenize_docs`` counts them).

    Up to ``batch`` sequences are sampled together with the KV cache: on a CPU a decode step reads every
    weight once whatever the batch, so 32 rows cost little more than a few (SmolLM2-135M, 2 cores: ~90
    tokens/s at 6 rows, ~280 at 32). A round asks for a quarter more rows than the tokens still missing
    should need, since a row too many costs far less than another round. The global RNG is left as it was.
    """
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop, default=0)
    rendered_all = [_render(tokenizer, p) for p in PROMPTS]
    prompt_tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in rendered_all) / len(
        PROMPTS
    )
    docs: list[str] = []
    have, r = 0, 0
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            while have < n_tokens:
                torch.manual_seed(seed + r)
                per_doc = have / len(docs) if docs else prompt_tokens + new_tokens
                rows = max(1, min(batch, math.ceil(1.25 * (n_tokens - have) / per_doc)))
                rendered = [_render(tokenizer, PROMPTS[(len(docs) + i) % len(PROMPTS)]) for i in range(rows)]
                for text, tokens in _sample_round(model, tokenizer, rendered, new_tokens, pad, stop, threads):
                    docs.append(text)
                    have += tokens + 1  # + the EOS tokenize_docs appends
                r += 1
        finally:
            torch.set_num_threads(threads)
    return docs


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
