"""The ggml codecs: layouts round-trip, errors are bounded, zero blocks stay zero, ggml's rounding
rules hold, gguf-py agrees where it implements the same rule, and the weighted searches beat the
reference rule on the error they minimise (byte-identity with llama.cpp: test_gguf_export.py)."""

import numpy as np
import pytest

from compressor import ggml_blocks as gb
from compressor import ggml_types as gt
from compressor.ggml_search import weighted_quantize

KINDS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]


@pytest.fixture
def weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    w[1, 3] = -5.0  # a negative extreme: Q4_0's scale then is positive
    return w


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("search", [False, True])
def test_pack_unpack_round_trip(weights: np.ndarray, kind: str, search: bool) -> None:
    b = weighted_quantize(kind, weights, None) if search else gt.REFERENCE[kind](weights)
    raw = gt.pack(b)
    assert raw.shape == (16 * 4, gt.BLOCK_BYTES[kind])
    b2 = gt.unpack(kind, raw)
    assert np.array_equal(b.d.view(np.uint16), b2.d.view(np.uint16))
    assert np.array_equal(b.q, b2.q)
    assert np.array_equal(gt.dequantize(b), gt.dequantize(b2))


# worst error in steps of (block range / levels), fp16 scale slack aside
@pytest.mark.parametrize(
    ("kind", "levels", "steps"),
    [("Q8_0", 127, 0.5), ("Q4_0", 8, 1.0), ("Q5_0", 16, 1.0), ("Q4_1", 7.5, 0.5), ("Q5_1", 15.5, 0.5)],
)
def test_error_is_bounded(weights: np.ndarray, kind: str, levels: float, steps: float) -> None:
    packed, deq = gt.quantize_tensor(kind, weights)
    assert packed.shape == (16, 128 // 32 * gt.BLOCK_BYTES[kind])
    blocks = weights.reshape(-1, 32)
    half_range = (blocks.max(1) - blocks.min(1)) / 2 if kind in ("Q4_1", "Q5_1") else np.abs(blocks).max(1)
    step = half_range / levels
    slack = np.abs(blocks).max(1) * 2.0**-10  # scale (and offset) stored as fp16
    err = np.abs(deq.reshape(-1, 32) - blocks).max(1)
    assert np.all(err <= steps * step + slack + 1e-6)
    assert err.max() > 0.1 * step.max()  # and it really quantized


@pytest.mark.parametrize("kind", KINDS)
def test_zero_block_stays_zero(weights: np.ndarray, kind: str) -> None:
    for search in (False, True):
        _, deq = gt.quantize_tensor(kind, weights, search=search)
        assert np.all(deq[0, :32] == 0)


def test_q4_0_uses_the_signed_extreme_and_first_of_ties() -> None:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 5], x[0, 9] = -2.0, 2.0  # equal magnitude: the first one (negative) wins, as in ggml
    d, q = gb.quantize_q4_0(x)
    assert float(d[0]) == pytest.approx(0.25)  # -2 / -8
    assert q[0, 5] == 0 and q[0, 9] == 15  # -2 -> code 0; +2 -> 16 clamps to 15
    assert q[0, 0] == 8  # zero


def test_q8_0_rounds_half_away_from_zero() -> None:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 127.0, 2.5, -2.5  # scale exactly 1.0
    _, q = gb.quantize_q8_0(x)
    assert (q[0, 0], q[0, 1], q[0, 2]) == (127, 3, -3)  # numpy's round would give 2 and -2


def test_q5_high_bits_go_to_qh_in_element_order() -> None:
    q = np.zeros((1, 32), dtype=np.uint8)
    q[0, 0], q[0, 9], q[0, 31] = 16, 17, 31  # bit 4 set for elements 0, 9, 31
    raw = gt.pack(gt.Blocks("Q5_0", np.zeros(1, np.float16), q))
    assert int.from_bytes(raw[0, 2:6].tobytes(), "little") == (1 << 0) | (1 << 9) | (1 << 31)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_requantizing_dequantized_weights_is_idempotent(weights: np.ndarray, kind: str) -> None:
    packed, deq = gt.quantize_tensor(kind, weights)
    packed2, _ = gt.quantize_tensor(kind, deq)
    assert np.array_equal(packed, packed2)


def test_rejects_rows_that_do_not_fill_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        gb.quantize_q4_0(np.zeros((2, 40), dtype=np.float32))


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q5_1"])
def test_agrees_with_gguf_py_reference(weights: np.ndarray, kind: str) -> None:
    """gguf-py's numpy port implements the same rule for these (its Q4_0/Q5_0 emulate FMA)."""
    gguf = pytest.importorskip("gguf")
    theirs = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[kind])
    ours, _ = gt.quantize_tensor(kind, weights)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "IQ4_NL", "Q4_1", "Q5_1"])
def test_weighted_search_beats_the_reference_on_weighted_error(kind: str) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 256)) * rng.gamma(1.0, 1.0, (1, 256))).astype(np.float32)
    importance = rng.gamma(0.5, 2.0, 256).astype(np.float32)  # heavy-tailed, like activations

    def weighted_err(deq: np.ndarray) -> float:
        return float((importance * (deq - w) ** 2).sum())

    _, ref = gt.quantize_tensor(kind, w)
    _, plain = gt.quantize_tensor(kind, w, search=True)
    _, aware = gt.quantize_tensor(kind, w, importance, search=True)
    assert weighted_err(aware) < weighted_err(ref)
    assert weighted_err(aware) < weighted_err(plain)  # the importance vector is what helps here


@pytest.mark.parametrize("kind", ["Q4_1", "Q5_1"])
def test_affine_search_is_never_worse_than_the_reference_block_by_block(
    weights: np.ndarray, kind: str
) -> None:
    ref = gt.REFERENCE[kind](weights)
    ours = weighted_quantize(kind, weights, None)
    x = weights.reshape(-1, 32).astype(np.float64)
    e_ref = ((gt.dequantize(ref) - x) ** 2).sum(1)
    e_ours = ((gt.dequantize(ours) - x) ** 2).sum(1)
    assert np.all(e_ours <= e_ref * (1 + 1e-6)) and e_ours.sum() < 0.95 * e_ref.sum()
