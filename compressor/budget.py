"""Footprint projections and budget checks: pure functions, no I/O.

Every figure says whether it was *measured* (and where) or *estimated* (and from what).

Latency model (documented in docs/latency-model.md):
  decode_ms = max(bytes_per_token / (bandwidth * bandwidth_efficiency),
                  flops_per_token / (peak * compute_efficiency)) + per_token_overhead_ms
  where bytes_per_token = every weight read once (the tied embedding counts once, as the output head)
  + the KV cache read at the prompt length; flops_per_token = 2 * matmul weights.
  ttft_ms = prompt_tokens * flops_per_token / (peak * compute_efficiency) + decode_ms
RAM model: peak_ram = file bytes (weights are mapped and touched) + KV cache (F16) at the profile's
context length + runtime overhead_mib + the logits buffer for one prompt batch.
When a host measurement exists, device estimates are scaled by measured_host / roofline(host).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from compressor.artifact import ModelFacts, WeightInfo, kv_cache_bytes
from compressor.device_profile import Budgets, DeviceProfile, Measurement
from compressor.quant import QuantScheme, TensorPlan, TensorRole

MIB = 1024 * 1024
VOCAB_BYTES_PER_TOKEN = 40  # GGUF tokenizer metadata per vocab entry (token text, type, merge), estimate


class Provenance(StrEnum):
    MEASURED = "measured"
    ESTIMATED = "estimated"


class Figure(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: float
    unit: str
    provenance: Provenance
    where: str  # "host" or "device:<profile>"
    basis: str  # what it was measured with, or estimated from


class Footprint(BaseModel):
    model_config = ConfigDict(frozen=True)
    size: Figure  # MiB
    ram: Figure  # MiB
    decode: Figure | None = None  # ms/token (decoders)
    ttft: Figure | None = None  # ms (decoders)
    encode: Figure | None = None  # ms per batch (encoders)


class BudgetCheck(BaseModel):
    model_config = ConfigDict(frozen=True)
    budget: str  # field name in [budgets]
    limit: float
    value: float
    unit: str
    provenance: Provenance
    where: str
    passed: bool
    artifact: str = ""  # which file the check judges ("" for a projection)
    # False when the figure comes from a host measurement taken while other processes used the CPU:
    # a failure then says "re-measure on an idle machine" (exit 7), not "the budget is missed".
    reliable: bool = True

    @property
    def overshoot_ratio(self) -> float:
        return self.value / self.limit - 1.0


def plan_tensors(inventory: list[WeightInfo], scheme: QuantScheme) -> dict[str, TensorPlan]:
    return {w.name: scheme.plan(w.role, w.row_len, w.name) for w in inventory}


def weight_bytes(inventory: list[WeightInfo], plans: dict[str, TensorPlan]) -> float:
    return sum(w.numel * plans[w.name].bits / 8 for w in inventory)


def effective_bits_per_weight(inventory: list[WeightInfo], plans: dict[str, TensorPlan]) -> float:
    n = sum(w.numel for w in inventory)
    return 8 * weight_bytes(inventory, plans) / n


class ModelCost(BaseModel):
    """What the latency and RAM models need to know about a stored model."""

    model_config = ConfigDict(frozen=True)
    stored_bytes: float  # the file (or its projection)
    streamed_bytes: float  # weight bytes read per decoded token
    matmul_params: int  # weights multiplied per token (2 FLOPs each)
    kv_bytes_per_token: float  # K+V bytes one context position adds in every layer (F16 cache)
    kv_windows: tuple[int, ...] = ()  # per layer: sliding window (0 = whole context); () = none slide

    def kv_bytes(self, positions: int) -> float:
        """K+V bytes of a cache holding ``positions`` tokens (window layers keep only their window)."""
        if not self.kv_windows:
            return self.kv_bytes_per_token * positions
        per_layer = self.kv_bytes_per_token / len(self.kv_windows)
        return kv_cache_bytes(self.kv_windows, 1, positions, per_layer / 2)

    vocab_size: int
    quantized: bool  # llama.cpp then multiplies with 8-bit activations
    basis: str  # what stored_bytes is: an estimate at a scheme, or a file's bytes


def cost_from_plan(
    facts: ModelFacts,
    inventory: list[WeightInfo],
    plans: dict[str, TensorPlan],
    scheme_name: str,
    overhead_bytes: float | None = None,
) -> ModelCost:
    """Project the cost of storing ``inventory`` as ``plans`` (before any file exists).

    ``overhead_bytes``: the file's non-tensor bytes when known (header, vocabulary); else estimated."""
    tied = facts.tied_embeddings
    streamed = 0.0
    for w in inventory:
        if w.role is TensorRole.EMBEDDING and not tied:
            continue  # an untied embedding is a lookup: one row per token
        streamed += w.numel * plans[w.name].bits / 8
    matmul = sum(
        w.numel
        for w in inventory
        if w.role in (TensorRole.ATTENTION, TensorRole.MLP, TensorRole.OUTPUT)
        or (w.role is TensorRole.EMBEDDING and tied)
    )
    bpw = effective_bits_per_weight(inventory, plans)
    return ModelCost(
        stored_bytes=weight_bytes(inventory, plans)
        + (overhead_bytes if overhead_bytes is not None else facts.vocab_size * VOCAB_BYTES_PER_TOKEN),
        streamed_bytes=streamed,
        matmul_params=matmul,
        kv_bytes_per_token=facts.kv_cache_bytes(1),
        kv_windows=facts.layer_windows,
        vocab_size=facts.vocab_size,
        quantized=any(p.bits < 16 for p in plans.values()),
        basis=f"estimated: {scheme_name} at {bpw:.2f} bits/weight + tokenizer",
    )


