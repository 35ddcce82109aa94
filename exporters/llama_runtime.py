"""Run GGUF files in the real llama.cpp runtime: measure, get logits, decode greedily, validate.

Every call runs ``exporters.llama_worker`` in a child process (see its docstring for why).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import InputError, ValidationError, require


def _run(req: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    require("llama_cpp", "llamacpp")
    proc = subprocess.run(
        [sys.executable, "-m", "exporters.llama_worker", json.dumps(req)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InputError(
            f"llama.cpp could not run {req.get('model')} (exit {proc.returncode}): " + " | ".join(tail)
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    """Logits llama.cpp computes for every position of ``ids``: (len(ids), vocab) float32."""
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, out = Path(tmp) / "ids.npy", Path(tmp) / "logits.npy"
        np.save(ids_path, np.asarray(ids, dtype=np.int64))
        _run({"op": "logits", "model": str(model), "ids": str(ids_path), "out": str(out), "threads": threads})
        return np.load(out)


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


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max |diff|, mean KL(reference || candidate) per token, and top-1 agreement."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = cand - cand.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "mean_kl": float(kl.mean()),
        "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).mean()),
    }


def validate(model: Path, torch_logits: np.ndarray, ids: list[int], max_kl: float, min_top1: float) -> dict:
    """Run ``model`` on ``ids`` and compare with the torch model's logits; raise once on mismatch."""
    got = logits(model, ids)
    stats = compare_logits(torch_logits, got)
    problems = []
    if not stats["mean_kl"] <= max_kl:
        problems.append(f"mean KL to the torch model {stats['mean_kl']:.4g} > allowed {max_kl:g}")
    if not stats["top1_agreement"] >= min_top1:
        problems.append(f"top-1 agreement {stats['top1_agreement']:.3f} < required {min_top1:g}")
    if problems:
        raise ValidationError(
            f"{model.name} disagrees with the torch model in llama.cpp "
            f"(max |logit diff| {stats['max_abs_diff']:.4g} over {len(ids)} tokens)",
            problems,
        )
    return stats
