"""ONNX int4/int8 blocks: the weighted scale search and GPTQ, on the grids MatMulNBits reads."""

from pathlib import Path

import numpy as np
import pytest

from compressor import onnx_blocks
from compressor.onnx_blocks import BlockQuant, matmul_nbits_tensors, unpack_matmul_nbits
from compressor.onnx_search import block_errors, element_weights, weighted_quantize_onnx
from stages.gptq import gptq_onnx

GRIDS = [("int4", True), ("int4", False), ("int8", True)]  # int8 is always symmetric


def _weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Heavy-tailed like trained weights, with a few outliers and an all-zero block."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(5, (rows, cols)) * 0.02).astype(np.float32)
    w[0, :32] = 0.0
    return w


def _importance(cols: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).gamma(0.5, 1.0, cols).astype(np.float32)


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize(("kind", "symmetric"), GRIDS)
@pytest.mark.parametrize("with_importance", [False, True])
def test_weighted_error_is_never_worse_than_the_reference_rule(
    kind: str, symmetric: bool, block: int, with_importance: bool
) -> None:
    w = _weights(64, 3 * block)
    imp = _importance(w.shape[1]) if with_importance else None
    weights = element_weights(w, imp)
    ref = block_errors(onnx_blocks.quantize(kind, w, block, symmetric), w, weights)
    ours = block_errors(weighted_quantize_onnx(kind, w, block, symmetric, imp), w, weights)
    assert np.all(ours <= ref)  # block by block
    assert ours.sum() < 0.97 * ref.sum()  # and the search finds better blocks than the rule's


@pytest.mark.parametrize(("kind", "symmetric"), GRIDS)
def test_blocks_the_search_cannot_improve_keep_the_reference_rule(
    kind: str, symmetric: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-block guard: if every searched block were worse, the result is onnx_blocks', bit for bit."""
    from compressor import onnx_search

    real = onnx_search._search

    def useless(grid: object, x: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, ...]:
        levels, scales, zeros = real(grid, x, wt)
        return levels, scales * 0, zeros  # dequantizes to zeros: worse than the rule in every live block

    monkeypatch.setattr(onnx_search, "_search", useless)
    w = _weights(16, 128)
    got = weighted_quantize_onnx(kind, w, 32, symmetric, _importance(128))
    ref = onnx_blocks.quantize(kind, w, 32, symmetric)
    assert np.array_equal(got.codes, ref.codes) and np.array_equal(got.scales, ref.scales)
    assert (got.zero_points is None) == (ref.zero_points is None)
    if got.zero_points is not None:
        assert np.array_equal(got.zero_points, ref.zero_points)


@pytest.mark.parametrize(("kind", "symmetric"), GRIDS)
def test_importance_changes_the_choice_towards_busy_inputs(kind: str, symmetric: bool) -> None:
    w = _weights(32, 256)
    imp = _importance(256)
    plain = weighted_quantize_onnx(kind, w, 32, symmetric, None)
    weighted = weighted_quantize_onnx(kind, w, 32, symmetric, imp)
    assert not np.array_equal(plain.codes, weighted.codes)
    # measured as the layer sees it (error times mean squared input of its column), it is lower
    out = {n: float((((bq.dequantize() - w) ** 2) * imp).sum()) for n, bq in (("p", plain), ("w", weighted))}
    assert out["w"] < out["p"]


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize(("kind", "symmetric"), GRIDS)
def test_blocks_have_the_onnx_layout_and_pack_round_trip(kind: str, symmetric: bool, block: int) -> None:
    n, k = 20, 3 * block  # an odd number of blocks a row: zero points pad to a whole byte
    w = _weights(n, k)
    bq = weighted_quantize_onnx(kind, w, block, symmetric, _importance(k))
    bits = 8 if kind == "int8" else 4
    assert (bq.bits, bq.block, bq.shape) == (bits, block, (n, k))
    assert bq.codes.shape == (n, 3, block) and bq.codes.dtype == np.uint8
    assert bq.scales.shape == (n, 3) and bq.scales.dtype == np.float32
    assert bq.codes.max() < 2**bits
    if symmetric:
        assert bq.zero_points is None
    else:
        assert bq.zero_points is not None and bq.zero_points.shape == (n, 3) and bq.zero_points.max() <= 15
    t = matmul_nbits_tensors(bq)
    back = unpack_matmul_nbits(bits, block, t["B"], t["scales"], t.get("zero_points"), n, k)
    assert np.array_equal(back.codes, bq.codes) and np.array_equal(back.scales, bq.scales)
    assert np.array_equal(back.dequantize(), bq.dequantize())


def _correlated_inputs(cols: int, n: int = 2048, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) * 0.3 + np.eye(cols)
    return (rng.standard_normal((n, cols)) * rng.gamma(1.0, 1.0, cols)) @ mix


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize(("kind", "symmetric"), GRIDS)
def test_gptq_lowers_the_output_error_with_the_same_scales_and_zero_points(
    kind: str, symmetric: bool, block: int
) -> None:
    rows, cols = 48, 256
    x = _correlated_inputs(cols)
    w = np.random.default_rng(2).standard_normal((rows, cols)).astype(np.float32)
    gram = x.T @ x / x.shape[0]
    start = weighted_quantize_onnx(kind, w, block, symmetric, (x**2).mean(0).astype(np.float32))
    tuned = gptq_onnx(kind, w, gram, start)
    assert np.array_equal(tuned.scales, start.scales)
    if symmetric:
        assert tuned.zero_points is None
    else:
        assert tuned.zero_points is not None and start.zero_points is not None
        assert np.array_equal(tuned.zero_points, start.zero_points)

    def out_err(bq: BlockQuant) -> float:  # ||X W^T - X Wq^T||^2 / n
        dw = bq.dequantize().astype(np.float64) - w
        return float(np.einsum("ij,jk,ik->", dw, gram, dw))

    assert out_err(tuned) < 0.9 * out_err(start)
    assert tuned.codes.shape == start.codes.shape and tuned.codes.max() < 2**start.bits


def test_gptq_rejects_blocks_of_another_grid() -> None:
    w = _weights(8, 64)
    with pytest.raises(ValueError, match="not int8 blocks"):
        gptq_onnx("int8", w, np.eye(64), onnx_blocks.quantize("int4", w, 32, True))


@pytest.mark.parametrize(
    ("kind", "symmetric", "block"),
    [("int4", True, 32), ("int4", False, 32), ("int4", False, 64), ("int8", True, 128)],
)
def test_onnxruntime_matmul_nbits_computes_with_our_blocks(
    kind: str, symmetric: bool, block: int, tmp_path: Path
) -> None:
    """onnxruntime's own kernel on our searched blocks (odd block counts, clipped ranges, negative
    scales) gives x @ dequantized.T: the file holds exactly what the search evaluated."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    n, k = 24, 3 * block
    w = _weights(n, k)
    bq = weighted_quantize_onnx(kind, w, block, symmetric, _importance(k))
    t = matmul_nbits_tensors(bq)
    inits = [numpy_helper.from_array(v, name) for name, v in t.items()]
    node = helper.make_node(
        "MatMulNBits",
        ["x", *t],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bq.bits,
        block_size=block,
        accuracy_level=0,  # fp32 activations: compare with fp32 arithmetic
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((5, k)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    expect = x.astype(np.float64) @ bq.dequantize().astype(np.float64).T
    assert np.allclose(y, expect, rtol=1e-4, atol=1e-5 * float(np.abs(expect).max()))
