"""Distillation of BERT-family encoders with the three kinds of knowledge, each selectable and mixable.

* **Response** (what the deployed model returns): ``embedding`` = 1 - cosine + relative MSE between
  the student's and the teacher's pooled embeddings; ``logits`` = KL between temperature-softened
  class distributions, times T^2 (Hinton et al.), for classifiers.
* **Feature**: ``hidden`` = relative MSE between the hidden states of mapped layers (student layer j
  <-> teacher layer round(j * T / S), the uniform map TinyBERT uses; the embedding-layer output too),
  through a learned linear projection when the widths differ (TinyBERT's W_h), else identity.
* **Relation**: ``attention`` = MiniLM's self-attention transfer on the last layer: the attention
  distributions softmax(Q K^T / sqrt(d)) and the value relations softmax(V V^T / sqrt(d)), compared by
  KL. Queries, keys and values are split into the same number of *relation heads* for both models
  (MiniLMv2), so a student with fewer heads still matches. ``similarity`` = MSE between the batch's
  sample-to-sample cosine matrices of student and teacher embeddings (relational KD, Park et al.).

QAT: the student can train through the exact fake quantizers of the target scheme
(``stages.fake_quant``), the same ones the decoders use, so the exported weights are the trained ones.
Q, K and V are read with forward hooks on the family's tensor-table modules, so no family's attention
code is restated here.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compressor.arch import Slot
from compressor.encoder import EncoderModel, Task, max_length, tokenize
from compressor.quant import QuantScheme


class Knowledge(StrEnum):
    EMBEDDING = "embedding"  # response
    LOGITS = "logits"  # response (classifiers)
    HIDDEN = "hidden"  # feature
    ATTENTION = "attention"  # relation: attention distributions + value relations
    SIMILARITY = "similarity"  # relation: sample-to-sample similarity in a batch


KIND_OF = {
    Knowledge.EMBEDDING: "response",
    Knowledge.LOGITS: "response",
    Knowledge.HIDDEN: "feature",
    Knowledge.ATTENTION: "relation",
    Knowledge.SIMILARITY: "relation",
}


def default_losses(task: Task) -> dict[Knowledge, float]:
    """Response + feature + relation (attention). Batch similarity is left out of the default: on
    MiniLM-L6 -> L3 it lowered held-out cosine (0.900 with the embedding loss vs 0.914 without;
    docs/benchmarks.md); ask for it with ``--knowledge``."""
    if task is Task.CLASSIFICATION:
        return {Knowledge.LOGITS: 1.0, Knowledge.HIDDEN: 1.0, Knowledge.ATTENTION: 1.0}
    return {Knowledge.EMBEDDING: 1.0, Knowledge.HIDDEN: 1.0, Knowledge.ATTENTION: 1.0}


def parse_losses(text: str | None, task: Task) -> dict[Knowledge, float]:
    """``embedding,hidden=0.5,attention`` -> weights; None/"" = the task's default mix."""
    from compressor.errors import ConfigError

    if not text:
        return default_losses(task)
    out: dict[Knowledge, float] = {}
    problems = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, raw = part.partition("=")
        try:
            kind = Knowledge(name.strip())
        except ValueError:
            problems.append(f"'{name}': unknown knowledge (use {', '.join(k.value for k in Knowledge)})")
            continue
        try:
            weight = float(raw) if raw else 1.0
        except ValueError:
            problems.append(f"'{part}': '{raw}' is not a number")
            continue
        if not math.isfinite(weight) or weight <= 0:
            problems.append(f"'{part}': a weight must be a positive number")
        out[kind] = weight
    if task is Task.EMBEDDING and Knowledge.LOGITS in out:
        problems.append("'logits' needs a classifier; this model returns embeddings (use 'embedding')")
    if task is Task.CLASSIFICATION and Knowledge.EMBEDDING in out:
        problems.append("'embedding' needs an embedding model; this one is a classifier (use 'logits')")
    if problems:
        raise ConfigError(f"invalid --encoder-losses '{text}'", problems)
    return out


class EncoderDistillConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    losses: dict[Knowledge, float]
    max_tokens: int | None = None  # real (unpadded) tokens to train on; None: max_minutes alone bounds it
    max_minutes: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=32, gt=1)
    max_len: int = Field(default=128, gt=0)
    lr: float = Field(default=6e-4, gt=0)
    warmup_steps: int = 50
    temperature: float = Field(default=2.0, gt=0)
    eval_every: int = 200
    eval_sentences: int = 256
    keep_best: bool = True  # end on the student with the best held-out agreement seen (else the last)
    cache_teacher: bool = True  # keep the teacher's targets per training batch (~1.5x the steps)
    seed: int = 0


class _QKV:
    """Forward hooks keeping the last layer's query, key and value outputs."""

    def __init__(self, model: EncoderModel) -> None:
        layer = model.layers[-1]
        self.out: dict[Slot, torch.Tensor] = {}
        self.hooks = [
            layer.get_submodule(model.spec.module_path(s)).register_forward_hook(self._keep(s))
            for s in (Slot.Q, Slot.K, Slot.V)
        ]

    def _keep(self, slot: Slot) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, output: torch.Tensor) -> None:
            self.out[slot] = output

        return hook

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def relation_heads(teacher_width: int, student_width: int, student_heads: int) -> int:
    """Relation heads for MiniLM transfer: the student's head count if it divides both widths."""
    for r in range(student_heads, 0, -1):
        if teacher_width % r == 0 and student_width % r == 0:
            return r
    return 1


