"""How close an encoder's outputs are to its teacher's, as an app would feel it (pure numpy).

* cosine: per sentence, between the student's and the teacher's embedding; reported as the mean and
  the 5th percentile (the worst sentences matter in search).
* retrieval agreement, recall@k: for every held-out sentence as a query against all the others, the
  fraction of the teacher's k nearest neighbours (cosine) that are among the student's k nearest;
  recall@1 is then "the same best match".
* classifiers: label agreement (argmax equal) and the largest |logit difference|.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _topk(e: np.ndarray, k: int) -> np.ndarray:
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argpartition(-sim, kth=k - 1, axis=1)[:, :k]


def recall_at(teacher: np.ndarray, student: np.ndarray, k: int) -> float:
    t, s = _topk(_unit(teacher), k), _topk(_unit(student), k)
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(t, s, strict=True)]
    return float(np.mean(hits) / k)


def embedding_agreement(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    cos = np.sum(_unit(teacher) * _unit(student), axis=-1)
    n = len(cos)
    out = {
        "sentences": n,
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_p5": round(float(np.percentile(cos, 5)), 5),
        "cosine_min": round(float(cos.min()), 5),
    }
    for k in (1, 10):
        if n > k:
            out[f"recall@{k}"] = round(recall_at(teacher, student, k), 4)
    return out


def label_agreement(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    return {
        "sentences": len(teacher),
        "label_agreement": round(float(np.mean(teacher.argmax(-1) == student.argmax(-1))), 4),
        "max_abs_logit_diff": round(float(np.abs(teacher - student).max()), 4),
    }
