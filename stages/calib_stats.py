"""Calibration statistics for PTQ: per-column input importance and per-weight Fisher information.

* ``input_importance``: for every linear layer, the mean square of each input column over the
  calibration tokens (llama.cpp's "importance matrix"). It weights each element's error in the block
  scale searches: an error on a column whose inputs are large costs more output error.
* ``fisher_diagonal``: for every weight, E[g^2] of the gradient of log p(y) with y sampled from the
  model itself (the true Fisher, per sequence so that cross terms vanish in expectation). Near the
  float model the KL to it grows as 0.5 * sum F * dw^2, so it prices quantizing one tensor at one type
  in KL per token without running the quantized model: that is the mixed-precision plan's sensitivity.
Both are computed once per run; names are the weight inventory's (tied weights once, under the
embedding's name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.artifact import weight_inventory


def _inventory_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its inventory name (a tied head maps to the embedding's name)."""
    names = {w.name for w in weight_inventory(model)}
    return {id(p): n for n, p in model.named_parameters(remove_duplicate=False) if n in names}


@torch.no_grad()
def input_importance(
    model: nn.Module, batches: Sequence[torch.Tensor], grams: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Inventory weight name -> mean x^2 per input column (float32, length in_features).

    ``grams``: when given, filled with each layer's mean input Gram matrix X^T X / n (for GPTQ)."""
    by_id = _inventory_names(model)
    sums: dict[str, torch.Tensor] = {}
    outer: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def collect(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in_features)
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
            if grams is not None:
                outer[name] = outer.get(name, 0) + x.double().T @ x.double()  # (in, in)

        return collect

    handles = [
        mod.register_forward_pre_hook(hook(by_id[id(mod.weight)]))
        for mod in model.modules()
        if isinstance(mod, nn.Linear) and id(mod.weight) in by_id
    ]
    try:
        model.eval()
        for ids in batches:
            model(ids)
    finally:
        for h in handles:
            h.remove()
    if grams is not None:
        grams.update({n: (g / counts[n]).numpy() for n, g in outer.items()})
    return {n: (s / counts[n]).numpy().astype(np.float32) for n, s in sums.items()}


def fisher_diagonal(
    model: nn.Module, batches: Sequence[torch.Tensor], seed: int = 0
) -> tuple[dict[str, torch.Tensor], int]:
    """(inventory weight name -> E[g^2] summed over a sequence's positions, tokens per sequence).

    One backward pass per sequence of ``batches`` (each (1, T)); labels are sampled from the model's
    own next-token distribution, so the estimate is of the Fisher, not of the data's gradient noise.
    """
    by_id = _inventory_names(model)
    params = {by_id[id(p)]: p for p in model.parameters() if id(p) in by_id and p.dim() == 2}
    was = {n: p.requires_grad for n, p in params.items()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    tokens = 0
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for ids in batches:
            logits = model(ids).logits[0].float()  # (T, V)
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
            logp = torch.log_softmax(logits, -1).gather(1, y[:, None]).sum()
            grads = torch.autograd.grad(logp, list(params.values()))
            for (n, _), g in zip(params.items(), grads, strict=True):
                fisher[n] += g.float() ** 2
            tokens = ids.shape[1]
    finally:
        for n, p in params.items():
            p.requires_grad_(was[n])
    for f in fisher.values():
        f /= max(1, len(batches))
    return fisher, tokens
