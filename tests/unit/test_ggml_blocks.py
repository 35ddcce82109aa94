import numpy as np
import pytest

from compressor import ggml_blocks as gb


@pytest.fixture
def weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    w[1, 3] = -5.0  # a negative extreme: Q4_0's scale then is positive
    return w


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_pack_unpack_round_trip(weights: np.ndarray, kind: str) -> None:
    quant, pack, _ = gb.CODECS[kind]
    d, q = quant(weights)
    d2, q2 = gb.unpack_blocks(kind, pack(d, q))
    assert np.array_equal(d.view(np.uint16), d2.view(np.uint16))
    assert np.array_equal(q, q2)


# (levels on the extreme's side, worst error in steps): Q4_0 maps the extreme to -8 steps, so a value
# of the same magnitude and opposite sign clamps at +7: one full step off.
@pytest.mark.parametrize(("kind", "levels", "steps"), [("Q8_0", 127, 0.5), ("Q4_0", 8, 1.0)])
def test_error_is_bounded(weights: np.ndarray, kind: str, levels: int, steps: float) -> None:
    packed, deq = gb.quantize_tensor(kind, weights)
    assert packed.shape == (16, 128 // 32 * gb.BLOCK_BYTES[kind])
    blocks = weights.reshape(-1, 32)
    step = np.abs(blocks).max(1) / levels
    fp16_slack = levels * step * 2.0**-11  # the scale is stored as fp16
    err = np.abs(deq.reshape(-1, 32) - blocks).max(1)
    assert np.all(err <= steps * step + fp16_slack + 1e-7)
    assert err.max() > 0.1 * step.max()  # and it really quantized


def test_zero_block_stays_zero(weights: np.ndarray) -> None:
    for kind in ("Q8_0", "Q4_0"):
        _, deq = gb.quantize_tensor(kind, weights)
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


def test_requantizing_dequantized_weights_is_idempotent(weights: np.ndarray) -> None:
    for kind in ("Q8_0", "Q4_0"):
        packed, deq = gb.quantize_tensor(kind, weights)
        packed2, _ = gb.quantize_tensor(kind, deq)
        assert np.array_equal(packed, packed2)


def test_rejects_rows_that_do_not_fill_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        gb.quantize_q4_0(np.zeros((2, 40), dtype=np.float32))


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_agrees_with_gguf_py_reference(weights: np.ndarray, kind: str) -> None:
    gguf = pytest.importorskip("gguf")
    theirs = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[kind])
    ours, _ = gb.quantize_tensor(kind, weights)
    assert np.array_equal(ours, theirs)
