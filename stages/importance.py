"""How much each attention head, MLP channel and layer matters, measured on calibration text.

* activation (default, Minitron-style): a head's score is the mean norm of what it adds to the
  residual stream (its context vector through its slice of the O projection); an MLP channel's score
  is mean |activation| x the norm of its DOWN column. Weight magnitude alone destroys SmolLM2
  (FIELD-NOTES: MLP 1536->1408 gives PPL ~10,000); activations from a few hundred tokens work.
* taylor: first-order |w . dL/dw| summed over the structure's weights (cross-entropy on the text).
* magnitude: weight norms only (the fallback needing no data); random: a seeded baseline.
Layers are always scored by activation: 1 - cos(h_in, h_out) (how little a block changes the
hidden state; the lowest go first).

Every module is found through the family's tensor table (``compressor.arch``); a part of a fused
matrix (Q of QKV, UP of GATE_UP) is located by ``locate``, which ``prune.py`` and ``prune_auto.py``
share, so scoring, slicing and the projected shapes agree on where each part's rows are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from compressor.arch import ArchSpec, Slot, spec_for
from compressor.arch.config_keys import get, head_dim
from compressor.arch.spec import FUSED

# Fused slots and their parts, in the order their rows are stacked (see ``compressor.arch.Slot``)


class Importance(StrEnum):
    ACTIVATION = "activation"
    TAYLOR = "taylor"
    MAGNITUDE = "magnitude"
    RANDOM = "random"


@dataclass(frozen=True)
class Widths:
    """The prunable widths of one (uniform) decoder layer."""

    heads: int
    kv_heads: int
    head_dim: int
    mlp: int

    @classmethod
    def of(cls, spec: ArchSpec, config: Any) -> Widths:
        k = spec.keys
        heads = int(get(config, k.n_heads))
        return cls(heads, int(get(config, k.n_kv_heads, heads)), head_dim(k, config), int(get(config, k.mlp)))

    def rows(self, slot: Slot) -> int:
        """Output rows of ``slot``'s weight (a fused slot: all its parts')."""
        if slot in FUSED:
            return sum(self.rows(p) for p in FUSED[slot])
        sizes = {Slot.Q: self.heads, Slot.K: self.kv_heads, Slot.V: self.kv_heads}
        return sizes[slot] * self.head_dim if slot in sizes else self.mlp


def locate(spec: ArchSpec, slot: Slot, widths: Widths) -> tuple[str, slice]:
    """The module (path inside a layer) holding ``slot``'s rows, and which of its rows they are."""
    if spec.has(slot):
        return spec.module_path(slot), slice(0, widths.rows(slot))
    for fused, parts in FUSED.items():
        if slot in parts and spec.has(fused):
            start = sum(widths.rows(p) for p in parts[: parts.index(slot)])
            return spec.module_path(fused), slice(start, start + widths.rows(slot))
    raise KeyError(f"{spec.family} has no {slot} tensor, alone or fused")


def part(layer: nn.Module, spec: ArchSpec, slot: Slot, widths: Widths, of: Callable | None = None) -> Any:
    """``of(linear)`` (default: the weight) restricted to ``slot``'s rows, e.g. UP inside GATE_UP."""
    path, rows = locate(spec, slot, widths)
    linear = cast(nn.Linear, layer.get_submodule(path))
    return (of(linear) if of is not None else linear.weight)[rows]


def linear_at(layer: nn.Module, spec: ArchSpec, slot: Slot) -> nn.Linear:
    """The Linear of an unfused projection slot (O, DOWN, ...) in ``layer``."""
    return cast(nn.Linear, layer.get_submodule(spec.module_path(slot)))


def decoder_layers(model: Any, spec: ArchSpec | None = None) -> nn.ModuleList:
    spec = spec or spec_for(model)
    return cast(nn.ModuleList, model.get_submodule(spec.layers_path))


@dataclass(frozen=True)
class Scores:
    heads: torch.Tensor  # (layers, q_heads)
    channels: torch.Tensor  # (layers, intermediate)
    layers: torch.Tensor  # (layers,)


