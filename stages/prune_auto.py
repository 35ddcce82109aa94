"""``--prune auto``: the smallest pruning whose *projected* footprint fits the device's budgets.

Candidates keep uniform shapes (MLP widths in steps of the formats' row multiple, query heads per KV
group, layer counts down to half the model) and are projected analytically, without touching the
model: each candidate's weight inventory is derived from the shape, planned by every target scheme,
and checked with the same roofline as after every stage. Among those that fit every budget for every
scheme, the one that keeps the most parameters wins (ties: MLP cuts first, then heads, then layers,
which is roughly the order in which they hurt least on SmolLM2).
"""

from __future__ import annotations

from typing import Any

from compressor.artifact import ModelFacts, WeightInfo
from compressor.budget import (
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
)
from compressor.device_profile import DeviceProfile
from compressor.errors import BudgetExceeded
from compressor.quant import QuantScheme, TensorRole
from stages.prune_config import PruneConfig


def shape_inventory(f: ModelFacts, heads: int, kv: int, mlp: int, layers: int) -> list[WeightInfo]:
    """The weights of a llama decoder of this shape (as ``weight_inventory`` would list them)."""
    h, hd = f.hidden_size, f.head_dim
    inv = [WeightInfo("model.embed_tokens.weight", (f.vocab_size, h), TensorRole.EMBEDDING)]
    for i in range(layers):
        p = f"model.layers.{i}."
        inv += [
            WeightInfo(p + "self_attn.q_proj.weight", (heads * hd, h), TensorRole.ATTENTION),
            WeightInfo(p + "self_attn.k_proj.weight", (kv * hd, h), TensorRole.ATTENTION),
            WeightInfo(p + "self_attn.v_proj.weight", (kv * hd, h), TensorRole.ATTENTION),
            WeightInfo(p + "self_attn.o_proj.weight", (h, heads * hd), TensorRole.ATTENTION),
            WeightInfo(p + "mlp.gate_proj.weight", (mlp, h), TensorRole.MLP),
            WeightInfo(p + "mlp.up_proj.weight", (mlp, h), TensorRole.MLP),
            WeightInfo(p + "mlp.down_proj.weight", (h, mlp), TensorRole.MLP),
            WeightInfo(p + "input_layernorm.weight", (h,), TensorRole.NORM),
            WeightInfo(p + "post_attention_layernorm.weight", (h,), TensorRole.NORM),
        ]
    if not f.tied_embeddings:
        inv.append(WeightInfo("lm_head.weight", (f.vocab_size, h), TensorRole.OUTPUT))
    return inv


def _fits(
    f: ModelFacts, shape: tuple[int, int, int, int], schemes: list[QuantScheme], profile: DeviceProfile
) -> tuple[int, list[str]]:
    inv = shape_inventory(f, *shape)
    fails = []
    for s in schemes:
        fp = project_footprint(cost_from_plan(f, inv, plan_tensors(inv, s), s.name), profile)
        fails += describe_failures(check_budgets(fp, profile.budgets))
    return sum(w.numel for w in inv), fails


def choose(
    f: ModelFacts, schemes: list[QuantScheme], profile: DeviceProfile, row_multiple: int
) -> tuple[PruneConfig, dict[str, Any]]:
    """The PruneConfig to use and why; raises BudgetExceeded when even the smallest candidate misses."""
    group = f.n_heads // f.n_kv_heads
    full = (f.n_heads, f.n_kv_heads, f.intermediate_size, f.n_layers)
    n_full, fails_full = _fits(f, full, schemes, profile)
    if not fails_full:
        return PruneConfig(), {
            "chosen": "none",
            "reason": "the unpruned model already fits",
            "params": n_full,
        }
    widths = range(f.intermediate_size, f.intermediate_size // 4 - 1, -row_multiple)
    best: tuple[int, tuple[int, ...], tuple[int, int, int, int]] | None = None
    for q in range(group, 0, -1):
        for mlp in widths:
            for layers in range(f.n_layers, f.n_layers // 2 - 1, -1):
                shape = (q * f.n_kv_heads, f.n_kv_heads, mlp, layers)
                n, fails = _fits(f, shape, schemes, profile)
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