def _relation(x: torch.Tensor, y: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(x_r y_r^T / sqrt(d_r)) per relation head: (b, heads, s, s), padded keys masked."""
    b, s, w = x.shape
    d = w // heads
    xr = x.view(b, s, heads, d).transpose(1, 2)
    yr = y.view(b, s, heads, d).transpose(1, 2)
    scores = xr @ yr.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
    return F.log_softmax(scores, dim=-1)


def _relation_kl(t: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over key positions, averaged over real query rows."""
    kl = (t.exp() * (t - s)).sum(-1)  # (b, heads, s)
    rows = mask[:, None, :].expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp(min=1)


def _rel_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:
        m = mask.unsqueeze(-1).to(s.dtype)
        return ((s - t) ** 2 * m).sum() / ((t**2) * m).sum().clamp(min=1e-12)
    return ((s - t) ** 2).sum() / (t**2).sum().clamp(min=1e-12)


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index); index 0 is the embedding output."""
    return [(0, 0)] + [(j, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


class EncoderKD(nn.Module):
    """The loss: a weighted sum of the selected kinds, with the feature projections it learns."""

    def __init__(self, teacher: EncoderModel, student: EncoderModel, cfg: EncoderDistillConfig) -> None:
        super().__init__()
        self.teacher, self.cfg = teacher, cfg
        self.student_ref = [student]  # not a submodule: its parameters are the optimizer's other group
        t_layers, s_layers = len(teacher.layers), len(student.layers)
        self.map = layer_map(s_layers, t_layers)
        dt, ds = teacher.config.hidden_size, student.config.hidden_size
        self.proj = nn.ModuleList([nn.Linear(ds, dt) if ds != dt else nn.Identity() for _ in self.map])
        t_q = teacher.layers[-1].get_submodule(teacher.spec.module_path(Slot.Q)).out_features
        s_q = student.layers[-1].get_submodule(student.spec.module_path(Slot.Q)).out_features
        s_heads = s_q // int(
            student.layers[-1]
            .get_submodule(student.spec.module_path(Slot.Q).rsplit(".", 1)[0])
            .attention_head_size
        )
        self.rel_heads = relation_heads(t_q, s_q, s_heads)
        self.cache: dict[int, Any] = {}
        self.keep: list[Any] = []
        self.cache_batches = False  # distill_encoder turns it on for its fixed training batches

    @torch.no_grad()
    def teacher_targets(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[Slot, torch.Tensor]]:
        """The teacher's output, mapped hidden states and last-layer Q/K/V for ``batch``; computed once
        per batch and kept (training cycles over the same batches: the teacher is ~40% of a step)."""
        key = id(batch)
        if key in self.cache:
            return self.cache[key]
        hooks = _QKV(self.teacher) if Knowledge.ATTENTION in self.cfg.losses else None
        try:
            last, states = self.teacher.token_states(**batch)
        finally:
            if hooks:
                hooks.remove()
        out = self.teacher.head_output(last, batch["attention_mask"])
        mapped = {j: states[j] for _, j in self.map} if Knowledge.HIDDEN in self.cfg.losses else {}
        result = (out, mapped, dict(hooks.out) if hooks else {})
        if self.cache_batches:
            self.cache[key] = result
            self.keep.append(batch)  # ids stay valid while the batch lives
        return result

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        student = self.student_ref[0]
        w = self.cfg.losses
        mask = batch["attention_mask"]
        want_rel = Knowledge.ATTENTION in w
        t_out, t_states, t_qkv = self.teacher_targets(batch)
        s_hooks = _QKV(student) if want_rel else None
        try:
            s_last, s_states = student.token_states(**batch)
        finally:
            if s_hooks:
                s_hooks.remove()
        s_out = student.head_output(s_last, mask)
        parts: dict[Knowledge, torch.Tensor] = {}
        if Knowledge.EMBEDDING in w:
            cos = F.cosine_similarity(s_out, t_out, dim=-1)
            parts[Knowledge.EMBEDDING] = (1 - cos).mean() + _rel_mse(s_out, t_out)
        if Knowledge.LOGITS in w:
            T = self.cfg.temperature
            parts[Knowledge.LOGITS] = F.kl_div(
                F.log_softmax(s_out / T, -1),
                F.log_softmax(t_out / T, -1),
                log_target=True,
                reduction="batchmean",
            ) * (T * T)
        if Knowledge.HIDDEN in w:
            losses = [
                _rel_mse(p(s_states[i]), t_states[j], mask)
                for p, (i, j) in zip(self.proj, self.map, strict=True)
            ]
            parts[Knowledge.HIDDEN] = torch.stack(losses).mean()
        if want_rel and t_qkv and s_hooks:
            r, tq, sq = self.rel_heads, t_qkv, s_hooks.out
            kls = [
                _relation_kl(_relation(tq[a], tq[b], r, mask), _relation(sq[a], sq[b], r, mask), mask)
                for a, b in ((Slot.Q, Slot.K), (Slot.V, Slot.V))
            ]
            parts[Knowledge.ATTENTION] = kls[0] + kls[1]
        if Knowledge.SIMILARITY in w:
            sn, tn = F.normalize(s_out, dim=-1), F.normalize(t_out, dim=-1)
            parts[Knowledge.SIMILARITY] = F.mse_loss(sn @ sn.T, tn @ tn.T) * sn.shape[0]
        total = sum(w[k] * v for k, v in parts.items())
        assert isinstance(total, torch.Tensor)
        return total, {k.value: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def agreement(teacher_out: torch.Tensor, student_out: torch.Tensor) -> float:
    """Mean cosine (embeddings) between two output matrices."""
    return float(F.cosine_similarity(student_out, teacher_out, dim=-1).mean())


def _batches(tokenizer: Any, texts: Sequence[str], size: int, max_len: int, rng: random.Random) -> list[dict]:
    """Length-bucketed batches (little padding), in random order."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    groups = [g for g in groups if len(g) > 1]
    rng.shuffle(groups)
    return [tokenize(tokenizer, [texts[i] for i in g], max_len) for g in groups]


