"""Run GGUF files in the real llama.cpp runtime: measure, get logits, decode greedily, validate.

Every call runs ``exporters.llama_worker`` in a child process (see its docstring for why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import require
from exporters.workers import check_logits, run_worker, worker_logits


def _run(req: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    require("llama_cpp", "llamacpp")
    return run_worker("exporters.llama_worker", req, timeout_s)


def measure(
    model: Path, threads: int, n_ctx: int, prompt_tokens: int, gen_tokens: int = 32, repeats: int = 3
) -> dict[str, Any]:
    """Host figures for ``model`` in llama.cpp: TTFT, decode ms/token (median), peak RSS."""
    return _run(
        {
            "op": "measure",
            "model": str(model),
            "threads": threads,
            "n_ctx": n_ctx,
            "prompt_tokens": prompt_tokens,
            "gen_tokens": gen_tokens,
            "repeats": repeats,
        }
    )


def logits(model: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    """Logits for every position of ``ids``: (len(ids), vocab) float32."""
    require("llama_cpp", "llamacpp")
    return worker_logits("exporters.llama_worker", model, ids, threads)


def greedy(model: Path, prompt_ids: list[int], n_new: int, threads: int = 2) -> list[int]:
    return _run(
        {"op": "greedy", "model": str(model), "prompt_ids": prompt_ids, "n_new": n_new, "threads": threads}
    )["ids"]


def quantize_file(src: Path, dst: Path, ftype: int, pure: bool = False, threads: int = 2) -> None:
    """llama.cpp's quantizer from ``src`` (F32/F16 GGUF) to ``dst`` as llama_ftype ``ftype``."""
    _run(
        {"op": "quantize", "src": str(src), "dst": str(dst), "ftype": ftype, "pure": pure, "threads": threads}
    )


def tokenize(model: Path, text: str) -> list[int]:
    return _run({"op": "tokenize", "model": str(model), "text": text})["ids"]


def validate(model: Path, torch_logits: np.ndarray, ids: list[int], max_kl: float, min_top1: float) -> dict:
    """Run ``model`` on ``ids`` and compare with the torch model's logits; raise once on mismatch."""
    return check_logits(model.name, "llama.cpp", torch_logits, logits(model, ids), max_kl, min_top1)


def chat(model: Path, messages: list[dict[str, str]], max_tokens: int = 16, greedy: bool = True) -> dict:
    """One reply through llama-cpp-python's chat API, with the chat template and sampling defaults read
    from the GGUF itself (see ``llama_worker._chat``)."""
    req = {
        "op": "chat",
        "model": str(model),
        "messages": messages,
        "max_tokens": max_tokens,
        "greedy": greedy,
    }
    return _run({**req, "threads": 1})
