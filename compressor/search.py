"""The plan search ``compress`` runs when neither the format's scheme nor the pruning is pinned.

Cheap first:
1. **Enumerate**: the formats the profile's runtime takes (or ``--formats``) x the uniform types of
   each (Q4_0 ... Q8_0, F16; onnx int4/int8/fp32) x mixed-precision plans at byte targets from the
   smallest a plan can be to the most the budgets allow (and at each uniform type's size, so every
   uniform candidate has a mixed rival of the same bytes).
2. **Project**: every candidate's footprint by the budget model; what cannot fit is dropped, with the
   budget it misses and by how much. (``compressor plan`` stops here.)
3. **Proxy**: the rest are ranked by KL to the teacher on a calibration sample, computed in torch with
   the weights each candidate's exact quantizers produce (the importance-weighted search's blocks, the
   same ones PTQ starts from). Mixed plans are allocated here (Fisher sensitivities + knapsack).
4. **Finalists**: the best ``finalists`` are quantized as the pipeline would (GPTQ on the calibration
   text), exported, validated and measured in the real runtime, with KL to the teacher on held-out
   text measured in that runtime; the fitting one with the least measured KL is chosen.

No quantization fitting leads the pipeline to prune (``prune_auto``) and search again on the pruned
model; that part lives in ``pipeline.py`` because it runs stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compressor.artifact import ModelArtifact, WeightInfo, weight_inventory
from compressor.budget import (
    MIB,
    Calibration,
    ModelCost,
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
)
from compressor.device_profile import DeviceProfile, Engine
from compressor.quant import ExportFormat, QuantScheme

log = logging.getLogger(__name__)

UNIFORM = {
    ExportFormat.GGUF: ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16"),
    ExportFormat.ONNX: ("int4", "int8", "fp32"),
}
# The order the proxy quantizes types in (most useful first), so a short time budget drops the least.
OPTION_ORDER = {
    ExportFormat.GGUF: ("IQ4_NL", "Q8_0", "Q5_0", "Q4_0", "Q5_1", "Q4_1"),
    ExportFormat.ONNX: ("int4", "int8"),
}
FLOAT_TYPES = ("F16", "F32", "fp32")
EVAL_SEQUENCES = 4  # calibration sequences (256 tokens each) the proxy KL is computed on


@dataclass
class Candidate:
    """One configuration the search considered, and what became of it."""

    label: str
    scheme: QuantScheme
    target_bytes: float | None = None  # mixed plans: bytes of the 2-D weights
    projected: dict[str, float] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    proxy_kl: float | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    status: str = "projected"  # projected | dropped | ranked | finalist | chosen
    why: str = ""
    overshoot: float = 0.0  # the largest relative overshoot of a budget (0: fits)

    @property
    def fits(self) -> bool:
        return not self.misses

    def row(self) -> dict[str, Any]:
        return {
            "candidate": self.label,
            "scheme": self.scheme.name,
            "status": self.status,
            "why": self.why,
            "projected": {k: round(v, 3) for k, v in self.projected.items()},
            "misses": self.misses,
            "proxy_kl": None if self.proxy_kl is None else round(self.proxy_kl, 5),
            "measured": self.measured,
        }


def type_menu(fmt: ExportFormat, mixed_types: str | None) -> tuple[str, ...]:
    """The block types the search may use for ``fmt``: ``--mixed-types`` restricts them."""
    given = {t.strip().upper() for t in (mixed_types or "").split(",") if t.strip()}
    menu = tuple(t for t in OPTION_ORDER[fmt] if t.upper() in given)
    return menu or OPTION_ORDER[fmt]


def formats_for(profile: DeviceProfile, pinned: list[ExportFormat] | None) -> list[ExportFormat]:
    """The formats to search: ``--formats`` when given, else the profile runtime's own."""
    if pinned:
        return pinned
    onnx = profile.runtime.engine in (Engine.ONNXRUNTIME, Engine.ONNXRUNTIME_GENAI)
    return [ExportFormat.ONNX if onnx else ExportFormat.GGUF]


