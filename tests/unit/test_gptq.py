"""GPTQ on ggml grids: same scales, other codes, less output error on the calibration inputs."""

import numpy as np
import pytest

from compressor.ggml_search import weighted_quantize
from compressor.ggml_types import dequantize, pack, unpack
from stages.gptq import gptq_blocks


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "IQ4_NL", "Q8_0"])
def test_gptq_lowers_the_output_error_with_the_same_scales(kind: str) -> None:
    rng = np.random.default_rng(0)
    rows, cols, n = 48, 128, 2048
    mix = rng.standard_normal((cols, cols)) * 0.3 + np.eye(cols)  # correlated inputs
    x = (rng.standard_normal((n, cols)) * rng.gamma(1.0, 1.0, cols)) @ mix
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    gram = x.T @ x / n
    importance = (x**2).mean(0).astype(np.float32)
    start = weighted_quantize(kind, w, importance)
    tuned = gptq_blocks(kind, w, gram, start)
    assert np.array_equal(start.d.view(np.uint16), tuned.d.view(np.uint16))  # scales kept

    def out_err(b) -> float:
        dw = dequantize(b).reshape(rows, cols).astype(np.float64) - w
        return float(np.einsum("ij,jk,ik->", dw, gram, dw))

    assert out_err(tuned) < 0.9 * out_err(start)
    again = unpack(kind, pack(tuned))  # the codes are legal for the layout
    assert np.array_equal(dequantize(again), dequantize(tuned))
