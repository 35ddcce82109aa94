"""One evaluation harness for every artifact: same tokens, same float reference, same statistics.

The reference is the float teacher in torch (fp32), run once over the held-out window; every
artifact's logits come from its own runtime (llama.cpp for .gguf, onnxruntime for .onnx) on the same
token ids. Per artifact: file size, mean KL(teacher || artifact) per token, top-1 agreement with the
teacher, and the artifact's perplexity on the text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from exporters.workers import compare_logits


def reference_logits(model: Any, ids: list[int]) -> np.ndarray:
    """The float model's logits for every position of ``ids``: (len(ids), vocab) float32."""
    import torch

    with torch.no_grad():
        return model.float()(torch.tensor([ids])).logits[0].float().numpy()


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean NLL of ids[1:] under logits[:-1]), float64 log-softmax."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(math.exp(nll.mean()))


def artifact_logits(path: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    if path.suffix == ".gguf":
        from exporters import llama_runtime

        return llama_runtime.logits(path, ids, threads)
    if path.suffix == ".onnx":
        from exporters import ort_runtime

        return ort_runtime.logits(path, ids, threads)
    raise ValueError(f"{path}: not a .gguf or .onnx file")


def file_bytes(path: Path) -> int:
    """The artifact's size on disk, external-data files of an ONNX model included."""
    size = path.stat().st_size
    if path.suffix == ".onnx":
        size += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}_data"))
        size += sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}.onnx.data"))
    return size


def score(logits: np.ndarray, reference: np.ndarray, ids: list[int]) -> dict[str, float]:
    """KL to the reference, top-1 agreement and perplexity, over the positions that predict a token."""
    stats = compare_logits(reference[:-1], logits[:-1])
    return {
        "mean_kl": stats["mean_kl"],
        "top1_agreement": stats["top1_agreement"],
        "perplexity": perplexity(logits, ids),
        "tokens": float(len(ids) - 1),
    }


def evaluate(path: Path, reference: np.ndarray, ids: list[int], threads: int = 2) -> dict[str, float]:
    """Size and quality of one artifact against the float reference on ``ids``."""
    out = score(artifact_logits(path, ids, threads), reference, ids)
    out["file_mib"] = file_bytes(path) / 2**20
    return out
