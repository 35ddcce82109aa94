"""Structured pruning of BERT-family encoders: whole layers, attention heads, FFN channels.

* **Layers** (DistilBERT's initialisation): keep ``n`` evenly spaced layers, always the last one
  (its output is what pooling reads): 6 -> 3 keeps layers 1, 3, 5. The student's layer ``j`` then
  sits where the uniform layer map of distillation (``stages.encoder_distill.layer_map``) points.
* **Heads**: scored on calibration text by the norm of each head's contribution to the attention
  output (``O[:, head] @ context_head``, averaged over real tokens), the same per layer; removed with
  transformers' own ``prune_heads`` (it slices Q/K/V rows with their biases and O's columns, and
  records ``pruned_heads`` in the config so ``from_pretrained`` rebuilds the same shapes).
* **FFN channels**: scored by mean |activation| x the norm of the channel's column in the output
  projection (Wanda's rule at channel granularity); the up rows (with biases) and down columns are
  sliced and ``intermediate_size`` updated, uniform across layers.

Widths stay legal for the target formats: kept heads x head_dim and the FFN width are multiples of
the formats' row multiple (32 for Q8_0/Q4_0 blocks and MatMulNBits' default block). The decoder
slicer (``stages.prune``) is not reused: it assumes pre-norm residuals, GQA groups and no HF head
bookkeeping, none of which an encoder has, and the BERT couplings are three lines each here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from compressor.arch import Slot
from compressor.artifact import ModelFacts
from compressor.encoder import EncoderModel, encoder_facts, tokenize
from compressor.errors import ConfigError
from stages.prune_config import PruneConfig, _count


class EncoderPrune(BaseModel):
    model_config = ConfigDict(frozen=True)
    heads: int
    mlp: int
    layers: int


def resolve_encoder(cfg: PruneConfig, facts: ModelFacts, row_multiple: int) -> EncoderPrune:
    """Absolute, legal targets, or one ConfigError listing every problem."""
    problems: list[str] = []
    if cfg.kv_heads is not None:
        problems.append("kv_heads: encoders have no key/value groups; prune with heads=")
    heads = _count("heads", cfg.heads, facts.n_heads, problems)
    width = heads * facts.head_dim
    if width % row_multiple and heads != facts.n_heads:
        problems.append(
            f"heads={heads} gives an attention width of {width}, not a multiple of {row_multiple} "
            "that the target formats pack"
        )
    mlp = _count("mlp", cfg.mlp, facts.intermediate_size, problems)
    if cfg.mlp is not None and cfg.mlp < 1:
        mlp = max(row_multiple, mlp - mlp % row_multiple)
    elif mlp % row_multiple:
        lo = mlp - mlp % row_multiple
        problems.append(f"mlp={mlp} is not a multiple of {row_multiple}; use {lo} or {lo + row_multiple}")
    layers = _count("layers", cfg.layers, facts.n_layers, problems)
    if problems:
        raise ConfigError("invalid --prune for this encoder", problems)
    return EncoderPrune(heads=heads, mlp=mlp, layers=layers)


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced layer indices of ``total``, ending at the last."""
    return sorted({round((i + 1) * total / keep) - 1 for i in range(keep)})


def _modules(model: EncoderModel, layer: Any) -> dict[Slot, Any]:
    spec = model.spec
    return {s: layer.get_submodule(spec.module_path(s)) for s in (Slot.Q, Slot.O, Slot.UP, Slot.DOWN)}


@torch.no_grad()
def importance(
    model: EncoderModel, tokenizer: Any, texts: Sequence[str], max_len: int = 128, batch: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, heads) head scores and (layers, mlp) channel scores on ``texts``."""
    layers = model.layers
    n_heads = encoder_facts(model).n_heads
    heads = torch.zeros(len(layers), n_heads)
    chans = torch.zeros(len(layers), _modules(model, layers[0])[Slot.UP].out_features)
    tokens = torch.zeros(())
    current: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        mods = _modules(model, layer)

        def o_in(mod: Any, args: tuple[torch.Tensor, ...], i: int = i) -> None:
            x = args[0] * current["mask"]  # (b, s, heads*hd), padding zeroed
            w = mod.weight  # (d, heads*hd)
            hd = w.shape[1] // n_heads
            for h in range(n_heads):
                part = x[..., h * hd : (h + 1) * hd] @ w[:, h * hd : (h + 1) * hd].T
                heads[i, h] += part.norm(dim=-1).sum()

        def down_in(mod: Any, args: tuple[torch.Tensor, ...], i: int = i) -> None:
            act = (args[0] * current["mask"]).abs().sum(dim=(0, 1))
            chans[i] += act * mod.weight.norm(dim=0)

        hooks.append(mods[Slot.O].register_forward_pre_hook(o_in))
        hooks.append(mods[Slot.DOWN].register_forward_pre_hook(down_in))
    try:
        for start in range(0, len(texts), batch):
            enc = tokenize(tokenizer, texts[start : start + batch], max_len)
            current["mask"] = enc["attention_mask"].unsqueeze(-1).float()
            tokens = tokens + enc["attention_mask"].sum()
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return heads / tokens, chans / tokens


def prune_encoder(
    model: EncoderModel, target: EncoderPrune, tokenizer: Any, texts: Sequence[str]
) -> dict[str, Any]:
    """Prune ``model`` in place to ``target``; returns what was kept (for the report)."""
    start = time.perf_counter()
    facts = encoder_facts(model)
    summary: dict[str, Any] = {
        "before": facts.model_dump(include={"n_layers", "n_heads", "intermediate_size"})
    }
    if target.layers < facts.n_layers:
        keep = kept_layers(facts.n_layers, target.layers)
        base = model.base
        base.encoder.layer = nn.ModuleList([base.encoder.layer[i] for i in keep])
        model.config.num_hidden_layers = len(keep)
        pruned = getattr(model.config, "pruned_heads", {}) or {}
        model.config.pruned_heads = {j: pruned[i] for j, i in enumerate(keep) if i in pruned}
        summary["kept_layers"] = keep
    if target.heads < facts.n_heads or target.mlp < facts.intermediate_size:
        head_scores, chan_scores = importance(model, tokenizer, texts)
        if target.heads < facts.n_heads:
            drop = {
                i: sorted(head_scores[i].argsort()[: facts.n_heads - target.heads].tolist())
                for i in range(len(model.layers))
            }
            model.base.prune_heads(drop)  # transformers' own bookkeeping: pruned_heads in the config
            summary["removed_heads"] = {str(k): v for k, v in drop.items()}
        if target.mlp < facts.intermediate_size:
            for i, layer in enumerate(model.layers):
                keep_ch = chan_scores[i].argsort(descending=True)[: target.mlp].sort().values
                mods = _modules(model, layer)
                up, down = mods[Slot.UP], mods[Slot.DOWN]
                up.weight = nn.Parameter(up.weight.detach()[keep_ch].clone())
                up.bias = nn.Parameter(up.bias.detach()[keep_ch].clone())
                up.out_features = len(keep_ch)
                down.weight = nn.Parameter(down.weight.detach()[:, keep_ch].clone())
                down.in_features = len(keep_ch)
            model.config.intermediate_size = target.mlp
    summary["after"] = encoder_facts(model).model_dump(include={"n_layers", "n_heads", "intermediate_size"})
    summary["seconds"] = time.perf_counter() - start
    return summary