def _mixed_scheme(fmt: ExportFormat, menu: tuple[str, ...] | None = None) -> QuantScheme:
    scheme = QuantScheme.parse("gguf:mixed" if fmt is ExportFormat.GGUF else "onnx:mixed")
    if not menu:
        return scheme
    return scheme.model_copy(update={"mixed_types": tuple(t for t in scheme.mixed_types if t in menu)})


def matrix_bytes(inventory: list[WeightInfo], scheme: QuantScheme) -> float:
    plans = plan_tensors(inventory, scheme)
    return sum(w.numel * plans[w.name].bits / 8 for w in inventory if len(w.shape) == 2)


class Projector:
    """Projected footprints of candidates of one model on one profile (no quantization done)."""

    def __init__(
        self,
        artifact: ModelArtifact,
        profile: DeviceProfile,
        overhead: Callable[[QuantScheme], float],
        calibration: Calibration | None = None,
    ):
        self.facts, self.profile, self.calibration = artifact.facts, profile, calibration
        self.inventory = weight_inventory(artifact.model)
        self.overhead = overhead

    def cost(self, scheme: QuantScheme, target_bytes: float | None = None) -> ModelCost:
        plans = plan_tensors(self.inventory, scheme)
        cost = cost_from_plan(self.facts, self.inventory, plans, scheme.name, self.overhead(scheme))
        if target_bytes is None or scheme.overrides:
            return cost
        extra = target_bytes - matrix_bytes(self.inventory, scheme)  # a plan at the cheapest types + extra
        bpw = 8 * target_bytes / sum(w.numel for w in self.inventory if len(w.shape) == 2)
        return cost.model_copy(
            update={
                "stored_bytes": cost.stored_bytes + extra,
                "streamed_bytes": cost.streamed_bytes + extra,
                "basis": f"estimated: {scheme.name} plan at {bpw:.2f} bits/weight (matrices) + tokenizer",
            }
        )

    def project(self, cand: Candidate) -> Candidate:
        fp = project_footprint(self.cost(cand.scheme, cand.target_bytes), self.profile, self.calibration)
        cand.projected = {"size_mib": fp.size.value, "ram_mib": fp.ram.value}
        if fp.decode is not None and fp.ttft is not None:
            cand.projected.update(decode_ms=fp.decode.value, ttft_ms=fp.ttft.value)
        n = sum(w.numel for w in self.inventory if len(w.shape) == 2)
        matrices = cand.target_bytes if cand.target_bytes is not None and not cand.scheme.overrides else None
        bytes_2d = matrices if matrices is not None else matrix_bytes(self.inventory, cand.scheme)
        cand.projected["bits_per_weight"] = 8 * bytes_2d / n
        checks = check_budgets(fp, self.profile.budgets)
        cand.misses = describe_failures(checks)
        cand.overshoot = max([c.overshoot_ratio for c in checks if not c.passed], default=0.0)
        if cand.misses:
            cand.status, cand.why = "dropped", "projected to miss: " + "; ".join(cand.misses)
        return cand

    def max_bytes(self, scheme: QuantScheme, lo: float, hi: float) -> float | None:
        """The most 2-D weight bytes (in [lo, hi]) a plan of ``scheme`` may hold and still fit."""

        def fits(b: float) -> bool:
            fp = project_footprint(self.cost(scheme, b), self.profile, self.calibration)
            return not describe_failures(check_budgets(fp, self.profile.budgets))

        if not fits(lo):
            return None
        if fits(hi):
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


