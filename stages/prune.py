"""Structured pruning of llama-style decoders: slicing primitives (real smaller matrices, not masks).

Slicing by hand rather than through torch-pruning's dependency graph: for this architecture the
dependencies are few and fixed (q/o per head, k/v per KV group, gate/up rows with down columns), the
hand-written version has no tracing gotchas, and it keeps grouped-query attention consistent by
construction (every KV group keeps the same number of query heads). torch-pruning would also leave
``num_key_value_groups`` and the config for us to fix.

The config is updated so ``from_pretrained`` loads the result and the exporters need no special
cases: ``head_dim`` stays explicit (hidden / heads is no longer the head size once heads go).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = len(rows)


def _keep_cols(linear: nn.Linear, cols: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[:, cols].clone())
    linear.in_features = len(cols)


def _head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def slice_attention(attn: Any, q_heads: Sequence[int], kv_heads: Sequence[int], head_dim: int) -> None:
    """Keep query heads ``q_heads`` and KV heads ``kv_heads`` (both sorted, GQA grouping preserved)."""
    q_rows, kv_rows = _head_rows(q_heads, head_dim), _head_rows(kv_heads, head_dim)
    _keep_rows(attn.q_proj, q_rows)
    _keep_rows(attn.k_proj, kv_rows)
    _keep_rows(attn.v_proj, kv_rows)
    _keep_cols(attn.o_proj, q_rows)
    attn.num_key_value_groups = len(q_heads) // len(kv_heads)


def slice_mlp(mlp: Any, channels: Sequence[int]) -> None:
    idx = torch.as_tensor(sorted(channels))
    _keep_rows(mlp.gate_proj, idx)
    _keep_rows(mlp.up_proj, idx)
    _keep_cols(mlp.down_proj, idx)
    mlp.intermediate_size = len(idx)


def slice_uniform(
    model: Any,
    q_per_group: int | None = None,
    intermediate_size: int | None = None,
    head_scores: torch.Tensor | None = None,
    channel_scores: torch.Tensor | None = None,
) -> Any:
    """Keep ``q_per_group`` query heads per KV group and ``intermediate_size`` MLP channels in every
    layer, the highest-scored ones (scores: (layers, heads) and (layers, channels); default: the
    first ones). Updates the config. Returns the model (changed in place)."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv
    for i, layer in enumerate(model.model.layers):
        if q_per_group is not None and q_per_group < group:
            heads = []
            for g in range(n_kv):
                members = torch.arange(g * group, (g + 1) * group)
                score = head_scores[i, members] if head_scores is not None else -members.float()
                heads += sorted(members[torch.argsort(score, descending=True)[:q_per_group]].tolist())
            slice_attention(layer.self_attn, heads, list(range(n_kv)), head_dim)
        if intermediate_size is not None and intermediate_size < cfg.intermediate_size:
            n = cfg.intermediate_size
            score = channel_scores[i] if channel_scores is not None else -torch.arange(n).float()
            slice_mlp(layer.mlp, torch.argsort(score, descending=True)[:intermediate_size].tolist())
    if q_per_group is not None and q_per_group < group:
        cfg.num_attention_heads = q_per_group * n_kv
    if intermediate_size is not None:
        cfg.intermediate_size = min(intermediate_size, cfg.intermediate_size)
    cfg.head_dim = head_dim
    return model
