"""Importance-weighted scale searches that write ordinary ggml blocks (Q4_0, Q5_0, IQ4_NL, Q4_1, Q5_1).

For each 32-element block, try a set of candidate scales, let each element take its nearest code,
refit the scale by weighted least squares, and keep the candidate with the least weighted error. The
weight of element j is ``importance_j * sqrt(sigma2 + x_j^2)``: ``importance`` is the mean squared
activation of input column j (the "importance matrix", so errors where the inputs are large cost
more), the square-root term favours large weights. This is the rule of llama.cpp's ``make_qx_quants``
(Q4_0/Q5_0: 19 scales around nmax/max) and ``quantize_row_iq4_nl_impl`` (IQ4_NL: 15 scales over the
non-linear table), written vectorised over blocks. IQ4_NL without an importance vector is exactly what
``llama-quantize`` writes (weights x^2, sums in index order; byte-identical, tested); the weighted
Q4_0/Q5_0 searches use the same rule with pairwise float32 sums, so they may differ from llama.cpp's
imatrix output in the last bit of a scale. Either way the result is a standard block, and what we
dequantize is what llama.cpp dequantizes.
"""

from __future__ import annotations

import numpy as np

from compressor.ggml_types import IQ4NL_VALUES, REFERENCE, Blocks, signed_max

F32 = np.float32
_MIDS = ((IQ4NL_VALUES[:-1] + IQ4NL_VALUES[1:]) / 2).astype(F32)  # exact half-integers
# Every midpoint is a multiple of 0.5, so no midpoint lies strictly inside [k/2, (k+1)/2): the index of
# v is a table lookup at floor(2v) (2v is exact in float32). Much faster than a binary search.
_LUT_LO = -512
_LUT = np.searchsorted(_MIDS, np.arange(_LUT_LO, -_LUT_LO) / 2, side="right").astype(np.uint8)


def _nearest_iq4(v: np.ndarray) -> np.ndarray:
    """llama.cpp's best_index_int8: the nearest table entry, ties to the upper one."""
    k = np.floor(np.clip(v, _LUT_LO / 2, -_LUT_LO / 2 - 1) * F32(2.0)).astype(np.int32) - _LUT_LO
    return _LUT[k]


def _seq_sum(terms: np.ndarray) -> np.ndarray:
    """Row sums accumulated in float32 in index order, as a C loop does."""
    acc = np.zeros(terms.shape[0], dtype=F32)
    for j in range(terms.shape[1]):
        acc += terms[:, j]
    return acc


