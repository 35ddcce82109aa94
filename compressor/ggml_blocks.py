"""Bit-exact numpy reference quantizers for ggml's Q8_0 and Q4_0 (the other types, packing and the
registry: ``ggml_types``).

These reproduce ggml's reference quantizers (``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref``),
which is what ``llama_model_quantize`` runs when no importance matrix is given, so a block we write
is byte-identical to the block llama.cpp would write from the same float weights
(``tests/integration/test_gguf_real.py`` checks this against llama.cpp itself).

Floating-point details that matter for bit-exactness:
  * every multiply happens in float32, as in C (numpy float32 * float32 -> float32);
  * ``roundf`` rounds half away from zero: done in float64, where ``|v| + 0.5`` is exact;
  * Q4_0 picks the signed value of the *first* element with the largest magnitude
    (``np.argmax`` also returns the first), and truncates ``x*id + 8.5f`` toward zero;
  * the block scale is stored as IEEE half, rounded to nearest even (``astype(float16)``).

Block layouts (little endian): Q8_0 = fp16 d + 32 x int8; Q4_0 = fp16 d + 16 bytes, where byte j
holds element j in its low nibble and element j+16 in its high nibble.
"""

from __future__ import annotations

import numpy as np

QK = 32  # elements per block for Q4_0 and Q8_0


def _blocks(w: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(w, dtype=np.float32)
    if x.shape[-1] % QK:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of {QK}")
    return x.reshape(-1, QK)  # (n_blocks, 32)


def quantize_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (scales fp16 (n_blocks,), codes int8 (n_blocks, 32)) exactly as ggml computes them."""
    x = _blocks(w)
    amax = np.abs(x).max(axis=1)  # (n_blocks,)
    d = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    v = (x * inv[:, None]).astype(np.float64)  # product rounded in float32 first
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)  # roundf: half away from zero
    return d.astype(np.float16), q.astype(np.int8)


def quantize_q4_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (scales fp16 (n_blocks,), codes uint8 in 0..15 (n_blocks, 32)) exactly as ggml."""
    x = _blocks(w)
    mag = np.abs(x)
    idx = np.argmax(mag, axis=1)  # first element of largest magnitude
    # C starts from max = +0.0f and only replaces it on a strictly larger |v|: a block of zeros
    # (even of -0.0) keeps +0.0, so d = -0.0.
    signed_max = np.where(mag.max(axis=1) > 0, x[np.arange(x.shape[0]), idx], np.float32(0.0))
    d = (signed_max / np.float32(-8.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    shifted = (x * inv[:, None]).astype(np.float32) + np.float32(8.5)  # float32 add, as in C
    q = np.minimum(15, np.trunc(shifted)).astype(np.uint8)
    return d.astype(np.float16), q
