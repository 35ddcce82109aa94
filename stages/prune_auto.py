"""``--prune auto``: the smallest pruning whose *projected* footprint fits the device's budgets.

Candidates keep uniform shapes (MLP widths in steps of the formats' row multiple, query heads per KV
group, layer counts down to half the model) and are projected analytically, without touching the
model: each candidate's weight inventory is the model's own (or the family's tensor table's) with the
pruned slots resized, exactly what ``weight_inventory`` lists after pruning; its KV cache follows the
kept KV heads and layers. It is planned by every target scheme and checked with the same roofline
as after every stage. Among those that fit every budget for every
scheme, the one that keeps the most parameters wins (ties: MLP cuts first, then heads, then layers,
which is roughly the order in which they hurt least on SmolLM2).
"""

from __future__ import annotations

import math
from typing import Any

from compressor.arch import ARCHITECTURES, ArchSpec, Slot, identify
from compressor.arch.tensors import NORM_SLOTS, ROLES
from compressor.artifact import ModelFacts, WeightInfo
from compressor.budget import (
    Calibration,
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
)
from compressor.device_profile import DeviceProfile
from compressor.errors import BudgetExceeded
from compressor.quant import QuantScheme
from stages.importance import Widths
from stages.prune_config import PruneConfig

Shape = tuple[int, int, int, int]  # (heads, kv_heads, mlp, layers)


def _weight_shape(slot: Slot, f: ModelFacts, w: Widths) -> tuple[int, ...]:
    """The weight shape of ``slot`` in a layer of widths ``w`` (HF Linear: (out, in))."""
    h = f.hidden_size
    if slot in (Slot.EMBED, Slot.HEAD):
        return (f.vocab_size, h)
    if slot in (Slot.Q_NORM, Slot.K_NORM):
        return (w.head_dim,)
    if slot in NORM_SLOTS:
        return (h,)
    if slot is Slot.O:
        return (h, w.rows(Slot.Q))
    if slot is Slot.DOWN:
        return (h, w.mlp)
    return (w.rows(slot), h)  # Q, K, V, QKV, GATE, UP, GATE_UP


def _table_inventory(spec: ArchSpec, f: ModelFacts) -> list[WeightInfo]:
    """The unpruned weights as the tensor table lists them (no biases: the table does not say which
    projections have one; pass the model's own inventory to count them)."""
    w = Widths(f.n_heads, f.n_kv_heads, f.head_dim, f.intermediate_size)
    inv = []
    for rule in spec.tensors:
        if rule.slot is Slot.HEAD and f.tied_embeddings:
            continue  # stored once, as the embedding
        shape = _weight_shape(rule.slot, f, w)
        for i in range(f.n_layers) if rule.in_layer else [None]:
            prefix = f"{spec.layers_path}.{i}." if i is not None else ""
            inv.append(WeightInfo(f"{prefix}{rule.module}.weight", shape, ROLES[rule.slot]))
    return inv


def shape_inventory(
    f: ModelFacts, heads: int, kv: int, mlp: int, layers: int, inventory: list[WeightInfo] | None = None
) -> list[WeightInfo]:
    """What ``weight_inventory`` would list after pruning ``f``'s model to this shape.

    ``inventory``: the unpruned model's own ``weight_inventory`` (exact: biases included); without it
    the family's tensor table stands in. Layers ``>= layers`` go (the kept ones are renumbered from 0)."""
    spec = ARCHITECTURES[f.family]
    w = Widths(heads, kv, f.head_dim, mlp)
    out = []
    for info in inventory if inventory is not None else _table_inventory(spec, f):
        tid = identify(spec, info.name)
        if tid is not None and tid.layer is not None and tid.layer >= layers:
            continue
        if tid is None or tid.slot in NORM_SLOTS:  # norms keep their width
            out.append(info)
            continue
        shape = _weight_shape(tid.slot, f, w)
        out.append(WeightInfo(info.name, shape[:1] if tid.kind == "bias" else shape, info.role))
    return out


def _kept_windows(windows: tuple[int, ...], layers: int) -> tuple[int, ...]:
    """Which layers go is only known after importance is measured: assume the costliest KV caches
    (full attention, then the widest windows) stay, so the projection never flatters a candidate."""
    return tuple(sorted(windows, key=lambda x: math.inf if x == 0 else x, reverse=True)[:layers])


def shape_facts(f: ModelFacts, heads: int, kv: int, mlp: int, layers: int) -> ModelFacts:
    """``f`` after pruning to this shape (the KV cache follows the kept KV heads and layers)."""
    update = {"n_heads": heads, "n_kv_heads": kv, "intermediate_size": mlp, "n_layers": layers}
    return f.model_copy(update={**update, "layer_windows": _kept_windows(f.layer_windows, layers)})


def _fits(
    f: ModelFacts,
    shape: Shape,
    schemes: list[QuantScheme],
    profile: DeviceProfile,
    inventory: list[WeightInfo] | None,
    calibration: Calibration | None = None,
) -> tuple[int, list[str]]:
    inv, facts = shape_inventory(f, *shape, inventory=inventory), shape_facts(f, *shape)
    fails = []
    for s in schemes:
        fp = project_footprint(cost_from_plan(facts, inv, plan_tensors(inv, s), s.name), profile, calibration)
        fails += describe_failures(check_budgets(fp, profile.budgets))
    return sum(w.numel for w in inv), fails


def choose(
    f: ModelFacts,
    schemes: list[QuantScheme],
    profile: DeviceProfile,
    row_multiple: int,
    inventory: list[WeightInfo] | None = None,
    calibration: Calibration | None = None,
) -> tuple[PruneConfig, dict[str, Any]]:
    """The PruneConfig to use and why; raises BudgetExceeded when even the smallest candidate misses.

    ``inventory``: the model's ``weight_inventory`` (counts biases exactly); else the tensor table's."""
    group = f.n_heads // f.n_kv_heads
    full: Shape = (f.n_heads, f.n_kv_heads, f.intermediate_size, f.n_layers)
    n_full, fails_full = _fits(f, full, schemes, profile, inventory, calibration)
    if not fails_full:
        return PruneConfig(), {
            "chosen": "none",
            "reason": "the unpruned model already fits",
            "params": n_full,
        }
    widths = range(f.intermediate_size, f.intermediate_size // 4 - 1, -row_multiple)
    best: tuple[int, tuple[int, ...], Shape] | None = None
    for q in range(group, 0, -1):
        for mlp in widths:
            for layers in range(f.n_layers, f.n_layers // 2 - 1, -1):
                shape = (q * f.n_kv_heads, f.n_kv_heads, mlp, layers)
                n, fails = _fits(f, shape, schemes, profile, inventory, calibration)
                if fails:
                    continue
                rank = (n, -(group - q), layers)  # more params; then fewer head cuts; then more layers
                if best is None or rank > (best[0], *best[1]):
                    best = (n, rank[1:], shape)
                break  # fewer layers only loses params for this (q, mlp)
    if best is None:
        raise BudgetExceeded(
            f"no uniform pruning down to 1/4 of the MLP, 1 head per group and half the layers fits "
            f"'{profile.name}'; the unpruned model misses:",
            fails_full,
        )
    n, _, (heads, kv, mlp, layers) = best
    cfg = PruneConfig(heads=heads, kv_heads=kv, mlp=mlp, layers=layers)
    why = {
        "chosen": f"heads={heads},kv_heads={kv},mlp={mlp},layers={layers}",
        "reason": "the largest uniform shape whose projected footprint fits every budget",
        "unpruned_misses": fails_full,
        "params": n,
        "params_unpruned": n_full,
    }
    return cfg, why