def _column_weights(w: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """(rows*cols/32, 32) per-element importance; ones when none is given."""
    rows, cols = w.shape
    if importance is None:
        return np.ones((rows * cols // 32, 32), dtype=F32)
    imp = np.asarray(importance, dtype=F32).reshape(1, cols // 32, 32)
    return np.broadcast_to(imp, (rows, cols // 32, 32)).reshape(-1, 32)


def search_iq4_nl(w: np.ndarray, importance: np.ndarray | None) -> Blocks:
    """``quantize_row_iq4_nl_impl`` with ntry = 7 (what llama-quantize runs), per 32-block."""
    _rows, _cols = w.shape
    x = np.ascontiguousarray(w, dtype=F32).reshape(-1, 32)
    if importance is None:
        weight = (x * x).astype(F32)
    else:
        sigma2 = (_seq_sum((x * x).astype(F32)) * F32(2.0 / 32)).astype(F32)
        weight = (_column_weights(w, importance) * np.sqrt(sigma2[:, None] + x * x)).astype(F32)
    mx, amax = signed_max(x)
    safe = np.where(amax >= F32(1e-15), mx, F32(1.0))  # zero blocks: computed, then discarded

    def fit(inv_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = IQ4NL_VALUES[_nearest_iq4((inv_scale[:, None] * x).astype(F32))]
        wq = (weight * q).astype(F32)
        return _seq_sum((wq * x).astype(F32)), _seq_sum((wq * q).astype(F32))

    d0 = (-safe / F32(-127.0)).astype(F32)
    sumqx, sumq2 = fit((F32(1.0) / d0).astype(F32))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0.0)).astype(F32)
        best = (d * sumqx).astype(F32)
        for itry in range(-7, 8):
            sqx, sq2 = fit((F32(itry - 127) / safe).astype(F32))
            better = (sq2 > 0) & ((sqx * sqx).astype(F32) > (best * sq2).astype(F32))
            d = np.where(better, sqx / sq2, d).astype(F32)
            best = np.where(better, (d * sqx).astype(F32), best)
    d = np.where(amax >= F32(1e-15), d, F32(0.0)).astype(F32)
    inv = np.where(d != 0, F32(1.0) / np.where(d != 0, d, F32(1.0)), F32(0.0)).astype(F32)
    codes = _nearest_iq4((inv[:, None] * x).astype(F32))
    return Blocks("IQ4_NL", d.astype(np.float16), codes)


def search_qx(kind: str, w: np.ndarray, importance: np.ndarray | None) -> Blocks:
    """``make_qx_quants`` (rmse_type 1) for Q4_0 (nmax 8) or Q5_0 (nmax 16), weighted."""
    nmax = {"Q4_0": 8, "Q5_0": 16}[kind]
    _rows, cols = w.shape
    xr = np.ascontiguousarray(w, dtype=F32)
    sigma2 = ((xr * xr).sum(axis=1, dtype=F32) / F32(cols)).astype(F32)  # per row
    x = xr.reshape(-1, 32)
    s2 = np.repeat(sigma2, cols // 32)[:, None]
    weight = (_column_weights(w, importance) * np.sqrt(s2 + x * x)).astype(F32)
    mx, amax = signed_max(x)
    live = amax >= F32(1e-15)
    safe = np.where(live, mx, F32(1.0))

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(np.rint((iscale[:, None] * x).astype(F32)), -nmax, nmax - 1).astype(F32)
        wl = (weight * lv).astype(F32)
        return lv, (wl * x).sum(axis=1, dtype=F32), (wl * lv).sum(axis=1, dtype=F32)

    lv, sumlx, suml2 = fit((F32(-nmax) / safe).astype(F32))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0.0)).astype(F32)
        best = (scale * sumlx).astype(F32)
        codes = lv
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = (-(F32(nmax) + F32(0.1) * F32(step)) / safe).astype(F32)
            cand, sx, s2l = fit(iscale)
            better = (s2l > 0) & ((sx * sx).astype(F32) > (best * s2l).astype(F32))
            codes = np.where(better[:, None], cand, codes)
            scale = np.where(better, sx / s2l, scale).astype(F32)
            best = np.where(better, (scale * sx).astype(F32), best)
    scale = np.where(live, scale, F32(0.0)).astype(F32)
    q = np.where(live[:, None], codes + nmax, 0).astype(np.uint8)
    return Blocks(kind, scale.astype(np.float16), q)


def search_qkx(kind: str, w: np.ndarray, importance: np.ndarray | None) -> Blocks:
    """Q4_1 (nmax 15) / Q5_1 (nmax 31): ``make_qkx3_quants``' search, weighted. For 37 candidate
    inverse scales (nmax + rmin + k * rdelta over the block's range, rmin -0.9, rdelta 0.05) every
    element takes its code from the block's minimum, then scale and offset are refit together by
    weighted least squares (a 2x2 system); the candidate with the least weighted error wins, and the
    final codes are the nearest for the fp16 scale and offset the file stores."""
    nmax = {"Q4_1": 15, "Q5_1": 31}[kind]
    _rows, cols = w.shape
    xr = np.ascontiguousarray(w, dtype=F32)
    sigma2 = ((xr * xr).sum(axis=1, dtype=F32) / F32(cols)).astype(F32)
    x = xr.reshape(-1, 32).astype(np.float64)
    s2 = np.repeat(sigma2, cols // 32)[:, None]
    wt = (_column_weights(w, importance) * np.sqrt(s2 + xr.reshape(-1, 32) ** 2)).astype(np.float64)
    lo, hi = x.min(axis=1), x.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    ref = REFERENCE[kind](w)  # the reference rule is a candidate too: never worse than it
    best_d, best_m = ref.d.astype(np.float64), ref.m.astype(np.float64)  # type: ignore[union-attr]
    best_err = (wt * (ref.q * best_d[:, None] + best_m[:, None] - x) ** 2).sum(axis=1)
    sw = wt.sum(axis=1)
    sx = (wt * x).sum(axis=1)
    for k in range(37):
        iscale = (nmax - 0.9 + 0.05 * k) / span
        q = np.clip(np.rint(iscale[:, None] * (x - lo[:, None])), 0, nmax)
        sl, sl2, slx = (wt * q).sum(axis=1), (wt * q * q).sum(axis=1), (wt * q * x).sum(axis=1)
        det = sw * sl2 - sl * sl
        ok = det > 0
        safe = np.where(ok, det, 1.0)
        d = np.where(ok, (sw * slx - sx * sl) / safe, 0.0)
        m = np.where(ok, (sl2 * sx - sl * slx) / safe, lo)
        err = (wt * (q * d[:, None] + m[:, None] - x) ** 2).sum(axis=1)
        better = ok & (d > 0) & (err < best_err)
        best_d, best_m, best_err = (
            np.where(better, a, b) for a, b in ((d, best_d), (m, best_m), (err, best_err))
        )
    d16, m16 = best_d.astype(np.float16), best_m.astype(np.float16)
    d32, m32 = d16.astype(F32), m16.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(d32[:, None] != 0, (xr.reshape(-1, 32) - m32[:, None]) / d32[:, None], 0.0)
    q = np.clip(np.rint(v), 0, nmax).astype(np.uint8)
    out = Blocks(kind, d16, q, m16)
    # the re-rounded codes are kept only where they do not raise the error of the stored values
    from compressor.ggml_types import dequantize

    err_new = (wt * (dequantize(out).astype(np.float64) - x) ** 2).sum(axis=1)
    err_ref = (wt * (dequantize(ref).astype(np.float64) - x) ** 2).sum(axis=1)
    keep = err_new <= err_ref
    return Blocks(
        kind,
        np.where(keep, d16, ref.d),
        np.where(keep[:, None], q, ref.q).astype(np.uint8),
        np.where(keep, m16, ref.m),  # type: ignore[arg-type]
    )


def weighted_quantize(kind: str, w: np.ndarray, importance: np.ndarray | None) -> Blocks:
    """The best blocks we know how to find for ``kind`` (the reference rule where we have no search)."""
    if kind == "IQ4_NL":
        return search_iq4_nl(w, importance)
    if kind in ("Q4_0", "Q5_0"):
        return search_qx(kind, w, importance)
    if kind in ("Q4_1", "Q5_1"):
        return search_qkx(kind, w, importance)
    return REFERENCE[kind](w)  # Q8_0 (llama.cpp ignores an imatrix too)
