"""Mixed precision under a size budget: a type for every tensor, least predicted KL for the bytes.

For every quantizable tensor and every allowed type, the tensor is quantized (importance-weighted
search) and its *sensitivity* is predicted as 0.5 * sum(F * (w - deq(w))^2) per token, with F the
diagonal Fisher of the float model (``calib_stats``): the second-order KL increase if that tensor
alone were quantized at that type. Choosing one type per tensor to minimise the summed sensitivity
within a byte budget is a multiple-choice knapsack; it is solved by Lagrangian relaxation (each tensor
minimises sensitivity + lambda * bytes; lambda found by bisection) and the bytes left over are spent
greedily on the upgrades with the best KL saved per byte. Summing per-tensor sensitivities ignores
interactions between tensors; ``bench`` measures how well the prediction ranks tensors against the real
KL in llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compressor.artifact import weight_inventory
from compressor.ggml_search import weighted_quantize
from compressor.ggml_types import dequantize
from compressor.onnx_search import weighted_quantize_onnx
from compressor.quant import ExportFormat, QuantScheme


@dataclass(frozen=True)
class Option:
    kind: str
    size_bytes: float
    kl: float  # predicted KL increase per token if only this tensor were quantized this way
    blocks: Any = None  # the quantized tensor (ggml Blocks / ONNX BlockQuant), reused when chosen


def _quantize(
    scheme: QuantScheme, kind: str, x: np.ndarray, imp: np.ndarray | None
) -> tuple[Any, np.ndarray]:
    if scheme.format is ExportFormat.ONNX:
        bq = weighted_quantize_onnx(kind, x, scheme.block_for(kind, x.shape[-1]), scheme.symmetric, imp)
        return bq, bq.dequantize()
    blocks = weighted_quantize(kind, x, imp)
    return blocks, dequantize(blocks).reshape(x.shape)


def tensor_options(
    model: Any,
    scheme: QuantScheme,
    fisher: dict[str, torch.Tensor],
    tokens: int,
    importance: dict[str, np.ndarray],
) -> dict[str, list[Option]]:
    """Inventory name -> its options (every type of ``scheme.mixed_types`` its rows can pack),
    cheapest first."""
    allowed = scheme.mixed_types
    block = (scheme.block_size or 32) if scheme.format is ExportFormat.ONNX else 32
    fallback = ("fp32", 4.0) if scheme.format is ExportFormat.ONNX else ("F16", 2.0)
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, list[Option]] = {}
    for w in weight_inventory(model):
        if w.role.vector or len(w.shape) != 2:
            continue
        x = params[w.name].detach().float().numpy()
        f = fisher[w.name].numpy()
        opts = []
        for kind in allowed:
            if w.shape[1] % block:
                continue
            blocks, deq = _quantize(scheme, kind, x, importance.get(w.name))
            kl = 0.5 * float((f * (deq - x) ** 2).sum(dtype=np.float64)) / tokens
            opts.append(Option(kind, w.numel * scheme.bits(kind) / 8, kl, blocks))
        if not opts:  # rows no block type can pack: F16 (GGUF) / fp32 (ONNX)
            opts.append(Option(fallback[0], w.numel * fallback[1], 0.0))
        out[w.name] = sorted(opts, key=lambda o: o.size_bytes)
    return out


def _pick(options: dict[str, list[Option]], lam: float) -> dict[str, Option]:
    return {n: min(opts, key=lambda o: o.kl + lam * o.size_bytes) for n, opts in options.items()}


def allocate(options: dict[str, list[Option]], budget_bytes: float) -> dict[str, Option]:
    """One option per tensor, total size <= ``budget_bytes``, least summed predicted KL.

    Raises ValueError when even the cheapest options do not fit.
    """
    cheapest = {n: opts[0] for n, opts in options.items()}
    if sum(o.size_bytes for o in cheapest.values()) > budget_bytes:
        raise ValueError("the cheapest allowed types do not fit the size budget")
    lo, hi = 0.0, 1.0
    while sum(o.size_bytes for o in _pick(options, hi).values()) > budget_bytes:
        hi *= 4
    for _ in range(60):  # bisection on lambda: the largest spend that still fits
        mid = (lo + hi) / 2
        if sum(o.size_bytes for o in _pick(options, mid).values()) > budget_bytes:
            lo = mid
        else:
            hi = mid
    chosen = _pick(options, hi)
    left = budget_bytes - sum(o.size_bytes for o in chosen.values())
    while True:  # spend what is left on the best KL saved per extra byte
        best = None
        for n, opts in options.items():
            cur = chosen[n]
            for o in opts:
                extra = o.size_bytes - cur.size_bytes
                if 0 < extra <= left and o.kl < cur.kl:
                    gain = (cur.kl - o.kl) / extra
                    if best is None or gain > best[0]:
                        best = (gain, n, o, extra)
        if best is None:
            return chosen
        _, n, o, extra = best
        chosen[n] = o
        left -= extra
