"""Every ggml block type we write ourselves: layouts, reference quantizers, packing, dequantization.

One registry (``CODECS``) from a type name to its codec. Q8_0 and Q4_0's reference quantizers live in
``ggml_blocks``; Q4_1, Q5_0 and Q5_1's are here; IQ4_NL's (a scale search) and the importance-weighted
searches for Q4_0/Q5_0 are in ``ggml_search``. The reference quantizers reproduce llama.cpp's
``quantize_row_*_ref`` bit for bit on x86-64 (fp32 arithmetic, no FMA, codes from the fp32 scale, fp16
only for storage), so our blocks equal the ones ``llama-quantize`` writes without an importance matrix
(tested against llama.cpp for every type). Why our own rather than gguf-py's ``quants`` module: it has
no imatrix path, and its Q4_0/Q5_0 emulate FMA rounding, which x86 builds of llama.cpp do not use.

Layouts (32 elements a block, little endian; ``qs[j]`` holds element j low, element j+16 high):
  Q4_0 = d + qs[16] (18 B)        Q4_1 = d, m + qs[16] (20 B)     IQ4_NL = d + qs[16] (18 B)
  Q5_0 = d + qh[4] + qs[16] (22 B) Q5_1 = d, m + qh[4] + qs[16] (24 B)   Q8_0 = d + int8[32] (34 B)
where d, m are fp16 and qh bit j is bit 4 of element j's 5-bit code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compressor import ggml_blocks as gb

QK = gb.QK
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "IQ4_NL": 18}
IQ4NL_VALUES = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)
F32 = np.float32


@dataclass(frozen=True)
class Blocks:
    """Quantized blocks of one matrix: fp16 scales ``d`` (n,), optional fp16 offsets ``m`` (n,),
    codes ``q`` (n, 32): uint8 (0..15 / 0..31, or IQ4_NL table indices) or int8 for Q8_0."""

    kind: str
    d: np.ndarray
    q: np.ndarray
    m: np.ndarray | None = None


def _inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)


def signed_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed value of the first element of strictly largest magnitude, +0.0 for an all-zero block;
    that magnitude) per block."""
    mag = np.abs(x)
    idx = np.argmax(mag, axis=1)
    amax = mag.max(axis=1)
    return np.where(amax > 0, x[np.arange(x.shape[0]), idx], F32(0.0)).astype(F32), amax


def quantize_q5_0(x: np.ndarray) -> Blocks:
    """``quantize_row_q5_0_ref``: d = max/-16, code = min(31, trunc(x*id + 16.5))."""
    x = gb._blocks(x)
    d = (signed_max(x)[0] / F32(-16.0)).astype(F32)
    shifted = (x * _inv(d)[:, None]).astype(F32) + F32(16.5)
    return Blocks("Q5_0", d.astype(np.float16), np.minimum(31, np.trunc(shifted)).astype(np.uint8))


