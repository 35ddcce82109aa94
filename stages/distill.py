"""Distillation from the full-precision teacher (optionally through fake quantization: QAT).

``distill(student, teacher, train_ids, heldout_ids, DistillConfig) -> (student, DistillStats)``.

What makes it cheap on a small CPU (the naive loop spends most of its time in the 49152-wide head):
  * the teacher runs once, up front: its top-k logits per position are cached and reused every
    epoch, so no teacher forward happens inside the loop;
  * the KL is taken over the teacher's top-k support (renormalized), not the full vocabulary;
  * the tied embedding/head is frozen by default (``train="no_embedding"``): its gradient is the most
    expensive one and pruning/quantizing the body is what needs healing.
Losses: forward KL (default), reverse KL, or skew KL (forward KL to ``alpha*p + (1-alpha)*q``), all on
the top-k support, with temperature; plus optional cross-entropy on the text. AdamW, linear warmup then
cosine decay, gradient accumulation and clipping; stops at ``max_tokens`` or ``max_minutes``.
Checkpoints go through a callback (stages never touch the filesystem); ``resume`` restarts from one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from compressor.metrics import compare


class DistillConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    loss: Literal["forward_kl", "reverse_kl", "skew_kl"] = "forward_kl"
    temperature: Annotated[float, Field(gt=0)] = 1.0
    skew_alpha: Annotated[float, Field(ge=0, le=1)] = 0.1
    ce_weight: Annotated[float, Field(ge=0)] = 0.0
    top_k: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 8
    seq_len: Annotated[int, Field(ge=8)] = 256
    grad_accum: Annotated[int, Field(ge=1)] = 1
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    max_tokens: Annotated[int | None, Field(ge=1)] = 65_536
    max_minutes: Annotated[float | None, Field(gt=0)] = None
    eval_every: Annotated[int, Field(ge=1)] = 20
    checkpoint_every: Annotated[int, Field(ge=1)] = 20
    train: Literal["all", "no_embedding"] = "no_embedding"
    seed: int = 0


class DistillStats(BaseModel):
    tokens: int
    steps: int
    seconds: float
    tokens_per_s: float
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]


@torch.no_grad()
def teacher_topk(teacher: Any, batches: list[torch.Tensor], k: int, temperature: float) -> list[tuple]:
    """Per batch: (top-k log-probs at temperature (B, T, k), their token ids (B, T, k))."""
    out = []
    for b in batches:
        logp = F.log_softmax(teacher(b).logits.float() / temperature, dim=-1)
        vals, idx = logp.topk(k, dim=-1)
        out.append((vals - vals.logsumexp(-1, keepdim=True), idx))  # renormalized on the support
    return out


def kd_loss(
    student_logits: torch.Tensor, t_logp: torch.Tensor, t_idx: torch.Tensor, cfg: DistillConfig
) -> torch.Tensor:
    """Distillation loss per token on the teacher's top-k support; shapes (B, T, V), (B, T, k)."""
    s = torch.gather(student_logits.float() / cfg.temperature, -1, t_idx)
    s_logq = s - s.logsumexp(-1, keepdim=True)  # (B, T, k)
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


def _batches(ids: list[int], cfg: DistillConfig) -> list[torch.Tensor]:
    n = len(ids) // cfg.seq_len
    seqs = torch.tensor(ids[: n * cfg.seq_len]).view(n, cfg.seq_len)
    return [seqs[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]


def _weight_param(module: Any) -> torch.nn.Parameter:
    """The float Parameter behind ``module.weight``, also when fake quantization parametrizes it."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def _trainable(student: Any, cfg: DistillConfig) -> list[torch.nn.Parameter]:
    frozen = set()
    if cfg.train == "no_embedding":
        frozen = {
            id(_weight_param(student.get_input_embeddings())),
            id(_weight_param(student.get_output_embeddings())),
        }
    params = []
    for p in student.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            params.append(p)
    return params


def _lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def distill(
    student: Any,
    teacher: Any,
    train_ids: list[int],
    heldout_ids: list[int],
    cfg: DistillConfig,
    progress: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[Any, DistillStats]:
    """Train ``student`` towards ``teacher`` on ``train_ids``; evaluate on ``heldout_ids``."""
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    batches = _batches(train_ids, cfg)
    if not batches:
        raise ValueError(f"need at least {cfg.seq_len} training tokens")
    cache = teacher_topk(teacher, batches, cfg.top_k, cfg.temperature)
    teacher.eval()
    before = compare(student, teacher, heldout_ids)
    params = _trainable(student, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    total = max(1, (cfg.max_tokens or 10**12) // per_step)
    step, tokens, history = 0, 0, []
    if resume:
        student.load_state_dict(resume["student"], strict=False)
        opt.load_state_dict(resume["optimizer"])
        step, tokens, history = resume["step"], resume["tokens"], resume["history"]
    student.train()
    while step < total:
        if cfg.max_minutes and time.perf_counter() - start > cfg.max_minutes * 60:
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            i = (step * cfg.grad_accum + micro) % len(batches)
            logits = student(batches[i]).logits
            t_logp, t_idx = cache[i]
            loss = kd_loss(logits, t_logp, t_idx, cfg)
            if cfg.ce_weight:
                loss = loss + cfg.ce_weight * F.cross_entropy(
                    logits[:, :-1].flatten(0, 1), batches[i][:, 1:].flatten()
                )
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
            tokens += batches[i].numel()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        row = {
            "step": step,
            "tokens": tokens,
            "loss": loss_sum,
            "lr": opt.param_groups[0]["lr"],
            "tokens_per_s": tokens / (time.perf_counter() - start),
        }
        if step % cfg.eval_every == 0 or step == total:
            student.eval()
            ev = compare(student, teacher, heldout_ids)
            student.train()
            row.update(heldout_kl=ev["mean_kl"], heldout_top1=ev["top1_agreement"])
        history.append(row)
        if progress:
            progress(row)
        if checkpoint and step % cfg.checkpoint_every == 0:
            trainable = {n for n, p in student.named_parameters() if p.requires_grad}
            state = {k: v for k, v in student.state_dict().items() if k in trainable}
            snapshot = {
                "student": state,
                "optimizer": opt.state_dict(),
                "step": step,
                "tokens": tokens,
                "history": history,
            }
            checkpoint(copy.deepcopy(snapshot))  # the live tensors keep training
    student.eval()
    after = compare(student, teacher, heldout_ids)
    seconds = time.perf_counter() - start
    stats = DistillStats(
        tokens=tokens,
        steps=step,
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        before=before,
        after=after,
        history=history,
    )
    return student, stats
