"""Blockwise int4/int8 codecs for onnxruntime's MatMulNBits and GatherBlockQuantized.

A weight matrix is taken as (N rows = output channels, K = input dim) and quantized in blocks of
``block`` consecutive elements along K, each with an fp32 scale (and, asymmetric, a zero point):

  * int4 symmetric: Q4_0's rule with an fp32 scale: d = (signed value of largest |x|) / -8,
    q = min(15, trunc(x / d + 8.5)), stored with the implicit zero point 8;
  * int4 asymmetric: range [min(x, 0), max(x, 0)], s = (max - min) / 15, z = round(-min / s),
    q = clip(round(x / s) + z, 0, 15);
  * int8 symmetric: s = max|x| / 127, q = round(x / s) + 128 (implicit zero point 128).

Dequantization is always ``(q - z) * s`` in float32. ``round`` is round-half-to-even (numpy and torch
agree), so the torch fake-quantizer used in distillation reproduces these values bit for bit.

Packing (verified against onnxruntime in tests): 4-bit codes go two per byte, element 2i in the low
nibble and 2i+1 in the high nibble; MatMulNBits takes B as (N, K/block, block*bits/8) and scales as
(N*K/block,); GatherBlockQuantized reads the same bytes as (N, K*bits/8) and scales as (N, K/block)
(the exporter adds Reshape nodes, so one copy serves the embedding and the tied head).
Zero points, when present, are packed like the codes along the block axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockQuant:
    """Codes (N, K/block, block) uint8, scales (N, K/block) fp32, zero points (N, K/block) or None."""

    bits: int
    block: int
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        n, nb, b = self.codes.shape
        return n, nb * b

    def implicit_zero_point(self) -> int:
        return 1 << (self.bits - 1)

    def dequantize(self) -> np.ndarray:
        z = self.zero_points if self.zero_points is not None else np.uint8(self.implicit_zero_point())
        zf = np.asarray(z, dtype=np.float32)
        if zf.ndim:
            zf = zf[..., None]
        q = self.codes.astype(np.float32) - zf
        return (q * self.scales[..., None]).reshape(self.shape).astype(np.float32)


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    x = np.ascontiguousarray(w, dtype=np.float32)
    n, k = x.shape
    if k % block:
        raise ValueError(f"row length {k} is not a multiple of the block size {block}")
    return x.reshape(n, k // block, block)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)


def quantize_int4_sym(w: np.ndarray, block: int) -> BlockQuant:
    x = _blocks(w, block)  # (N, nb, block)
    mag = np.abs(x)
    idx = np.argmax(mag, axis=-1)[..., None]
    signed_max = np.where(mag.max(-1) > 0, np.take_along_axis(x, idx, -1)[..., 0], np.float32(0.0))
    d = (signed_max / np.float32(-8.0)).astype(np.float32)
    q = np.minimum(15, np.trunc((x * _inverse(d)[..., None]).astype(np.float32) + np.float32(8.5)))
    return BlockQuant(4, block, q.astype(np.uint8), d, None)


def quantize_int4_asym(w: np.ndarray, block: int) -> BlockQuant:
    x = _blocks(w, block)
    lo = np.minimum(x.min(-1), np.float32(0.0))
    hi = np.maximum(x.max(-1), np.float32(0.0))
    s = ((hi - lo) / np.float32(15.0)).astype(np.float32)
    inv = _inverse(s)
    z = np.clip(np.round(-lo * inv), 0, 15).astype(np.float32)
    q = np.clip(np.round((x * inv[..., None]).astype(np.float32)) + z[..., None], 0, 15)
    return BlockQuant(4, block, q.astype(np.uint8), s, z.astype(np.uint8))


def quantize_int8_sym(w: np.ndarray, block: int) -> BlockQuant:
    x = _blocks(w, block)
    s = (np.abs(x).max(-1) / np.float32(127.0)).astype(np.float32)
    q = np.clip(np.round((x * _inverse(s)[..., None]).astype(np.float32)), -127, 127) + 128
    return BlockQuant(8, block, q.astype(np.uint8), s, None)


def quantize(kind: str, w: np.ndarray, block: int, symmetric: bool) -> BlockQuant:
    if kind == "int8":  # always symmetric: 255 levels leave no need for a zero point
        return quantize_int8_sym(w, block)
    if kind == "int4":
        return quantize_int4_sym(w, block) if symmetric else quantize_int4_asym(w, block)
    raise ValueError(f"no ONNX codec for {kind}")


def _pack_nibbles(a: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis (padded to even length), low nibble first."""
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), dtype=a.dtype)], axis=-1)
    return (a[..., 0::2] | (a[..., 1::2] << 4)).astype(np.uint8)


def matmul_nbits_tensors(bq: BlockQuant) -> dict[str, np.ndarray]:
    """B (N, nb, block*bits/8), scales (N*nb,), zero_points packed (N*ceil(nb*bits/8),) if any."""
    data = _pack_nibbles(bq.codes) if bq.bits == 4 else bq.codes
    out = {"B": np.ascontiguousarray(data), "scales": bq.scales.reshape(-1)}
    if bq.zero_points is not None:
        zp = _pack_nibbles(bq.zero_points) if bq.bits == 4 else bq.zero_points
        out["zero_points"] = np.ascontiguousarray(zp).reshape(-1)
    return out


def unpack_matmul_nbits(
    bits: int, block: int, b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int
) -> BlockQuant:
    """Read MatMulNBits initializers back into a BlockQuant (for tests and inspection)."""
    nb = k // block
    raw = b.reshape(n, nb, -1)
    codes = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(n, nb, block) if bits == 4 else raw
    zp = None
    if zero_points is not None:
        zr = zero_points.reshape(n, -1)
        zp = np.stack([zr & 0x0F, zr >> 4], axis=-1).reshape(n, -1)[:, :nb] if bits == 4 else zr[:, :nb]
    return BlockQuant(bits, block, codes.astype(np.uint8), scales.reshape(n, nb).astype(np.float32), zp)