def _peak_gflops(profile: DeviceProfile, cost: ModelCost) -> tuple[float, str]:
    peak = profile.hardware.peak
    if cost.quantized and peak.int8_gops:
        return peak.int8_gops, "int8"  # llama.cpp multiplies quantized weights with 8-bit activations
    return peak.fp32_gflops, "fp32"


def roofline_ms(cost: ModelCost, profile: DeviceProfile) -> tuple[float, float]:
    """(decode ms/token at the TTFT prompt length, TTFT ms) by the roofline model, uncalibrated.

    ``runtime.per_token_overhead_ms`` is the fixed cost every token pays whatever the model's size
    (graph build, thread barriers, sampling): the intercept of the line that published decode
    rates fit (docs/latency-model.md). It dominates for small models, so it is added, not maxed."""
    hw, prompt = profile.hardware, profile.budgets.ttft_prompt_tokens
    read = cost.streamed_bytes + cost.kv_bytes(prompt)
    mem_ms = read / (hw.memory_bandwidth_gbps * 1e9 * hw.bandwidth_efficiency_ratio) * 1e3
    gflops, _ = _peak_gflops(profile, cost)
    flop_ms = 2 * cost.matmul_params / (gflops * 1e9 * hw.compute_efficiency_ratio) * 1e3
    decode = max(mem_ms, flop_ms) + profile.runtime.per_token_overhead_ms
    return decode, prompt * flop_ms + decode


FLOAT_FILE_TYPES = frozenset({"F32", "F16", "BF16"})  # llama-bench type names of unquantized files


def published_cost(m: Measurement) -> ModelCost:
    """The cost of the model in a published measurement, from what llama-bench prints.

    The whole file counts as streamed (an untied embedding's row lookup is a few % of a file and is
    absorbed by the fit) and every parameter as multiplied; the KV cache of a tg128 run is
    negligible next to the weights, so it is left out."""
    size = m.file_mib * MIB
    return ModelCost(
        stored_bytes=size,
        streamed_bytes=size,
        matmul_params=round(m.params_b * 1e9),
        kv_bytes_per_token=0.0,
        vocab_size=0,
        quantized=m.quant.upper() not in FLOAT_FILE_TYPES,
        basis=f"published: {m.model} {m.quant}, {m.file_mib:g} MiB",
    )


class Calibration(BaseModel):
    """measured / roofline on the host, applied to the device's roofline."""

    model_config = ConfigDict(frozen=True)
    decode_scale: float = 1.0
    ttft_scale: float = 1.0
    basis: str = ""


def calibrate(cost: ModelCost, host: DeviceProfile, decode_ms: float, ttft_ms: float) -> Calibration:
    r_decode, r_ttft = roofline_ms(cost, host)
    return Calibration(
        decode_scale=decode_ms / r_decode,
        ttft_scale=ttft_ms / r_ttft,
        basis=f"host measurement (roofline x{decode_ms / r_decode:.2f} decode, x{ttft_ms / r_ttft:.2f} TTFT)",
    )


