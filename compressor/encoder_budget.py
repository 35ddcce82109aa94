"""Footprint of an encoder: size, peak RAM and the latency of one batch; pure functions, no I/O.

Latency model (the decoders' roofline, applied to a batch; docs/latency-model.md):
  encode_ms = max(matmul weight bytes / (bandwidth x bandwidth_efficiency),
                  flops / (peak x compute_efficiency)) + per_token_overhead_ms (one launch per batch)
  flops = N x L x 2 x matmul weights + N x layers x 4 x L^2 x attention width (scores and mixing)
with N = ``budgets.encode_batch`` inputs of L = ``budgets.encode_tokens`` tokens. Quantized weights
use the int8 peak (MatMulNBits' int8 compute, llama.cpp's 8-bit activations), else fp32.
RAM model: file bytes + the activations of one batch in fp32 (residual stream, FFN, attention scores
of one layer at a time, x2 for in/out buffers) + runtime overhead_mib. Encoders keep no KV cache.
When a host measurement exists, the device estimate is scaled by measured_host / roofline(host).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from compressor.artifact import ModelFacts, WeightInfo
from compressor.budget import MIB, Figure, Footprint, Provenance, effective_bits_per_weight, weight_bytes
from compressor.device_profile import DeviceProfile
from compressor.quant import TensorPlan, TensorRole

VOCAB_BYTES = 16  # tokenizer data per vocab entry inside a GGUF (WordPiece strings are short)


class EncoderCost(BaseModel):
    model_config = ConfigDict(frozen=True)
    stored_bytes: float
    matmul_bytes: float  # weight bytes multiplied per batch (embeddings are lookups)
    matmul_params: int
    n_layers: int
    hidden: int
    attn_width: int  # heads x head_dim
    intermediate: int
    quantized: bool
    basis: str


def encoder_cost(
    facts: ModelFacts,
    inventory: list[WeightInfo],
    plans: dict[str, TensorPlan],
    scheme_name: str,
    overhead_bytes: float | None = None,
) -> EncoderCost:
    mat = [w for w in inventory if w.role in (TensorRole.ATTENTION, TensorRole.MLP, TensorRole.OUTPUT)]
    bpw = effective_bits_per_weight(inventory, plans)
    extra = overhead_bytes if overhead_bytes is not None else facts.vocab_size * VOCAB_BYTES
    return EncoderCost(
        stored_bytes=weight_bytes(inventory, plans) + extra,
        matmul_bytes=sum(w.numel * plans[w.name].bits / 8 for w in mat),
        matmul_params=sum(w.numel for w in mat),
        n_layers=facts.n_layers,
        hidden=facts.hidden_size,
        attn_width=facts.n_heads * facts.head_dim,
        intermediate=facts.intermediate_size,
        quantized=any(plans[w.name].bits < 16 for w in mat),
        basis=f"estimated: {scheme_name} at {bpw:.2f} bits/weight + tokenizer",
    )


def _peak(profile: DeviceProfile, cost: EncoderCost) -> tuple[float, str]:
    peak = profile.hardware.peak
    if cost.quantized and peak.int8_gops:
        return peak.int8_gops, "int8"
    return peak.fp32_gflops, "fp32"


def encode_flops(cost: EncoderCost, batch: int, tokens: int) -> float:
    return (
        batch * tokens * 2.0 * cost.matmul_params + batch * cost.n_layers * 4.0 * tokens**2 * cost.attn_width
    )


def encode_roofline_ms(cost: EncoderCost, profile: DeviceProfile) -> float:
    hw, b = profile.hardware, profile.budgets
    mem_ms = cost.matmul_bytes / (hw.memory_bandwidth_gbps * 1e9 * hw.bandwidth_efficiency_ratio) * 1e3
    gops, _ = _peak(profile, cost)
    flop_ms = (
        encode_flops(cost, b.encode_batch, b.encode_tokens) / (gops * 1e9 * hw.compute_efficiency_ratio) * 1e3
    )
    return max(mem_ms, flop_ms) + profile.runtime.per_token_overhead_ms


def activation_bytes(cost: EncoderCost, batch: int, tokens: int, heads: int) -> float:
    per_token = 4 * cost.hidden + cost.intermediate + heads * tokens  # fp32 values live in one layer
    return 2 * 4.0 * batch * tokens * per_token


def encoder_footprint(
    cost: EncoderCost,
    profile: DeviceProfile,
    heads: int,
    scale: float = 1.0,
    scale_basis: str = "",
    measured_size: bool = False,
    ram: Figure | None = None,
) -> Footprint:
    where = f"device:{profile.name}"
    b, rt, hw = profile.budgets, profile.runtime, profile.hardware
    size = Figure(
        value=cost.stored_bytes / MIB,
        unit="MiB",
        where="file",
        basis=cost.basis,
        provenance=Provenance.MEASURED if measured_size else Provenance.ESTIMATED,
    )
    if ram is None:
        act = activation_bytes(cost, b.encode_batch, b.encode_tokens, heads)
        ram = Figure(
            value=(cost.stored_bytes + act) / MIB + rt.overhead_mib,
            unit="MiB",
            provenance=Provenance.ESTIMATED,
            where=where,
            basis=f"file + fp32 activations of a {b.encode_batch}x{b.encode_tokens}-token batch "
            f"({act / MIB:.0f} MiB) + {rt.overhead_mib:g} MiB runtime overhead",
        )
    gops, prec = _peak(profile, cost)
    flops = encode_flops(cost, b.encode_batch, b.encode_tokens)
    encode = Figure(
        value=encode_roofline_ms(cost, profile) * scale,
        unit="ms/batch",
        provenance=Provenance.ESTIMATED,
        where=where,
        basis=f"roofline: {flops / 1e9:.1f} G{prec}-ops for {b.encode_batch}x{b.encode_tokens} tokens at "
        f"{gops:g} G/s x {hw.compute_efficiency_ratio:g}; " + (scale_basis or "uncalibrated"),
    )
    return Footprint(size=size, ram=ram, encode=encode)