def distill_encoder(
    teacher: EncoderModel,
    student: EncoderModel,
    tokenizer: Any,
    train: Sequence[str],
    heldout: Sequence[str],
    cfg: EncoderDistillConfig,
    qat: QuantScheme | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``student`` (in place) towards ``teacher``; returns the statistics for the report.
    The student with the best held-out agreement seen at an evaluation is the one kept."""
    from compressor.encoder import encode
    from stages.fake_quant import apply_fake_quant, remove_fake_quant

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    teacher.eval()
    max_len = min(cfg.max_len, max_length(student, tokenizer))
    evals = list(heldout[: cfg.eval_sentences])
    t_eval = encode(teacher, tokenizer, evals, max_len=max_len)
    if qat is not None:
        apply_fake_quant(student, qat)
    kd = EncoderKD(teacher, student, cfg)
    params = [p for p in student.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": params},
        {"params": list(kd.proj.parameters()), "lr": cfg.lr * 5},
    ]
    opt = torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        weight_decay=0.01,
    )
    data = _batches(tokenizer, train, cfg.batch_size, max_len, rng)
    kd.cache_batches = cfg.cache_teacher
    start = time.perf_counter()
    budget = cfg.max_minutes * 60
    per_batch = sum(int(b["attention_mask"].sum()) for b in data) / len(data)
    total_by_tokens = math.ceil(cfg.max_tokens / per_batch) if cfg.max_tokens else None
    history: list[dict[str, float]] = []

    def evaluate(step: int) -> float:
        student.eval()
        score = agreement(t_eval, encode(student, tokenizer, evals, max_len=max_len))
        student.train()
        history.append({"step": step, "heldout_cosine": score, "seconds": time.perf_counter() - start})
        return score

    best_score, best_state, best_step = evaluate(0), copy.deepcopy(student.state_dict()), 0
    first_score = best_score
    student.train()
    step, tokens, seconds_per_step = 0, 0, 0.0
    last: dict[str, float] = {}
    while True:
        elapsed = time.perf_counter() - start
        by_time = step + max(1, int((budget - elapsed) / seconds_per_step)) if seconds_per_step else 10**9
        est_total = min(by_time, total_by_tokens or by_time)
        if step >= est_total or (step and elapsed + seconds_per_step > budget):
            break
        if step and step % len(data) == 0:
            rng.shuffle(data)
        batch = data[step % len(data)]
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        decay = max(0.05, 1 - step / max(1, est_total)) if est_total < 10**9 else 1.0
        for i, g in enumerate(opt.param_groups):
            g["lr"] = cfg.lr * (5 if i else 1) * warm * decay
        loss, parts = kd(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        tokens += int(batch["attention_mask"].sum())
        seconds_per_step = (time.perf_counter() - start) / step
        last = {"step": step, "loss": float(loss.detach()), **parts}
        if step % cfg.eval_every == 0:
            score = evaluate(step)
            last["heldout_cosine"] = score
            if score > best_score:
                best_score, best_state, best_step = score, copy.deepcopy(student.state_dict()), step
        if on_step:
            eta = max(0.0, (est_total - step) * seconds_per_step)
            on_step({**last, "total_steps": float(est_total), "eta_s": eta})
    final = evaluate(step)
    if final > best_score or not cfg.keep_best:
        best_score, best_state, best_step = final, copy.deepcopy(student.state_dict()), step
    student.load_state_dict(best_state)
    if qat is not None:
        remove_fake_quant(student)
    student.eval()
    return {
        "losses": {k.value: v for k, v in cfg.losses.items()},
        "knowledge": sorted({KIND_OF[k] for k in cfg.losses}),
        "steps": step,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "sentences": len(train),
        "batch_size": cfg.batch_size,
        "relation_heads": kd.rel_heads,
        "layer_map": kd.map,
        "heldout_cosine_before": first_score,
        "heldout_cosine": best_score,
        "best_step": best_step,
        "qat": qat.name if qat is not None else None,
        "last": last,
        "history": history,
    }