def enumerate_candidates(
    artifact: ModelArtifact,
    profile: DeviceProfile,
    formats: list[ExportFormat],
    overhead: Callable[[QuantScheme], float],
    mixed_types: str | None = None,
    calibration: Calibration | None = None,
) -> tuple[list[Candidate], Projector]:
    """Every candidate with its projection (dropped ones say why); ``mixed_types`` limits the types;
    ``calibration``: host measured / roofline of this model in its runtime (latency figures scale by it)."""
    proj = Projector(artifact, profile, overhead, calibration)
    out: list[Candidate] = []
    for fmt in formats:
        menu = type_menu(fmt, mixed_types)
        uniform = [proj.project(Candidate(s.name, s)) for s in _uniform_schemes(fmt, menu)]
        out += uniform
        mixed = _mixed_scheme(fmt, menu)
        floor = matrix_bytes(proj.inventory, mixed)  # every matrix at the cheapest allowed type
        top_type = max(menu, key=mixed.bits)
        ceiling = matrix_bytes(proj.inventory, mixed.model_copy(update={"mixed_types": (top_type,)}))
        best = proj.max_bytes(mixed, floor, ceiling)
        if best is None:
            c = proj.project(Candidate(f"{mixed.name} (smallest)", mixed, floor))
            out.append(c)
            continue
        targets = {round(best), round(floor)}
        for u in uniform:
            b = matrix_bytes(proj.inventory, u.scheme)
            if floor * 1.01 < b < best * 0.99 and u.scheme.weight_type not in FLOAT_TYPES:
                targets.add(round(b))
        for b in sorted(targets):
            label = f"{mixed.name} <= {b / MIB:.{1 if b >= 10 * MIB else 3}f} MiB"
            out.append(proj.project(Candidate(label, mixed, float(b))))
    return out, proj


def _uniform_schemes(fmt: ExportFormat, menu: tuple[str, ...]) -> list[QuantScheme]:
    prefix = "gguf" if fmt is ExportFormat.GGUF else "onnx"
    return [QuantScheme.parse(f"{prefix}:{t}") for t in UNIFORM[fmt] if t in menu or t in FLOAT_TYPES]


# --- the proxy ---------------------------------------------------------------------------------