def project_footprint(
    cost: ModelCost,
    profile: DeviceProfile,
    calibration: Calibration | None = None,
    measured_size: bool = False,
    ram: Figure | None = None,
) -> Footprint:
    """Size, peak RAM, decode and TTFT of ``cost`` on ``profile``; see the module docstring."""
    where = f"device:{profile.name}"
    size = Figure(
        value=cost.stored_bytes / MIB,
        unit="MiB",
        where="file",
        basis=cost.basis,
        provenance=Provenance.MEASURED if measured_size else Provenance.ESTIMATED,
    )
    rt, prompt = profile.runtime, profile.budgets.ttft_prompt_tokens
    if ram is None:
        ram_b = (
            cost.stored_bytes
            + cost.kv_bytes(rt.context_length)
            + cost.vocab_size * 4 * min(prompt, 512)
            + rt.overhead_mib * MIB
        )
        ram = Figure(
            value=ram_b / MIB,
            unit="MiB",
            provenance=Provenance.ESTIMATED,
            where=where,
            basis=f"file + F16 KV cache at {rt.context_length} tokens + logits + "
            f"{rt.overhead_mib:g} MiB runtime overhead",
        )
    cal = calibration or Calibration()
    decode_ms, ttft_ms = roofline_ms(cost, profile)
    hw = profile.hardware
    gflops, prec = _peak_gflops(profile, cost)
    suffix = f"; {cal.basis}" if cal.basis else "; uncalibrated"
    decode = Figure(
        value=decode_ms * cal.decode_scale,
        unit="ms/token",
        provenance=Provenance.ESTIMATED,
        where=where,
        basis=f"roofline: {cost.streamed_bytes / MIB:.0f} MiB/token at "
        f"{hw.memory_bandwidth_gbps:g} GB/s x {hw.bandwidth_efficiency_ratio:g}{suffix}",
    )
    ttft = Figure(
        value=ttft_ms * cal.ttft_scale,
        unit="ms",
        provenance=Provenance.ESTIMATED,
        where=where,
        basis=f"{prompt}-token prompt at {gflops:g} G{prec}-ops/s x {hw.compute_efficiency_ratio:g}{suffix}",
    )
    return Footprint(size=size, ram=ram, decode=decode, ttft=ttft)


BUDGET_FIELDS = {
    "max_size_mib": "size",
    "max_ram_mib": "ram",
    "max_decode_ms_per_token": "decode",
    "max_ttft_ms": "ttft",
    "max_encode_ms": "encode",
}


def check_budgets(footprint: Footprint, budgets: Budgets, artifact: str = "") -> list[BudgetCheck]:
    """One check per budget the profile sets; figures come from ``footprint``."""
    checks = []
    for field, attr in BUDGET_FIELDS.items():
        limit = getattr(budgets, field)
        if limit is None:
            continue
        fig: Figure | None = getattr(footprint, attr)
        if fig is None:  # a figure this kind of model does not have (decode latency of an encoder)
            continue
        checks.append(
            BudgetCheck(
                budget=field,
                limit=limit,
                value=fig.value,
                unit=fig.unit,
                provenance=fig.provenance,
                where=fig.where,
                passed=fig.value <= limit,
                artifact=artifact,
            )
        )
    return checks


LATENCY_BUDGETS = ("max_decode_ms_per_token", "max_ttft_ms", "max_encode_ms")


def mark_unreliable(checks: list[BudgetCheck], why: str) -> list[BudgetCheck]:
    """The latency checks of ``checks`` marked unreliable (size and RAM do not depend on load)."""
    return [
        c.model_copy(update={"reliable": False, "where": f"{c.where}; unreliable: {why}"})
        if c.budget in LATENCY_BUDGETS
        else c
        for c in checks
    ]


def split_failures(checks: list[BudgetCheck]) -> tuple[list[str], list[str]]:
    """(failures to trust, failures measured on a busy host)."""
    return (
        describe_failures([c for c in checks if c.reliable]),
        describe_failures([c for c in checks if not c.reliable]),
    )


def describe_failures(checks: list[BudgetCheck]) -> list[str]:
    return [
        f"{c.artifact + ': ' if c.artifact else ''}{c.budget}: {c.provenance.value} {c.value:.1f} {c.unit} "
        f"({c.where}) > limit {c.limit:g} {c.unit} "
        f"(over by {c.value - c.limit:.1f} {c.unit}, {100 * c.overshoot_ratio:.0f}%)"
        for c in checks
        if not c.passed
    ]
