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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from compressor import onnx_blocks
from compressor.artifact import ModelArtifact, QuantizedTensor, weight_inventory
from compressor.budget import effective_bits_per_weight, plan_tensors
from compressor.errors import BudgetExceeded, ConfigError
from compressor.ggml_search import weighted_quantize
from compressor.ggml_types import REFERENCE, Blocks, dequantize, pack, quantize_tensor
from compressor.onnx_blocks import BlockQuant
from compressor.onnx_search import weighted_quantize_onnx
from compressor.quant import ExportFormat, PtqMethod, QuantScheme, TensorRole
from compressor.report import StageReport
from compressor.stage import StageContext, StageResult
from stages.calib_stats import fisher_diagonal, input_importance
from stages.gptq import GPTQ_TYPES, ONNX_GPTQ_TYPES, gptq_blocks, gptq_onnx
from stages.mixed import allocate, tensor_options

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


def pack_weight(
    scheme: QuantScheme, kind: str, w: np.ndarray, importance: np.ndarray | None = None, search: bool = False
) -> tuple[Any, np.ndarray]:
    """(what the exporter writes, the dequantized weight) for one (rows, row_len) matrix."""
    if scheme.format is ExportFormat.ONNX:
        if search:
            bq = weighted_quantize_onnx(
                kind, w, scheme.block_for(kind, w.shape[-1]), scheme.symmetric, importance
            )
        else:
            bq = onnx_blocks.quantize(kind, w, scheme.block_for(kind, w.shape[-1]), scheme.symmetric)
        return bq, bq.dequantize()
    return quantize_tensor(kind, w, importance, search)


def quantize_model(
    model: Any,
    scheme: QuantScheme,
    importance: dict[str, np.ndarray] | None = None,
    search: bool = False,
    done: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, QuantizedTensor], QuantStats]:
    """Quantize ``model`` in place to ``scheme``; return it, the packed tensors and the stats.

    ``search``: importance-weighted scale search (GGUF types), weighted by ``importance`` (inventory
    name -> mean squared input per column) where given; otherwise each type's reference rule.
    ``done``: tensors already quantized (a mixed plan's chosen blocks), packed as they are."""
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
        imp = importance.get(w.name) if importance else None
        chosen = done.get(w.name) if done else None
        data: Any
        if isinstance(chosen, BlockQuant) and scheme.format is ExportFormat.ONNX:
            data, deq = chosen, chosen.dequantize()
        elif isinstance(chosen, Blocks) and chosen.kind == kind:
            data, deq = pack(chosen).reshape(w.shape[0], -1), dequantize(chosen).reshape(w.shape)
        else:
            data, deq = pack_weight(scheme, kind, p.detach().float().numpy(), imp, search)
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


