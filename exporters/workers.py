"""Run a runtime worker module in a child process, and compare logits."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import InputError, ValidationError


def worker_logits(module: str, model: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    """Logits a runtime computes for every position of ``ids`` (arrays travel as .npy files)."""
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, out = Path(tmp) / "ids.npy", Path(tmp) / "logits.npy"
        np.save(ids_path, np.asarray(ids, dtype=np.int64))
        req = {"op": "logits", "model": str(model), "ids": str(ids_path), "out": str(out), "threads": threads}
        run_worker(module, req)
        return np.load(out)


def run_worker(module: str, req: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """``python -m module '<json>'``; a non-zero exit becomes an InputError naming the model."""
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(req)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        runtime = module.rsplit(".", 1)[-1].removesuffix("_worker")
        raise InputError(
            f"{runtime} could not run {req.get('model')} (exit {proc.returncode}): " + " | ".join(tail)
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def check_logits(
    name: str, runtime: str, reference: np.ndarray, got: np.ndarray, max_kl: float, min_top1: float
) -> dict[str, float]:
    """Compare a runtime's logits with the torch model's; raise one ValidationError listing problems."""
    stats = compare_logits(reference, got)
    problems = []
    if not stats["mean_kl"] <= max_kl:
        problems.append(f"mean KL to the torch model {stats['mean_kl']:.4g} > allowed {max_kl:g}")
    if not stats["top1_agreement"] >= min_top1:
        problems.append(f"top-1 agreement {stats['top1_agreement']:.3f} < required {min_top1:g}")
    if problems:
        raise ValidationError(
            f"{name} disagrees with the torch model in {runtime} "
            f"(max |logit diff| {stats['max_abs_diff']:.4g}, mean KL {stats['mean_kl']:.4g}, "
            f"top-1 {stats['top1_agreement']:.3f} over {len(reference)} tokens)",
            problems,
        )
    return stats
