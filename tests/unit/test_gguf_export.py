"""GGUF export of the tiny model, checked in the real llama.cpp (through llama-cpp-python)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.quant import QuantScheme, TensorRole
from exporters import llama_runtime
from exporters.gguf import export_gguf, llama_cpp_quantize
from exporters.workers import compare_logits
from stages.quantize import quantize_model
from tests.conftest import corpus

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")


def _ids(artifact, n: int = 96) -> list[int]:
    return artifact.tokenizer(corpus()[:2000], add_special_tokens=False).input_ids[:n]


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _quantized(artifact, spec: str):
    scheme = QuantScheme.parse(spec)
    model, packed, _ = quantize_model(copy.deepcopy(artifact.model), scheme)
    return artifact.evolve("quantize", model=model, scheme=scheme, quantized=packed)


def test_f32_export_matches_torch_in_llama_cpp(tiny_artifact, tmp_path: Path) -> None:
    path = export_gguf(tiny_artifact, tmp_path)
    ids = _ids(tiny_artifact)
    stats = compare_logits(_torch_logits(tiny_artifact.model, ids), llama_runtime.logits(path, ids))
    assert stats["top1_agreement"] == 1.0
    assert stats["max_abs_diff"] < 5e-3  # llama.cpp keeps the KV cache in F16
    assert stats["mean_kl"] < 1e-6


def test_llama_cpp_tokenizes_like_our_tokenizer(tiny_artifact, tmp_path: Path) -> None:
    path = export_gguf(tiny_artifact, tmp_path)
    text = corpus()[:3000] + "\n<|im_start|>user\n  007 x\t\ty <|im_end|>\n"
    assert (
        llama_runtime.tokenize(path, text)
        == tiny_artifact.tokenizer(text, add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"])
def test_blocks_are_byte_identical_to_llama_cpp_quantizer(tiny_artifact, tmp_path: Path, kind: str) -> None:
    ours = export_gguf(_quantized(tiny_artifact, f"gguf:{kind}+embed={kind}"), tmp_path, "ours.gguf")
    f32 = export_gguf(tiny_artifact, tmp_path, "f32.gguf")
    theirs = tmp_path / "theirs.gguf"
    llama_cpp_quantize(f32, theirs, kind, pure=True)
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    tb = {t.name: t for t in b.tensors}
    n_quantized = 0
    for t in a.tensors:
        u = tb[t.name]
        assert t.tensor_type == u.tensor_type, t.name
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), t.name
        n_quantized += t.tensor_type.name == kind
    assert n_quantized == 2 * 7 + 1  # 7 matrices per layer + the tied embedding


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0", "IQ4_NL"])
def test_quantized_file_runs_like_the_fake_quantized_torch_model(
    tiny_artifact, tmp_path: Path, kind: str
) -> None:
    art = _quantized(tiny_artifact, f"gguf:{kind}")
    path = export_gguf(art, tmp_path)
    ids = _ids(tiny_artifact)
    stats = compare_logits(_torch_logits(art.model, ids), llama_runtime.logits(path, ids))
    assert stats["mean_kl"] < 1e-3  # what remains is llama.cpp's 8-bit activations
    assert stats["top1_agreement"] > 0.9


def test_k_quant_is_delegated_and_its_fallback_projected(tiny_artifact, tmp_path: Path) -> None:
    art = _quantized(tiny_artifact, "gguf:Q4_K_M")
    assert art.quantized == {}  # llama.cpp quantizes it at export
    path = export_gguf(art, tmp_path)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    # rows of 64 and 128 are no multiple of 256: llama.cpp falls back, as QuantScheme.plan predicts
    assert types["blk.0.ffn_up.weight"] == QuantScheme.parse("gguf:Q4_K_M").plan(TensorRole.MLP, 64).effective
