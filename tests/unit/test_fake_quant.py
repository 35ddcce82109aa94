"""QAT's fake quantizer equals what the exporters write, bit for bit, and passes gradients straight."""

import copy

import numpy as np
import pytest
import torch

from compressor.quant import QuantScheme
from stages.fake_quant import apply_fake_quant, fake_quant, remove_fake_quant
from stages.quantize import pack_weight, quantize_model

SCHEMES = [
    ("gguf:Q8_0", "Q8_0"),
    ("gguf:Q4_0", "Q4_0"),
    ("onnx:int4", "int4"),
    ("onnx:int4-asym", "int4"),
    ("onnx:int8", "int8"),
    ("onnx:int4-block64", "int4"),
]


@pytest.fixture
def weights() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=g) * 0.05
    w[0, :64] = 0.0  # all-zero blocks
    w[1, 5], w[1, 9] = -0.3, 0.3  # a tie in magnitude
    w[2, :32] = -w[2, :32].abs()  # an all-negative block
    return w


@pytest.mark.parametrize(("spec", "kind"), SCHEMES)
def test_fake_quant_equals_the_exporters_dequantized_weights(weights, spec, kind) -> None:
    scheme = QuantScheme.parse(spec)
    _, exported = pack_weight(scheme, kind, weights.numpy())
    ours = fake_quant(weights, scheme, kind).numpy()
    assert np.array_equal(ours.view(np.uint32), exported.view(np.uint32))  # bit for bit, signs of zero too


def test_gradient_passes_straight_through(weights) -> None:
    lin = torch.nn.Linear(128, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(weights)
    from torch.nn.utils import parametrize

    from stages.fake_quant import FakeQuant

    parametrize.register_parametrization(lin, "weight", FakeQuant(QuantScheme.parse("gguf:Q4_0"), "Q4_0"))
    lin.weight.sum().backward()
    grad = lin.parametrizations.weight.original.grad
    assert torch.equal(grad, torch.ones_like(grad))


@pytest.mark.parametrize("spec", ["gguf:Q4_0", "onnx:int4-asym"])
def test_a_trained_student_exports_exactly_what_it_trained(tiny_artifact, spec) -> None:
    scheme = QuantScheme.parse(spec)
    student = apply_fake_quant(copy.deepcopy(tiny_artifact.model), scheme)
    opt = torch.optim.SGD(student.parameters(), lr=1e-2)
    ids = torch.arange(40).unsqueeze(0) % 300
    for _ in range(3):  # a few QAT steps move the float weights
        student(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        trained = student(ids).logits
    exported, _, _ = quantize_model(remove_fake_quant(student), scheme)
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained)
