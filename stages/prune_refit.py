"""Refit a pruned decoder's output projections (the O and DOWN slots, found through the family's
tensor table) by least squares. Removing heads or MLP channels deletes columns of ``o_proj``/
``down_proj``; the columns that stay were trained to work *with* the ones that went. Solving for them
again on calibration activations (what the student's projection now sees in, what the teacher's wrote
out) puts back much of what the removed ones carried, without any gradient step.

One pass, GPTQ-style: one forward of student and teacher, stopped before the last layer, catches the
inputs of layer 0 and each layer's keyword arguments (its own attention mask: sliding-window and
full-attention layers differ; position embeddings, cache position); then each layer runs directly on
cached hidden states, in order, so layer i's problem sees the student's states after layers < i were
refit (each layer runs six times, not L full forwards).

Choices, measured on the tiny test models (2 and 4 layers, held-out KL to the teacher; the figures
for SmolLM2 come from ``bench/prune_refit.py``):

* **Target: the teacher's residual stream** (``target="residual"``: the teacher's residual after the
  block minus the student's before it, so the fit also absorbs drift from earlier layers and the
  contribution of dropped layers), not the teacher's projection output (``"projection"``). On the tiny
  test models the two were within 1.5%; on SmolLM2 cut to 6 heads / 3 KV / MLP 1024 the residual target
  won clearly (held-out KL 3.05 unrefit -> 1.17 projection vs 1.00 residual at damp 0.3, 2,048 tokens
  of teacher text; 3.80 -> 0.84 residual on license text calibrated with 16 k license tokens).
  With sandwich norms (``spec.sandwich_norms``: a norm on the block's output before the residual add)
  the residual is not linear in the projection: the projection target is used and the report says so.
* **Ridge towards the pruned weights**, not towards zero: ``W = argmin ||X W^T - Y||^2 +
  lam ||W - W0||^2`` with ``lam = damp * mean diag(X^T X)`` (the GPTQ convention). Directions the
  calibration text never excites keep their trained weights instead of collapsing to 0, and a layer
  that lost nothing and sees the teacher's inputs is an exact fixed point (W0 solves it for any lam).
  Held-out KL was the same either way (within 1%); the fixed point decided it.
* **damp = 0.3**: on SmolLM2 (residual target, 2,048 teacher tokens) 0.03/0.1/0.3/1/3 gave
  1.20/1.05/1.00/1.14/1.14; with 16 k license tokens 0.1 and 0.3 were within 4%. On the tiny models 0.1
  was within 4% of the best everywhere; 0.01 was 21% worse with 4 tokens per ``down_proj`` column.
  Per-column damping (``damp * diag``) was no better.
* **Every kept layer is refit**, also projections that lost no columns (``o_proj`` when only the
  MLP was cut): their inputs drift once earlier layers are cut. With heads cut, refitting all was
  better in 7 of 8 cases (by 3-15%; the ``down_proj`` after a cut attention absorbs its error) and 3%
  worse in one; with only the MLP cut, within 1-5% either way. An unpruned model is left as it was.
* **Biases** (an O or DOWN with a bias) are fitted too, as one more input column of 1s.
* **Dropped layers**: student layer i is fitted to teacher layer ``teacher_layers[i]`` (what
  ``PruneStats.kept_layers`` records); the teacher runs every layer, the dropped ones included, so
  its targets are the unpruned model's. Without ``teacher_layers`` the layer counts must match.

Normal equations are accumulated over batches in float64 (memory: one d_in x d_in matrix per
projection at a time, plus the cached (tokens, hidden) states of both models) and solved by Cholesky.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from compressor.arch import ArchSpec, Slot, spec_for
from stages.importance import decoder_layers, linear_at

log = logging.getLogger(__name__)

Target = Literal["projection", "residual"]
PROJECTIONS = (Slot.O, Slot.DOWN)
BEFORE_BLOCK = {Slot.O: Slot.ATTN_NORM, Slot.DOWN: Slot.MLP_NORM}  # the norm whose input is the residual
RESIDUAL_AFTER = {Slot.O: "mid", Slot.DOWN: "out"}  # keys of _teacher_layer's result


class _Caught(Exception):
    """Raised by the last layer's pre-hook once it has what it needs, to skip the rest of the forward."""