@dataclass
class ProxyData:
    """What ranking needs once per model: calibration batches, statistics, every tensor's options."""

    batches: list[torch.Tensor]
    importance: dict[str, np.ndarray]
    fisher: dict[str, torch.Tensor]
    fisher_tokens: int
    options: dict[ExportFormat, dict[str, list[Any]]]
    teacher_logp: list[torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    types_done: dict[ExportFormat, list[str]] = field(default_factory=dict)


def prepare_proxy(
    model: Any,
    batches: list[torch.Tensor],
    formats: list[ExportFormat],
    deadline: float | None,
    status: Callable[[str], None],
    menu: tuple[str, ...] | None = None,
    teacher: Any = None,
) -> ProxyData:
    """Statistics and the options of every tensor in every type (types in OPTION_ORDER; past the
    ``deadline`` (time.monotonic) only the first two of each format are computed)."""
    from stages.calib_stats import fisher_diagonal, input_importance
    from stages.mixed import tensor_options
    from stages.quantize import FISHER_SEQUENCES

    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    status("calibration statistics (input importance)")
    importance = input_importance(model, batches, None)
    secs["importance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    status("Fisher sensitivities")
    fisher, tokens = fisher_diagonal(model, batches[:FISHER_SEQUENCES])
    secs["fisher"] = time.perf_counter() - t0
    options: dict[ExportFormat, dict[str, list[Any]]] = {}
    done: dict[ExportFormat, list[str]] = {}
    for fmt in formats:
        merged: dict[str, list[Any]] = {}
        done[fmt] = []
        for i, kind in enumerate(menu or OPTION_ORDER[fmt]):
            if i >= 2 and deadline is not None and time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            status(f"quantizing every tensor to {kind} (importance-weighted search)")
            scheme = _mixed_scheme(fmt).model_copy(update={"mixed_types": (kind,)})
            for name, opts in tensor_options(model, scheme, fisher, tokens, importance).items():
                merged.setdefault(name, []).extend(o for o in opts if o.kind == kind)
            secs[f"options_{kind}"] = time.perf_counter() - t0
            done[fmt].append(kind)
        options[fmt] = {n: sorted(o, key=lambda o: o.size_bytes) for n, o in merged.items()}
    status("teacher logits on the proxy sample")
    with torch.no_grad():
        ref = teacher if teacher is not None else model  # a pruned student is ranked against its teacher
        logp = [F.log_softmax(ref(b).logits[0].float(), -1) for b in batches[:EVAL_SEQUENCES]]
    return ProxyData(batches, importance, fisher, tokens, options, logp, secs, done)


def _dequantized(opt: Any) -> np.ndarray:
    from compressor.ggml_types import Blocks, dequantize

    if isinstance(opt.blocks, Blocks):
        return dequantize(opt.blocks)
    return opt.blocks.dequantize()


def assignment(cand: Candidate, data: ProxyData, inventory: list[WeightInfo]) -> dict[str, str] | None:
    """tensor -> type of ``cand`` (None: a type the proxy did not compute, e.g. past the deadline)."""
    fmt = cand.scheme.format
    plans = plan_tensors(inventory, cand.scheme)
    out = {}
    for w in inventory:
        if len(w.shape) != 2:
            continue
        kind = plans[w.name].effective
        if kind not in FLOAT_TYPES and kind not in data.types_done[fmt]:
            return None
        out[w.name] = kind
    return out


def blocks_of(cand: Candidate, data: ProxyData, inventory: list[WeightInfo]) -> dict[str, Any]:
    """The weighted-search blocks of ``cand``'s plan, by tensor (what GPTQ starts from)."""
    plans = plan_tensors(inventory, cand.scheme)
    out = {}
    for name, opts in data.options[cand.scheme.format].items():
        for o in opts:
            if o.kind == plans[name].effective and o.blocks is not None:
                out[name] = o.blocks
    return out


def allocate_mixed(cand: Candidate, data: ProxyData) -> bool:
    """Choose each tensor's type for a mixed candidate (its scheme gets the plan); False: no plan fits."""
    from stages.mixed import allocate

    opts = data.options[cand.scheme.format]
    try:
        chosen = allocate(opts, cand.target_bytes or 0.0)
    except ValueError:
        return False
    cand.scheme = cand.scheme.with_overrides({n: o.kind for n, o in chosen.items()})
    return True


@torch.no_grad()
def proxy_kl(model: Any, source: Any, cand: Candidate, data: ProxyData, types: dict[str, str]) -> float:
    """Mean KL(teacher || candidate) per token on the proxy sample; ``model`` is a scratch copy of the
    float model being quantized (``source``) whose 2-D weights are overwritten with the candidate's
    dequantized ones (float types: ``source``'s own, cast)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    ref = dict(source.named_parameters(remove_duplicate=False))
    opts = data.options[cand.scheme.format]
    for name, kind in types.items():
        if kind in FLOAT_TYPES:
            w = ref[name].detach()
            params[name].copy_(w.half().float() if kind == "F16" else w)
            continue
        opt = next(o for o in opts[name] if o.kind == kind)
        params[name].copy_(torch.from_numpy(_dequantized(opt)).reshape(params[name].shape))
    kl, n = 0.0, 0
    for b, lt in zip(data.batches, data.teacher_logp, strict=False):
        ls = F.log_softmax(model(b).logits[0].float(), -1)
        kl += float((lt.exp() * (lt - ls)).sum(-1)[:-1].sum())
        n += b.shape[1] - 1
    return kl / max(n, 1)


def heldout_kl(teacher_logits: np.ndarray, runtime_logits: np.ndarray) -> dict[str, float]:
    """Mean KL(teacher || file) and top-1 agreement, float64 (both (T, V))."""
    t = torch.from_numpy(teacher_logits).double().log_softmax(-1)
    s = torch.from_numpy(runtime_logits).double().log_softmax(-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return {
        "kl": float(kl.mean()),
        "top1": float((t.argmax(-1) == s.argmax(-1)).double().mean()),
    }


def closest(cands: list[Candidate]) -> Candidate | None:
    """The candidate that misses its budgets by the least (smallest largest relative overshoot)."""
    missed = [c for c in cands if c.misses]
    return min(missed, key=lambda c: c.overshoot) if missed else None
