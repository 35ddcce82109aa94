"""Distillation from the full-precision teacher (optionally through fake quantization: QAT).

``distill(student, teacher, train_ids, heldout_ids, DistillConfig) -> (student, DistillStats)``.

What makes it fast on a small CPU (a naive loop spends most of its time in the 49152-wide head,
the teacher's forward and the full-vocabulary KL; ``bench/distill_loop.py`` measures both):
  * the teacher runs once, up front: its top-k log-probabilities per position are cached, so no
    teacher forward happens inside the loop (and every epoch reuses them);
  * the student's head is evaluated only at the teacher's top-k token ids (a gather and a dot product
    per position instead of a (tokens x vocabulary) matmul), and the KL is taken on that support;
  * the tied embedding/head is frozen by default (``train="no_embedding"``): its gradient is the most
    expensive one, and the body is what pruning and quantization change;
  * bf16 autocast where the hardware has bf16 arithmetic (AVX512-BF16/AMX CPUs, CUDA GPUs), and the
    eager attention kernel while training (its backward is faster on CPU than the fused one).
Losses: forward KL (default), reverse KL, or skew KL (forward KL to ``alpha*p + (1-alpha)*q``), on the
top-k support with temperature; plus optional cross-entropy on the text (needs the full logits).
AdamW, linear warmup then cosine decay, gradient accumulation and clipping; stops at ``max_tokens`` or
``max_minutes``. Under ``torchrun`` the same loop runs data-parallel with DistributedDataParallel: every
global batch is split across the processes, gradients are averaged, and only rank 0 checkpoints.
Checkpoints go through a callback (stages never touch the filesystem); ``resume`` restarts from one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor import distributed
from compressor.checkpoint import check_student_state
from compressor.metrics import compare
from stages.kd_loss import StudentTopK, kd_loss, teacher_topk


class DistillConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    loss: Literal["forward_kl", "reverse_kl", "skew_kl"] = "forward_kl"
    temperature: Annotated[float, Field(gt=0)] = 1.0
    skew_alpha: Annotated[float, Field(ge=0, le=1)] = 0.1
    ce_weight: Annotated[float, Field(ge=0)] = 0.0
    top_k: Annotated[int, Field(ge=1)] = 64
    # "tail": KL over the top-k ids plus one bucket for the rest of the vocabulary (exact normalizer,
    # one extra head matmul); "renormalized": KL on the top-k support alone (cheapest, ignores the tail).
    support: Literal["tail", "renormalized"] = "tail"
    lr: Annotated[float, Field(gt=0)] = 5e-5
    # Learned quantizer scales (QAT): the relative step of each block's scale gain (Adam, so roughly
    # the per-step fraction a scale may move); fp16 stores scales to ~5e-4 relative.
    scale_lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 8  # global: split across torchrun processes
    seq_len: Annotated[int, Field(ge=8)] = 256
    grad_accum: Annotated[int, Field(ge=1)] = 1
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    max_tokens: Annotated[int | None, Field(ge=1)] = 65_536
    max_minutes: Annotated[float | None, Field(gt=0)] = None
    eval_every: Annotated[int, Field(ge=1)] = 20
    checkpoint_every: Annotated[int, Field(ge=1)] = 20
    train: Literal["all", "no_embedding"] = "no_embedding"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    # Keep the trainable state with the lowest held-out KL seen (the start included) and restore it at
    # the end: with a small training text, long runs overfit (QAT's held-out KL rose after ~40 steps of
    # 2,048 tokens on 35 k tokens of text, measured on SmolLM2).
    keep_best: bool = True


class DistillStats(BaseModel):
    tokens: int
    steps: int
    seconds: float
    train_seconds: float
    teacher_seconds: float
    tokens_per_s: float  # training tokens per second of the training loop (no evaluation, no teacher)
    device: str
    precision: str
    world_size: int
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]
    best_step: int | None = None  # set when the state of this step (lowest held-out KL) was restored


def _cpu_has_bf16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_device(cfg: DistillConfig) -> tuple[str, torch.dtype | None]:
    """(device type, autocast dtype or None for fp32) for this config on this machine."""
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU")
    if cfg.precision == "fp32":
        return device, None
    if cfg.precision == "bf16":
        return device, torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device == "cuda" else _cpu_has_bf16()
    return device, torch.bfloat16 if native else None


def _batches(ids: list[int], cfg: DistillConfig) -> list[torch.Tensor]:
    """Full batches of ``batch_size`` sequences (a partial last batch is dropped)."""
    n = len(ids) // cfg.seq_len // cfg.batch_size * cfg.batch_size
    seqs = torch.tensor(ids[: n * cfg.seq_len]).view(n, cfg.seq_len)
    return [seqs[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]


def _weight_param(module: Any) -> torch.nn.Parameter:
    """The float Parameter behind ``module.weight``, also when fake quantization parametrizes it."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def _trainable(student: Any, cfg: DistillConfig) -> list[torch.nn.Parameter]:
    from stages.learned_quant import frozen_code_weights

    frozen = frozen_code_weights(student)  # QAT with frozen codes: only scales, offsets, norms train
    if cfg.train == "no_embedding":
        frozen |= {
            id(_weight_param(student.get_input_embeddings())),
            id(_weight_param(student.get_output_embeddings())),
        }
    params = []
    for p in student.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            params.append(p)
    return params


