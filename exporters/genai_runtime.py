"""Run an ONNX model folder (``genai_config.json`` beside ``model.onnx``) in onnxruntime-genai: logits,
a chat reply, measurement. Every call runs ``exporters.genai_worker`` in a child process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import require
from exporters.workers import run_worker, worker_logits

WORKER = "exporters.genai_worker"


def logits(folder: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    """Logits for every position of ``ids``: (len(ids), vocab) float32."""
    require("onnxruntime_genai", "genai")
    return worker_logits(WORKER, folder, ids, threads)


def chat(folder: Path, messages: list[dict[str, str]], max_tokens: int = 16) -> dict[str, Any]:
    """One greedy reply through the folder's chat template (tokenizer_config.json) and the generator."""
    require("onnxruntime_genai", "genai")
    req = {"op": "chat", "model": str(folder), "messages": messages, "max_tokens": max_tokens, "threads": 1}
    return run_worker(WORKER, req)


def measure(
    folder: Path, threads: int, prompt_tokens: int, vocab_size: int, gen_tokens: int = 32, repeats: int = 3
) -> dict[str, Any]:
    """Host figures through onnxruntime-genai's generator: TTFT (prompt + first token), decode ms/token."""
    require("onnxruntime_genai", "genai")
    req = {
        "op": "measure",
        "model": str(folder),
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "repeats": repeats,
        "vocab_size": vocab_size,
    }
    return run_worker(WORKER, req)
