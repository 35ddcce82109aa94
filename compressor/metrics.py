"""Quality of a student against its teacher on held-out token ids: perplexity, KL, top-1 agreement.

Evaluated in windows of ``window`` tokens (no cross-window context), float64 softmax statistics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(ids.to(device)).logits.double().cpu()  # (B, T, V)


@torch.no_grad()
def compare(student: Any, teacher: Any | None, ids: list[int], window: int = 256) -> dict[str, float]:
    """Perplexity of ``student`` on ``ids``; with a teacher also mean KL(teacher || student) per
    token and top-1 agreement. ``ids`` is split into windows of ``window`` tokens."""
    nll, kl, agree, n = 0.0, 0.0, 0.0, 0
    for start in range(0, max(len(ids) - 1, 1), window):
        chunk = torch.tensor([ids[start : start + window]])
        if chunk.shape[1] < 2:
            break
        s = _logits(student, chunk)[0]  # (T, V)
        nll += F.cross_entropy(s[:-1], chunk[0, 1:], reduction="sum").item()
        n_tok = chunk.shape[1] - 1
        if teacher is not None:
            t = _logits(teacher, chunk)[0]
            lt, ls = F.log_softmax(t, -1), F.log_softmax(s, -1)
            kl += (lt.exp() * (lt - ls)).sum(-1)[:-1].sum().item()
            agree += (t.argmax(-1) == s.argmax(-1))[:-1].sum().item()
        n += n_tok
    out = {"perplexity": math.exp(nll / max(n, 1)), "tokens": float(n)}
    if teacher is not None:
        out.update(mean_kl=kl / max(n, 1), top1_agreement=agree / max(n, 1))
    return out
