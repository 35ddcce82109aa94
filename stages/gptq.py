"""GPTQ-style error compensation on ggml's block grids (Q4_0, Q5_0, IQ4_NL, Q8_0) and ONNX's (int4, int8).

Each block keeps the scale the importance-weighted search chose for the original weights ("static
groups"); GPTQ then picks the codes one input column at a time and pushes each column's rounding error
onto the columns not yet quantized, weighted by the inverse of the layer's input Gram matrix
H = X^T X, so the layer's *output* error on the calibration activations is what gets minimised rather
than each weight's own error. Columns go in order of decreasing H diagonal (the most active inputs
first, "act-order"; static groups make that safe), with dampening of 30% of the mean diagonal
(on SmolLM2, 1% overfit the calibration text: KL on other text rose) and lazy batch updates of 128
columns. The result is ordinary blocks: the same fp16 scales, other codes, and
the codes are chosen against the stored fp16 scale, so what llama.cpp dequantizes is what was fitted.
ONNX blocks (``gptq_onnx``) likewise keep their fp32 scales and zero points from the weighted search
(``onnx_search``); one loop (``gptq_codes``) serves both, each grid supplying its column quantizer.
Written for our grids after the GPTQ paper (Frantar et al., 2022); no other project's code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from compressor.ggml_search import _nearest_iq4
from compressor.ggml_types import IQ4NL_VALUES, Blocks
from compressor.onnx_blocks import BlockQuant

GPTQ_TYPES = ("Q4_0", "Q5_0", "IQ4_NL", "Q8_0")
ONNX_GPTQ_TYPES = ("int4", "int8")  # every ONNX grid (onnx_blocks), symmetric or with zero points
ONNX_BITS = {"int4": 4, "int8": 8}
DAMP_RATIO = 0.3  # added to H's diagonal, as a fraction of its mean: larger trusts the data less
_OFFSET = {"Q4_0": 8, "Q5_0": 16}
_LEVELS = {"Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q8_0": (-127, 127)}


def _codes(kind: str, w: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes as stored, dequantized values) for one column ``w`` (rows,) with scales ``d`` (rows,)."""
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    v = w * inv
    if kind == "IQ4_NL":
        idx = torch.from_numpy(_nearest_iq4(v.float().numpy()).astype(np.int64))
        return idx, d * torch.from_numpy(IQ4NL_VALUES)[idx].to(d.dtype)
    lo, hi = _LEVELS[kind]
    q = torch.clamp(torch.round(v), lo, hi)
    return q + _OFFSET.get(kind, 0), q * d


def gptq_blocks(kind: str, w: np.ndarray, gram: np.ndarray, start: Blocks, block: int = 128) -> Blocks:
    """Re-choose the codes of ``start`` (blocks of ``w``, (rows, cols)) by GPTQ with Gram ``gram``."""
    if kind not in GPTQ_TYPES:
        return start
    rows, cols = w.shape
    d_all = torch.from_numpy(start.d.astype(np.float64)).reshape(rows, cols // 32)  # stored fp16 scales
    codes = gptq_codes(w, gram, lambda col, v: _codes(kind, v, d_all[:, col // 32]), block)
    out = codes.reshape(-1, 32).numpy().astype(np.int8 if kind == "Q8_0" else np.uint8)
    return Blocks(kind, start.d, out, start.m)


def gptq_onnx(kind: str, w: np.ndarray, gram: np.ndarray, start: BlockQuant, block: int = 128) -> BlockQuant:
    """Re-choose the codes of ``start`` (ONNX blocks of ``w``, (rows, cols)) by GPTQ with Gram ``gram``.

    Any grid ``onnx_blocks`` writes (int4 with the implicit zero point 8 or a zero point per block,
    int8 with 128) and any block size; scales and zero points are kept, codes are re-chosen against
    them, so ``BlockQuant.dequantize`` of the result is exactly what the exported file holds."""
    if kind not in ONNX_GPTQ_TYPES:
        return start
    if start.bits != ONNX_BITS[kind] or start.shape != w.shape:
        raise ValueError(
            f"start blocks ({start.bits} bits, {start.shape}) are not {kind} blocks of {w.shape}"
        )
    rows, cols = w.shape
    top = (1 << start.bits) - 1
    s_all = torch.from_numpy(start.scales.astype(np.float64))  # (rows, cols / block)
    if start.zero_points is None:
        z_all = torch.full_like(s_all, float(start.implicit_zero_point()))
    else:
        z_all = torch.from_numpy(start.zero_points.astype(np.float64))

    def column(col: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, z = s_all[:, col // start.block], z_all[:, col // start.block]
        inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(s))
        q = torch.clamp(torch.round(v * inv) + z, 0, top)
        return q, (q - z) * s

    codes = gptq_codes(w, gram, column, block)
    out = codes.numpy().astype(np.uint8).reshape(rows, cols // start.block, start.block)
    return BlockQuant(start.bits, start.block, out, start.scales, start.zero_points)


def gptq_codes(
    w: np.ndarray,
    gram: np.ndarray,
    quantize_column: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    block: int = 128,
) -> torch.Tensor:
    """The GPTQ loop shared by every grid: codes (rows, cols) as ``quantize_column`` stores them.

    ``quantize_column(col, v)``: (codes, dequantized values) of the error-updated column ``v``
    (rows,) float64 of original column ``col`` on its fixed grid. ``block``: columns a lazy batch."""
    rows, cols = w.shape
    W = torch.from_numpy(np.array(w, dtype=np.float64))
    H = torch.from_numpy(np.array(gram, dtype=np.float64))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += DAMP_RATIO * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros((rows, cols), dtype=torch.int64)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Err = W[:, i1:i2].clone(), torch.zeros((rows, i2 - i1), dtype=W.dtype)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            q, deq = quantize_column(col, W1[:, i])
            codes[:, col] = q
            err = (W1[:, i] - deq) / U[i1 + i, i1 + i]
            W1[:, i:] -= err[:, None] * U[i1 + i, i1 + i : i2][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return codes