def _min_max(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = ((hi - lo).astype(F32) / F32(levels)).astype(F32)
    codes = ((x - lo[:, None]).astype(F32) * _inv(d)[:, None]).astype(F32) + F32(0.5)
    return d, lo, np.trunc(codes)


def quantize_q4_1(x: np.ndarray) -> Blocks:
    """``quantize_row_q4_1_ref``: d = (max-min)/15, m = min, code = min(15, trunc((x-min)*id + 0.5))."""
    d, lo, codes = _min_max(gb._blocks(x), 15)
    return Blocks("Q4_1", d.astype(np.float16), np.minimum(15, codes).astype(np.uint8), lo.astype(np.float16))


def quantize_q5_1(x: np.ndarray) -> Blocks:
    """``quantize_row_q5_1_ref``: as Q4_1 with 31 levels (no clamp: codes cannot exceed 31)."""
    d, lo, codes = _min_max(gb._blocks(x), 31)
    return Blocks("Q5_1", d.astype(np.float16), codes.astype(np.uint8), lo.astype(np.float16))


def _nibbles(q: np.ndarray) -> np.ndarray:
    return ((q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)).astype(np.uint8)


def _qh(q: np.ndarray) -> np.ndarray:
    bits = ((q >> 4) & 1).astype(np.uint32)  # (n, 32): element j -> bit j
    word = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return word.astype("<u4").view(np.uint8).reshape(-1, 4)


def _half_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def pack(b: Blocks) -> np.ndarray:
    """Serialize to ggml's byte layout: (n_blocks, BLOCK_BYTES[kind]) uint8."""
    head = [_half_bytes(b.d)] + ([_half_bytes(b.m)] if b.m is not None else [])
    if b.kind == "Q8_0":
        body = [b.q.astype(np.int8).view(np.uint8)]
    elif b.kind in ("Q5_0", "Q5_1"):
        body = [_qh(b.q), _nibbles(b.q)]
    else:
        body = [_nibbles(b.q)]
    return np.concatenate(head + body, axis=1)


def unpack(kind: str, raw: np.ndarray) -> Blocks:
    """Inverse of ``pack``."""
    r = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES[kind])
    d = r[:, :2].copy().view(np.float16).reshape(-1)
    if kind == "Q8_0":
        return Blocks(kind, d, r[:, 2:].copy().view(np.int8))
    m = r[:, 2:4].copy().view(np.float16).reshape(-1) if kind in ("Q4_1", "Q5_1") else None
    off = 4 if m is not None else 2
    qh = None
    if kind in ("Q5_0", "Q5_1"):
        word = r[:, off : off + 4].copy().view("<u4").reshape(-1)
        qh = ((word[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
        off += 4
    qs = r[:, off:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.uint8)
    return Blocks(kind, d, q | qh if qh is not None else q, m)


def dequantize(b: Blocks) -> np.ndarray:
    """``dequantize_row_*``: (n_blocks, 32) float32, each product rounded as in C."""
    d = b.d.astype(F32)[:, None]
    if b.kind == "IQ4_NL":
        return (d * IQ4NL_VALUES[b.q]).astype(F32)
    if b.kind == "Q8_0":
        return (d * b.q.astype(F32)).astype(F32)
    if b.m is not None:  # Q4_1 / Q5_1: q*d + m, two roundings
        return ((b.q.astype(F32) * d).astype(F32) + b.m.astype(F32)[:, None]).astype(F32)
    offset = F32(8.0) if b.kind == "Q4_0" else F32(16.0)
    return ((b.q.astype(F32) - offset) * d).astype(F32)


def _q8_0(x: np.ndarray) -> Blocks:
    d, q = gb.quantize_q8_0(x)
    return Blocks("Q8_0", d, q)


def _q4_0(x: np.ndarray) -> Blocks:
    d, q = gb.quantize_q4_0(x)
    return Blocks("Q4_0", d, q)


def _iq4_nl(x: np.ndarray) -> Blocks:
    from compressor.ggml_search import search_iq4_nl

    return search_iq4_nl(x, None)


# Reference quantizers: what llama-quantize writes without an importance matrix.
REFERENCE: dict[str, Callable[[np.ndarray], Blocks]] = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": quantize_q4_1,
    "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1,
    "IQ4_NL": _iq4_nl,
}


def quantize_tensor(
    kind: str, w: np.ndarray, importance: np.ndarray | None = None, search: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a 2-D float matrix: (packed bytes (rows, bytes_per_row), dequantized copy).

    ``search``: the importance-weighted scale search (``ggml_search``) instead of the reference rule,
    weighted by ``importance`` (per input column, e.g. the mean squared activation) when given.
    """
    rows, cols = w.shape
    if kind == "F32":
        x = np.ascontiguousarray(w, dtype=F32)
        return x.view(np.uint8).reshape(rows, cols * 4), x
    if kind == "F16":
        h = np.ascontiguousarray(w, dtype=F32).astype(np.float16)
        return h.view(np.uint8).reshape(rows, cols * 2), h.astype(F32)
    if search:
        from compressor.ggml_search import weighted_quantize

        blocks = weighted_quantize(kind, w, importance)
    else:
        blocks = REFERENCE[kind](w)
    return pack(blocks).reshape(rows, -1), dequantize(blocks).reshape(rows, cols)