@torch.no_grad()
def _layer_inputs(model: Any, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Per batch, the hidden states entering decoder layer 0 (B, T, hidden); per layer and batch, the
    layer's keyword arguments."""
    states: list[torch.Tensor] = []
    layers = decoder_layers(model)
    kwargs: list[list[dict]] = [[] for _ in layers]

    def catch(i: int, _mod: nn.Module, args: tuple, kw: dict) -> None:
        kw = dict(kw)
        hidden = args[0] if args else kw.pop("hidden_states")
        if i == 0:
            states.append(hidden)
        kwargs[i].append(kw)
        if i == len(layers) - 1:
            raise _Caught

    device = next(model.parameters()).device
    handles = [
        layer.register_forward_pre_hook(lambda m, a, kw, i=i: catch(i, m, a, kw), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        for b in batches:
            with contextlib.suppress(_Caught):
                model(b.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return states, kwargs


@contextlib.contextmanager
def _inputs_of(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, ``seen[name]`` holds the latest input of ``modules[name]``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0]))
        for name, m in modules.items()
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class _Normal:
    """Running X^T X, X^T Y and sum Y^2 of one projection's least-squares problem, in float64."""

    def __init__(self, d_in: int, d_out: int, bias: bool) -> None:
        self.bias = bias
        n = d_in + int(bias)
        self.xtx = torch.zeros(n, n, dtype=torch.float64)
        self.xty = torch.zeros(n, d_out, dtype=torch.float64)
        self.yy = 0.0
        self.tokens = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double().cpu()  # (N, d_in)
        y = y.reshape(-1, y.shape[-1]).double().cpu()  # (N, d_out)
        if self.bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.yy += float((y * y).sum())
        self.tokens += len(x)

    def relative_error(self, wt: torch.Tensor) -> float:
        """||X W^T - Y||^2 / ||Y||^2 from the statistics alone; ``wt``: (d_in [+1], d_out)."""
        sq = (wt * (self.xtx @ wt)).sum() - 2 * (wt * self.xty).sum() + self.yy
        return float(sq) / max(self.yy, 1e-30)

    def solve(self, wt0: torch.Tensor, damp: float) -> torch.Tensor:
        """argmin ||X W^T - Y||^2 + lam ||W - W0||^2, lam = damp * mean diag(X^T X)."""
        lam = damp * float(self.xtx.diagonal().mean())
        if lam <= 0:  # the projection never saw a non-zero input: nothing to fit
            return wt0
        eye = torch.eye(len(self.xtx), dtype=torch.float64)
        for _ in range(4):  # damp only fails to make it positive definite through rounding; grow it
            chol, info = torch.linalg.cholesky_ex(self.xtx + lam * eye)
            if int(info) == 0:
                return torch.cholesky_solve(self.xty + lam * wt0, chol)
            lam *= 10
        log.warning("refit: normal equations not positive definite; weights kept")
        return wt0


def _stacked(proj: nn.Linear) -> torch.Tensor:
    """(d_in [+1], d_out) float64: the weight transposed, the bias as an extra row."""
    wt = proj.weight.detach().double().cpu().T
    if proj.bias is not None:
        wt = torch.cat([wt, proj.bias.detach().double().cpu()[None]], dim=0)
    return wt


def _assign(proj: nn.Linear, wt: torch.Tensor) -> None:
    with torch.no_grad():
        w = proj.weight
        proj.weight.copy_(wt[: w.shape[1]].T.to(w.dtype))
        if proj.bias is not None:
            proj.bias.copy_(wt[-1].to(proj.bias.dtype))


def _out(y: Any) -> torch.Tensor:
    """A decoder layer's hidden states (older transformers return a tuple)."""
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def _teacher_layer(
    layer: nn.Module, spec: ArchSpec, states: list[torch.Tensor], kwargs: list[dict]
) -> dict[Any, list]:
    """Run one teacher layer over every batch: its projection outputs (keyed by slot), the residual
    between attention and MLP ("mid"), its output ("out")."""
    out: dict[Any, list] = {Slot.O: [], Slot.DOWN: [], "mid": [], "out": []}
    hooks = [
        linear_at(layer, spec, s).register_forward_hook(lambda _m, _a, y, s=s: out[s].append(y))
        for s in PROJECTIONS
    ]
    try:
        with _inputs_of({"mid": layer.get_submodule(spec.module_path(Slot.MLP_NORM))}) as seen:
            for h, kw in zip(states, kwargs, strict=True):
                y = layer(h, **kw)
                out["out"].append(_out(y))
                out["mid"].append(seen["mid"])
    finally:
        for hk in hooks:
            hk.remove()
    return out


@torch.no_grad()
def _refit_one(
    layer: nn.Module,
    proj: nn.Linear,
    before_block: nn.Module,
    data: tuple[list[torch.Tensor], list[dict], list[torch.Tensor]],
    residual: bool,
    damp: float,
) -> tuple[float, float]:
    """Refit ``proj`` (inside ``layer``) so that, on the student's own inputs, its output matches the
    targets (``residual``: the targets are the teacher's residual stream after this block, so the
    student's residual before the block, the input of ``before_block``, is subtracted from them).
    ``data``: the student's layer inputs, keyword arguments and the targets, per batch.
    Returns the relative calibration error (before, after)."""
    normal = _Normal(proj.in_features, proj.out_features, proj.bias is not None)
    with _inputs_of({"x": proj, "res": before_block}) as seen:
        for h, kw, y in zip(*data, strict=True):
            layer(h, **kw)
            normal.add(seen["x"], y - seen["res"] if residual else y)
    wt0 = _stacked(proj)
    wt = normal.solve(wt0, damp)
    _assign(proj, wt)
    return normal.relative_error(wt0), normal.relative_error(wt)


def _check_mapping(teacher_layers: Sequence[int] | None, n_s: int, n_t: int) -> list[int]:
    mapping = list(teacher_layers) if teacher_layers is not None else list(range(n_t))
    if len(mapping) != n_s or mapping != sorted(set(mapping)) or (mapping and mapping[-1] >= n_t):
        raise ValueError(
            f"teacher_layers={teacher_layers} does not map the student's {n_s} layers, in order, onto the "
            f"teacher's {n_t}; after layer pruning pass PruneStats.kept_layers"
        )
    return mapping


def _effective_target(spec: ArchSpec, target: Target) -> tuple[Target, dict[str, Any]]:
    """The target to fit, and what the report says about a fallback."""
    if target != "residual" or not spec.sandwich_norms:
        return target, {}
    return "projection", {
        "target_requested": target,
        "target_fallback": f"{spec.family} normalizes the attention/MLP outputs before the residual add "
        "(sandwich norms), so the residual stream is not linear in the O/DOWN projections; fitted "
        "the teacher's projection outputs instead",
    }


def refit_outputs(
    student: Any,
    teacher: Any,
    calibration: list[torch.Tensor],
    damp: float = 0.3,
    teacher_layers: Sequence[int] | None = None,
    target: Target = "residual",
) -> dict[str, Any]:
    """Refit every kept layer's O and DOWN projections of ``student`` (in place) to the teacher.

    Args:
        student: the pruned causal LM (same family, hidden size and vocabulary as the teacher).
        teacher: the unpruned model it was cut from; not modified.
        calibration: token-id batches (B, T).
        damp: ridge strength as a fraction of the mean diagonal of X^T X.
        teacher_layers: for each student layer, the teacher layer it was kept from
            (``PruneStats.kept_layers``); None when no layer was dropped.
        target: fit the teacher's projection output, or its residual stream (see the module doc;
            families with sandwich norms always fit the projection output).

    Returns:
        A report: per layer and projection, the relative squared error on the calibration tokens
        before and after the refit (``||X W^T - Y||^2 / ||Y||^2``, X the student's inputs as they
        are when that projection is fitted), their means over layers, the token count, the seconds,
        the target used (and, after a fallback, the one requested and why).
    """
    start = time.perf_counter()
    spec = spec_for(student)
    s_layers, t_layers = decoder_layers(student, spec), decoder_layers(teacher, spec)
    mapping = _check_mapping(teacher_layers, len(s_layers), len(t_layers))
    target, fallback = _effective_target(spec, target)
    hs, kws = _layer_inputs(student, calibration)
    ht, kwt = _layer_inputs(teacher, calibration)
    rows: list[dict[str, Any]] = []
    next_t, residual = 0, target == "residual"
    with torch.no_grad():
        for i, t in enumerate(mapping):
            for j in range(next_t, t):  # teacher layers the student dropped
                ht = _teacher_layer(t_layers[j], spec, ht, kwt[j])["out"]
            teach = _teacher_layer(t_layers[t], spec, ht, kwt[t])
            next_t, layer = t + 1, s_layers[i]
            row: dict[str, Any] = {"layer": i, "teacher_layer": t}
            for slot in PROJECTIONS:
                ys = teach[RESIDUAL_AFTER[slot] if residual else slot]
                proj, norm = (
                    linear_at(layer, spec, slot),
                    layer.get_submodule(spec.module_path(BEFORE_BLOCK[slot])),
                )
                key = spec.module_path(slot).rsplit(".", 1)[-1]  # "o_proj", "down_proj"
                row[f"{key}_error_before"], row[f"{key}_error_after"] = _refit_one(
                    layer, proj, norm, (hs, kws[i], ys), residual, damp
                )
            rows.append(row)
            hs = [_out(layer(h, **kw)) for h, kw in zip(hs, kws[i], strict=True)]
            ht = teach["out"]
    errors = [k for k in rows[0] if k.endswith(("_before", "_after"))]
    return {
        "target": target,
        **fallback,
        "damp": damp,
        "tokens": sum(b.numel() for b in calibration),
        **{f"mean_{k}": round(sum(r[k] for r in rows) / len(rows), 6) for k in errors},
        "layers": [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "seconds": round(time.perf_counter() - start, 3),
    }
