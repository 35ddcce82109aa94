"""Run ONNX files in the real onnxruntime: logits, greedy decoding, measurement, validation, .ort form.

Every call runs ``exporters.ort_worker`` in a child process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import ValidationError, require
from exporters.workers import check_logits, run_worker, worker_logits


def _run(req: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    require("onnxruntime", "onnx")
    return run_worker("exporters.ort_worker", req, timeout_s)


def logits(model: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    """Logits for every position of ``ids``: (len(ids), vocab) float32."""
    require("onnxruntime", "onnx")
    return worker_logits("exporters.ort_worker", model, ids, threads)


def greedy(model: Path, prompt_ids: list[int], n_new: int, threads: int = 2) -> list[int]:
    return _run(
        {"op": "greedy", "model": str(model), "prompt_ids": prompt_ids, "n_new": n_new, "threads": threads}
    )["ids"]


def measure(
    model: Path, threads: int, prompt_tokens: int, vocab_size: int, gen_tokens: int = 32, repeats: int = 3
) -> dict[str, Any]:
    """Host figures in onnxruntime: TTFT for the prompt, decode ms/token with the KV cache, peak RSS."""
    req = {
        "op": "measure",
        "model": str(model),
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "repeats": repeats,
        "vocab_size": vocab_size,
    }
    return _run(req)


def validate(model: Path, torch_logits: np.ndarray, ids: list[int], max_kl: float, min_top1: float) -> dict:
    return check_logits(model.name, "onnxruntime", torch_logits, logits(model, ids), max_kl, min_top1)


def to_ort_format(model: Path) -> tuple[Path, Path]:
    """Convert to the ORT format onnxruntime-mobile loads; returns (model.ort, required operators config)."""
    require("onnxruntime", "onnx")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(model),
            "--optimization_style",
            "Fixed",
            "--output_dir",
            str(model.parent),
        ],
        capture_output=True,
        text=True,
    )
    ort_file = model.with_suffix(".ort")
    configs = sorted(model.parent.glob("*.required_operators.config"))
    if proc.returncode != 0 or not ort_file.is_file() or not configs:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ValidationError(f"conversion of {model.name} to the ORT format failed: {tail}")
    return ort_file, configs[0]
