"""Quantize stage: round-to-nearest quantization of every weight as the QuantScheme plans it.

``quantize_model`` packs each weight into the exact blocks the exporter will write and puts the
dequantized values back into the torch model, so the torch model computes what the file will hold.
Schemes delegated to llama.cpp's quantizer (K-quant mixtures) are left in float here and quantized
at export; their fallbacks are still reported before anything is written.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from compressor import onnx_blocks
from compressor.artifact import ModelArtifact, QuantizedTensor, weight_inventory
from compressor.budget import effective_bits_per_weight, plan_tensors
from compressor.ggml_types import quantize_tensor
from compressor.quant import ExportFormat, QuantScheme
from compressor.report import StageReport
from compressor.stage import StageContext, StageResult

log = logging.getLogger(__name__)


class Fallback(BaseModel):
    model_config = ConfigDict(frozen=True)
    tensor: str
    requested: str
    effective: str
    reason: str


class QuantStats(BaseModel):
    model_config = ConfigDict(frozen=True)
    scheme: str
    tensors_by_type: dict[str, int]
    bits_per_weight: float
    fallbacks: list[Fallback]
    max_abs_error: float  # largest |w - dequant(quant(w))| over all quantized weights


def pack_weight(scheme: QuantScheme, kind: str, w: np.ndarray) -> tuple[Any, np.ndarray]:
    """(what the exporter writes, the dequantized weight) for one (rows, row_len) matrix."""
    if scheme.format is ExportFormat.ONNX:
        bq = onnx_blocks.quantize(kind, w, scheme.block_size, scheme.symmetric)
        return bq, bq.dequantize()
    return quantize_tensor(kind, w)


def quantize_model(model: Any, scheme: QuantScheme) -> tuple[Any, dict[str, QuantizedTensor], QuantStats]:
    """Quantize ``model`` in place to ``scheme``; return it, the packed tensors and the stats."""
    inventory = weight_inventory(model)
    plans = plan_tensors(inventory, scheme)
    params = dict(model.named_parameters(remove_duplicate=False))
    packed: dict[str, QuantizedTensor] = {}
    max_err = 0.0
    for w in inventory:
        kind = plans[w.name].effective
        if scheme.delegated_to_llama_cpp or kind in ("F32", "fp32") or len(w.shape) != 2:
            continue
        p = params[w.name]
        data, deq = pack_weight(scheme, kind, p.detach().float().numpy())
        restored = torch.from_numpy(deq)
        max_err = max(max_err, float((p.detach() - restored).abs().max()))
        with torch.no_grad():
            p.copy_(restored)
        packed[w.name] = QuantizedTensor(kind=kind, shape=w.shape, data=data)
    fallbacks = [
        Fallback(tensor=n, requested=pl.requested, effective=pl.effective, reason=pl.reason or "")
        for n, pl in plans.items()
        if pl.reason
    ]
    stats = QuantStats(
        scheme=scheme.name,
        tensors_by_type=dict(Counter(pl.effective for pl in plans.values())),
        bits_per_weight=round(effective_bits_per_weight(inventory, plans), 4),
        fallbacks=fallbacks,
        max_abs_error=max_err,
    )
    return model, packed, stats


class QuantizeStage:
    name = "quantize"

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        model, packed, stats = quantize_model(artifact.model, ctx.scheme)
        if stats.fallbacks:
            moves = Counter(f"{fb.requested}->{fb.effective}" for fb in stats.fallbacks)
            log.warning(
                "%d tensors cannot be stored as requested (%s; e.g. %s: %s); effective %.2f bits/weight",
                len(stats.fallbacks),
                ", ".join(f"{k} x{v}" for k, v in moves.items()),
                stats.fallbacks[0].tensor,
                stats.fallbacks[0].reason,
                stats.bits_per_weight,
            )
        summary: dict[str, Any] = {
            "scheme": stats.scheme,
            "bits_per_weight": stats.bits_per_weight,
            "tensors_by_type": stats.tensors_by_type,
            "fallback_count": len(stats.fallbacks),
            "fallbacks": [fb.model_dump() for fb in stats.fallbacks],
            "max_abs_error": stats.max_abs_error,
            "quantized_by": "llama.cpp (at export)" if ctx.scheme.delegated_to_llama_cpp else "compressor",
        }
        new = artifact.evolve(
            self.name,
            model=model,
            scheme=ctx.scheme,
            quantized=packed,
            precision=ctx.scheme.weight_type,
        )
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        return StageResult(artifact=new, report=report)