def _activation_hooks(
    model: Any, heads: torch.Tensor, channels: torch.Tensor, layers: torch.Tensor, counts: list
) -> list:
    spec = spec_for(model)
    w = Widths.of(spec, model.config)
    n_heads, hd = w.heads, w.head_dim
    handles = []
    for i, layer in enumerate(decoder_layers(model, spec)):

        def o_hook(mod, args, i=i):
            x = args[0].detach()  # (B, T, H*hd): concatenated head contexts
            wo = mod.weight.detach().view(mod.weight.shape[0], n_heads, hd)  # (hidden, H, hd)
            contrib = torch.einsum("bthd,ohd->btho", x.view(*x.shape[:2], n_heads, hd), wo)
            heads[i] += contrib.norm(dim=-1).sum(dim=(0, 1))

        def down_hook(mod, args, i=i):
            a = args[0].detach()  # (B, T, I)
            channels[i] += a.abs().sum(dim=(0, 1)) * mod.weight.detach().norm(dim=0)

        def layer_hook(mod, args, output, i=i):
            h_in = args[0].detach()
            h_out = (output[0] if isinstance(output, tuple) else output).detach()
            layers[i] += (1 - F.cosine_similarity(h_in, h_out, dim=-1)).sum()
            if i == 0:
                counts[0] += h_in.shape[0] * h_in.shape[1]

        handles += [
            linear_at(layer, spec, Slot.O).register_forward_pre_hook(o_hook),
            linear_at(layer, spec, Slot.DOWN).register_forward_pre_hook(down_hook),
            layer.register_forward_hook(layer_hook),
        ]
    return handles


def score(model: Any, batches: list[torch.Tensor], method: Importance, seed: int = 0) -> Scores:
    """Scores for every head, channel and layer of a decoder; higher = more important."""
    w = Widths.of(spec_for(model), model.config)
    n_layers = len(decoder_layers(model))
    heads, channels = torch.zeros(n_layers, w.heads), torch.zeros(n_layers, w.mlp)
    layers, counts = torch.zeros(n_layers), [0]
    handles = _activation_hooks(model, heads, channels, layers, counts)
    try:
        with torch.no_grad():
            for b in batches:
                model(b)
    finally:
        for h in handles:
            h.remove()
    layers /= max(counts[0], 1)
    if method is Importance.ACTIVATION:
        return Scores(heads / max(counts[0], 1), channels / max(counts[0], 1), layers)
    if method is Importance.RANDOM:
        g = torch.Generator().manual_seed(seed)
        return Scores(
            torch.rand(n_layers, w.heads, generator=g), torch.rand(n_layers, w.mlp, generator=g), layers
        )
    if method is Importance.MAGNITUDE:
        return Scores(*_magnitude(model), layers)
    return Scores(*_taylor(model, batches), layers)


def _magnitude(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    spec = spec_for(model)
    w = Widths.of(spec, model.config)
    h, c = [], []
    for layer in decoder_layers(model, spec):
        wo = linear_at(layer, spec, Slot.O).weight.detach()
        h.append(wo.view(wo.shape[0], w.heads, w.head_dim).norm(dim=(0, 2)))
        down = linear_at(layer, spec, Slot.DOWN).weight.detach()
        c.append(down.norm(dim=0) * part(layer, spec, Slot.UP, w).detach().norm(dim=1))
    return torch.stack(h), torch.stack(c)


def _saliency(linear: nn.Linear) -> torch.Tensor:
    """|w . dL/dw| per weight (zero where no gradient reached it)."""
    w = linear.weight
    return (w * w.grad).abs() if w.grad is not None else torch.zeros_like(w)


def _taylor(model: Any, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    spec = spec_for(model)
    w = Widths.of(spec, model.config)
    model.zero_grad(set_to_none=True)
    for b in batches:
        out = model(b, labels=b)
        out.loss.backward()
    h, c = [], []
    for layer in decoder_layers(model, spec):
        o_sal = _saliency(linear_at(layer, spec, Slot.O))  # (hidden, H*hd)
        q = part(layer, spec, Slot.Q, w, _saliency).view(w.heads, w.head_dim, -1).sum(dim=(1, 2))
        o = o_sal.view(-1, w.heads, w.head_dim).sum(dim=(0, 2))
        h.append((q + o).detach())
        ch = sum(part(layer, spec, s, w, _saliency).sum(dim=1) for s in (Slot.GATE, Slot.UP))
        down = _saliency(linear_at(layer, spec, Slot.DOWN)).sum(dim=0)
        c.append((ch + down).detach())
    model.zero_grad(set_to_none=True)
    return torch.stack(h), torch.stack(c)
