"""The distillation loss and the student's side of it (used by ``stages.distill``).

The teacher's top-k log-probabilities are cached once (``teacher_topk``); the student's logits are
taken only at those ids (``StudentTopK``), with its exact full-vocabulary normalizer computed chunk by
chunk (``HeadLogSumExp``); ``kd_loss`` is the KL divergence on the k ids plus one bucket for the rest
of the vocabulary (or on the k ids alone, renormalized).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from stages.distill import DistillConfig


@torch.no_grad()
def teacher_topk(teacher: Any, batches: list[torch.Tensor], k: int, temperature: float) -> list[tuple]:
    """Per batch: (full-vocabulary log-probs at temperature of the top-k ids (B, T, k), the ids), fp32."""
    out = []
    for b in batches:
        logp = F.log_softmax(teacher(b).logits.float() / temperature, dim=-1)
        vals, idx = logp.topk(k, dim=-1)
        out.append((vals, idx))
    return out


def _with_tail(logp: torch.Tensor) -> torch.Tensor:
    """Append the log of the remaining probability mass as a (k+1)-th bucket."""
    rest = (-torch.expm1(logp.logsumexp(-1, keepdim=True))).clamp_min(1e-8)  # 1 - sum(p), stable
    return torch.cat([logp, rest.log()], dim=-1)


def kd_loss(
    s_topk: torch.Tensor, t_logp: torch.Tensor, cfg: DistillConfig, s_lse: torch.Tensor | None = None
) -> torch.Tensor:
    """Distillation loss per token, on the teacher's top-k ids (+ the rest of the vocabulary as one
    bucket when the student's full log-normalizer ``s_lse`` (B, T) is given).

    ``s_topk``: the student's logits at the teacher's top-k ids (B, T, k); ``t_logp``: the teacher's
    full-vocabulary log-probs there (B, T, k)."""
    s = s_topk.float() / cfg.temperature
    if s_lse is None:  # the top-k support alone, both distributions renormalized on it
        s_logq = s - s.logsumexp(-1, keepdim=True)
        t_logp = t_logp - t_logp.logsumexp(-1, keepdim=True)
    else:
        s_logq = _with_tail(s - s_lse.float().unsqueeze(-1) / cfg.temperature)
        t_logp = _with_tail(t_logp)
    p = t_logp.exp()
    if cfg.loss == "forward_kl":
        kl = (p * (t_logp - s_logq)).sum(-1)
    elif cfg.loss == "reverse_kl":
        q = s_logq.exp()
        kl = (q * (s_logq - t_logp)).sum(-1)
    else:  # skew: KL(p || a p + (1 - a) q)
        mix = (cfg.skew_alpha * p + (1 - cfg.skew_alpha) * s_logq.exp()).clamp_min(1e-12).log()
        kl = (p * (t_logp - mix)).sum(-1)
    return kl.mean() * cfg.temperature**2


def _plain_head(student: Any) -> bool:
    """True when logits are exactly ``hidden @ head.T`` (no bias, scaling or soft-capping)."""
    head, cfg = student.get_output_embeddings(), student.config
    extra = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
    return (
        isinstance(head, nn.Linear)
        and head.bias is None
        and hasattr(student, "get_decoder")
        and not any(getattr(cfg, a, None) for a in extra)
    )


class HeadLogSumExp(torch.autograd.Function):
    """logsumexp over the vocabulary of ``hidden @ head.T`` for a frozen head, chunk by chunk.

    The (tokens x vocabulary) logits are never kept: the backward recomputes each chunk and returns
    ``softmax(chunk) @ head`` scaled by the incoming gradient. Matmuls run in ``dtype`` (bf16 under
    autocast), softmax statistics in fp32."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, head: torch.Tensor, dtype: torch.dtype, chunk: int) -> Any:
        h, w = hidden.to(dtype), head.to(dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax statistics in at least fp32
        with torch.autocast(hidden.device.type, enabled=False):
            lse = torch.cat([(c @ w.T).to(acc).logsumexp(-1) for c in h.split(chunk)])
        ctx.save_for_backward(h, w, lse)
        ctx.chunk, ctx.out_dtype = chunk, hidden.dtype
        return lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        h, w, lse = ctx.saved_tensors
        parts = []
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], ctx.chunk):
                end = start + ctx.chunk
                p = (h[start:end] @ w.T).to(lse.dtype).sub_(lse[start:end, None]).exp_()
                p.mul_(grad[start:end, None])
                parts.append(p.to(w.dtype) @ w)
        return torch.cat(parts).to(ctx.out_dtype), None, None, None


class StudentTopK(nn.Module):
    """The student's logits at given token ids, and what else the loss needs.

    ``forward(ids, idx) -> (logits at idx (B, T, k), full-vocabulary logsumexp (B, T) or None, full
    logits or None)``. With a plain head the (B, T, k) logits are dot products with the gathered head
    rows, and the logsumexp (``tail=True``) is computed chunk by chunk without keeping the logits;
    otherwise (or when the full logits are asked for, e.g. for cross-entropy) the whole head runs."""

    def __init__(self, student: Any, frozen_head: torch.Tensor | None, full: bool, tail: bool) -> None:
        super().__init__()
        self.student = student
        self.frozen_head = frozen_head  # a plain tensor: not a parameter of this module
        self.full = full or not _plain_head(student)
        self.tail = tail

    def forward(self, ids: torch.Tensor, idx: torch.Tensor) -> tuple[Any, Any, Any]:
        if self.full:
            logits = self.student(ids).logits
            lse = logits.float().logsumexp(-1) if self.tail else None
            return torch.gather(logits, -1, idx), lse, logits
        hidden = self.student.get_decoder()(input_ids=ids).last_hidden_state  # (B, T, H)
        head = (
            self.frozen_head if self.frozen_head is not None else self.student.get_output_embeddings().weight
        )
        head = head.to(hidden.dtype)
        s_topk = torch.einsum("bth,btkh->btk", hidden, head[idx])
        lse = None
        if self.tail:
            rows = hidden.reshape(-1, hidden.shape[-1])
            if self.frozen_head is not None:
                dtype = (
                    torch.get_autocast_dtype(rows.device.type)
                    if torch.is_autocast_enabled(rows.device.type)
                    else rows.dtype
                )
                lse = HeadLogSumExp.apply(rows, self.frozen_head, dtype, 256)
            else:  # a trained head needs its own gradient: plain autograd
                lse = torch.cat([(c @ head.T).float().logsumexp(-1) for c in rows.split(512)])
            lse = lse.view(hidden.shape[:-1])
        return s_topk, lse, None