def _groups(student: Any, params: list[torch.nn.Parameter], cfg: DistillConfig) -> list[dict[str, Any]]:
    """Optimizer groups: the weights and norms at ``lr``; learned quantizer scales at ``scale_lr``
    with no weight decay (a decayed scale would pull every code towards the grid's edge)."""
    from stages.learned_quant import scale_parameters

    scales = {id(p) for p in scale_parameters(student)}
    groups = [
        {"params": [p for p in params if id(p) not in scales], "lr_ratio": 1.0},
        {
            "params": [p for p in params if id(p) in scales],
            "lr_ratio": cfg.scale_lr / cfg.lr,
            "weight_decay": 0.0,
        },
    ]
    return [g for g in groups if g["params"]]


class _Best:
    """The trainable parameters at the lowest held-out KL so far (a copy, updated when beaten)."""

    def __init__(self, model: Any, kl: float) -> None:
        self.kl, self.step = kl, 0
        self.state = self._copy(model)

    @staticmethod
    def _copy(model: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def offer(self, model: Any, kl: float, step: int) -> None:
        if kl < self.kl:
            self.kl, self.step, self.state = kl, step, self._copy(model)

    def restore(self, model: Any) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in self.state.items():
                params[n].copy_(t)


def _lr_at(step: int, total: int, cfg: DistillConfig, time_frac: float = 0.0) -> float:
    """Linear warmup, then cosine decay over whichever budget (tokens or minutes) runs out first."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = max((step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps), time_frac)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _time_frac(start: float, cfg: DistillConfig) -> float:
    return (time.perf_counter() - start) / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0


@contextlib.contextmanager
def _training_attention(model: Any) -> Iterator[None]:
    """Use the eager attention kernel while training (faster backward on CPU), then restore."""
    config: Any = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def _eta(step: int, total: int, step_seconds: float, start: float, cfg: DistillConfig) -> float:
    eta = (total - step) * step_seconds
    if cfg.max_minutes:
        eta = min(eta, max(0.0, cfg.max_minutes * 60 - (time.perf_counter() - start)))
    return eta


def _time_budget(start: float, cfg: DistillConfig, world: int) -> float:
    """Fraction of ``max_minutes`` used (0 without one), taken by rank 0 and shared with every process,
    so all stop together and follow the same learning-rate schedule."""
    frac = torch.tensor([_time_frac(start, cfg)], dtype=torch.float64)
    if world > 1 and cfg.max_minutes:
        import torch.distributed as dist

        dist.broadcast(frac, src=0)
    return float(frac.item())


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
    device_type, amp = resolve_device(cfg)
    rank, world = distributed.setup(device_type)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {world} processes")
    device = distributed.local_device(device_type)
    local = cfg.batch_size // world
    batches = [b[rank * local : (rank + 1) * local].to(device) for b in _batches(train_ids, cfg)]
    if not batches:
        raise ValueError(f"need at least {cfg.batch_size} sequences of {cfg.seq_len} training tokens")
    student.to(device)
    teacher.to(device).eval()
    cache = teacher_topk(teacher, batches, cfg.top_k, cfg.temperature)
    teacher_seconds = time.perf_counter() - start
    before = compare(student, teacher, heldout_ids)
    params = _trainable(student, cfg)
    best = _Best(student, before["mean_kl"]) if cfg.keep_best else None
    frozen_head = None
    if not _weight_param(student.get_output_embeddings()).requires_grad:
        with torch.no_grad():  # computed once (fake-quantized too, under QAT), not every step
            frozen_head = student.get_output_embeddings().weight.detach().clone()
    net: nn.Module = StudentTopK(student, frozen_head, full=cfg.ce_weight > 0, tail=cfg.support == "tail")
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(_groups(student, params, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum  # global tokens per optimizer step
    total = max(1, (cfg.max_tokens or 10**12) // per_step)
    step, tokens, history = 0, 0, []
    if resume:
        check_student_state(resume, student)
        student.load_state_dict(resume["student"], strict=False)
        opt.load_state_dict(resume["optimizer"])
        step, tokens, history = resume["step"], resume["tokens"], resume["history"]
    train_seconds, first_step = 0.0, step
    student.train()
    with _training_attention(student):
        while step < total:
            time_frac = _time_budget(start, cfg, world)
            if time_frac >= 1.0:
                break
            t_step = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg, time_frac) * g["lr_ratio"]
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                i = (step * cfg.grad_accum + micro) % len(batches)
                t_logp, t_idx = cache[i]
                with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
                    s_topk, s_lse, logits = net(batches[i], t_idx)
                    loss = kd_loss(s_topk, t_logp, cfg, s_lse)
                    if logits is not None and cfg.ce_weight:
                        ce = F.cross_entropy(
                            logits[:, :-1].flatten(0, 1).float(), batches[i][:, 1:].flatten()
                        )
                        loss = loss + cfg.ce_weight * ce
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
            for g in opt.param_groups:  # weights and scales apart: one must not drown the other
                torch.nn.utils.clip_grad_norm_(g["params"], cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += per_step
            train_seconds += time.perf_counter() - t_step
            rate = (step - first_step) * per_step / train_seconds
            row = {
                "step": step,
                "total_steps": total,
                "tokens": tokens,
                "loss": loss_sum,
                "lr": opt.param_groups[0]["lr"],
                "tokens_per_s": rate,
                "eta_s": _eta(step, total, per_step / rate, start, cfg),
            }
            if step % cfg.eval_every == 0 or step == total:
                student.eval()
                ev = compare(student, teacher, heldout_ids)
                student.train()
                row.update(heldout_kl=ev["mean_kl"], heldout_top1=ev["top1_agreement"])
                if best is not None:
                    best.offer(student, ev["mean_kl"], step)
            history.append(row)
            if progress and rank == 0:
                progress(row)
            if checkpoint and rank == 0 and step % cfg.checkpoint_every == 0:
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
    restored = None
    if best is not None and best.kl < after["mean_kl"]:
        best.restore(student)
        restored = best.step
        after = compare(student, teacher, heldout_ids)
    student.to("cpu")
    teacher.to("cpu")
    seconds = time.perf_counter() - start
    stats = DistillStats(
        tokens=tokens,
        steps=step,
        seconds=seconds,
        train_seconds=train_seconds,
        teacher_seconds=teacher_seconds,
        tokens_per_s=(step - first_step) * per_step / train_seconds if train_seconds else 0.0,
        device=device,
        precision=str(amp).replace("torch.", "") if amp else "float32",
        world_size=world,
        before=before,
        after=after,
        history=history,
        best_step=restored,
    )
    return student, stats