@dataclass(frozen=True)
class QuantizeStage:
    """``method``: "rtn" (each type's reference rule, what QAT trained through) or "weighted" (scale
    search, weighted by the input importance when ``calibration`` batches are given). A mixed scheme
    also needs ``calibration`` and ``budget_bytes`` (for its 2-D weights) to choose each tensor's type."""

    method: PtqMethod = PtqMethod.RTN
    calibration: list[torch.Tensor] | None = None
    budget_bytes: float | None = None
    learned: dict[str, Blocks] | None = None  # blocks QAT trained (scales and codes), written as they are
    learned_scheme: QuantScheme | None = None  # the scheme QAT trained through (a mixed plan resolved)
    learned_summary: dict[str, Any] = field(default_factory=dict)
    # blocks already computed by the same importance-weighted search (the plan search's), a cache:
    # GPTQ starts from them instead of searching the scales again; the result is the same
    start: dict[str, Blocks] = field(default_factory=dict)
    name: str = "quantize"

    def prepare(self, model: Any, scheme: QuantScheme) -> tuple[QuantScheme, Any, dict[str, Blocks], dict]:
        """The calibration statistics, the mixed plan and GPTQ's codes: (resolved scheme, importance
        by weight name or None, blocks chosen so far by weight name, report fields)."""
        importance, extra = None, dict[str, Any]()
        grams: dict[str, np.ndarray] | None = {} if self.method is PtqMethod.GPTQ else None
        if self.calibration and self.method is not PtqMethod.RTN:
            importance = input_importance(model, self.calibration, grams)
        plans = plan_tensors(weight_inventory(model), scheme)
        done: dict[str, Blocks] = {
            n: b for n, b in self.start.items() if isinstance(b, Blocks) and plans[n].effective == b.kind
        }
        if scheme.is_mixed and not scheme.overrides:  # a plan not yet chosen (a recipe pins one)
            scheme, extra, done = self._choose_types(model, scheme, importance or {})
        if grams and not scheme.delegated_to_llama_cpp:
            t0 = time.perf_counter()
            done = _gptq_all(model, scheme, importance or {}, grams, done)
            extra["gptq_seconds"] = round(time.perf_counter() - t0, 1)
            extra["gptq_tensors"] = len(done)
        return scheme, importance, done, extra

    def ptq_blocks(self, model: Any, scheme: QuantScheme) -> tuple[QuantScheme, dict[str, Blocks], dict]:
        """What PTQ would write for every 2-D weight we pack as ggml blocks (QAT starts from it)."""
        scheme, importance, done, extra = self.prepare(model, scheme)
        params = dict(model.named_parameters(remove_duplicate=False))
        plans = plan_tensors(weight_inventory(model), scheme)
        search = self.method is not PtqMethod.RTN
        for name, pl in plans.items():
            kind = pl.effective
            if name in done or kind not in REFERENCE or len(params[name].shape) != 2:
                continue
            w = params[name].detach().float().numpy()
            imp = importance.get(name) if importance else None
            done[name] = weighted_quantize(kind, w, imp) if search else REFERENCE[kind](w)
        extra["ptq"] = self.method.value
        return scheme, done, extra

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        if self.learned is not None:  # QAT's trained blocks: packed as they are, nothing re-chosen
            scheme, importance, done = self.learned_scheme or ctx.scheme, None, self.learned
            extra: dict[str, Any] = {"tensors_from_qat": len(done), **self.learned_summary}
        else:
            scheme, importance, done, extra = self.prepare(artifact.model, ctx.scheme)
        search = self.method is not PtqMethod.RTN
        model, packed, stats = quantize_model(artifact.model, scheme, importance, search, done)
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
            "ptq": "learned (QAT)" if self.learned is not None else self.method.value,
            "importance": "calibration activations" if importance else "none",
            **extra,
        }
        new = artifact.evolve(
            self.name,
            model=model,
            scheme=scheme,
            quantized=packed,
            precision=ctx.scheme.weight_type,
        )
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        return StageResult(artifact=new, report=report)

    def _choose_types(
        self, model: Any, scheme: QuantScheme, importance: dict[str, np.ndarray]
    ) -> tuple[QuantScheme, dict[str, Any], dict[str, Any]]:
        """The mixed plan: Fisher sensitivities of every (tensor, type), then the knapsack."""
        if not self.calibration or self.budget_bytes is None:
            raise ConfigError("gguf:mixed needs calibration text and a size budget (--max-size-mib)")
        t0 = time.perf_counter()
        fisher, tokens = fisher_diagonal(model, self.calibration[:FISHER_SEQUENCES])
        options = tensor_options(model, scheme, fisher, tokens, importance)
        try:
            chosen = allocate(options, self.budget_bytes)
        except ValueError:
            floor = sum(o[0].size_bytes for o in options.values()) / 2**20
            raise BudgetExceeded(
                f"gguf:mixed: even the cheapest allowed types need {floor:.1f} MiB of weights, more than "
                f"the {self.budget_bytes / 2**20:.1f} MiB the size budget leaves for them"
            ) from None
        by_group: dict[str, Counter[str]] = {}
        for n, o in chosen.items():
            by_group.setdefault(_group(n), Counter())[o.kind] += 1
        extra = {
            "mixed_plan": {g: dict(c) for g, c in sorted(by_group.items())},
            "mixed_weight_mib": round(sum(o.size_bytes for o in chosen.values()) / 2**20, 3),
            "mixed_budget_mib": round(self.budget_bytes / 2**20, 3),
            "mixed_predicted_kl": round(sum(o.kl for o in chosen.values()), 5),
            "mixed_seconds": round(time.perf_counter() - t0, 1),
            "fisher_sequences": min(len(self.calibration), FISHER_SEQUENCES),
        }
        blocks = {n: o.blocks for n, o in chosen.items() if o.blocks is not None}
        return scheme.with_overrides({n: o.kind for n, o in chosen.items()}), extra, blocks


FISHER_SEQUENCES = 8


def _gptq_all(
    model: Any,
    scheme: QuantScheme,
    importance: dict[str, np.ndarray],
    grams: dict[str, np.ndarray],
    done: dict[str, Any],
) -> dict[str, Any]:
    """GPTQ codes for every 2-D weight with a Gram matrix (not the embedding: it is also a lookup),
    on ggml's grids (``Blocks``) or ONNX's (``BlockQuant``), from the weighted search's scales."""
    params = dict(model.named_parameters(remove_duplicate=False))
    plans = plan_tensors(weight_inventory(model), scheme)
    onnx = scheme.format is ExportFormat.ONNX
    out = dict(done)
    for w in weight_inventory(model):
        kind = plans[w.name].effective
        if w.name not in grams or w.role is TensorRole.EMBEDDING:
            continue
        x = params[w.name].detach().float().numpy()
        imp = importance.get(w.name)
        if onnx and kind in ONNX_GPTQ_TYPES:
            start = weighted_quantize_onnx(
                kind, x, scheme.block_for(kind, x.shape[-1]), scheme.symmetric, imp
            )
            out[w.name] = gptq_onnx(kind, x, grams[w.name], start)
        elif not onnx and kind in GPTQ_TYPES:
            begin = done.get(w.name) or weighted_quantize(kind, x, imp)
            out[w.name] = gptq_blocks(kind, x, grams[w.name], begin)
    return out


def _group(name: str) -> str:
    """'model.layers.3.mlp.down_proj.weight' -> 'mlp.down_proj' (a tensor's role across layers)."""
    parts = name.removesuffix(".weight").split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return ".".join(parts[i + 2 :])
    return ".".join(parts[-2:])
