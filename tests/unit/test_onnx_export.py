"""ONNX export of the tiny model, checked in the real onnxruntime."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.onnx_blocks import unpack_matmul_nbits
from compressor.quant import ExportFormat, QuantScheme
from exporters import ort_runtime
from exporters.onnx import export_onnx, load_ort_causal_lm
from exporters.validate import EXPORTERS
from exporters.workers import compare_logits
from stages.prune import prune_model
from stages.prune_config import PruneConfig
from stages.quantize import quantize_model
from tests.conftest import corpus

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _ids(artifact, n: int = 64) -> list[int]:
    return artifact.tokenizer(corpus()[:2000], add_special_tokens=False).input_ids[:n]


def _quantized(artifact, spec: str):
    scheme = QuantScheme.parse(spec)
    model, packed, _ = quantize_model(copy.deepcopy(artifact.model), scheme)
    return artifact.evolve("quantize", model=model, scheme=scheme, quantized=packed)


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_every_export_format_has_an_exporter() -> None:
    assert set(EXPORTERS) == set(ExportFormat)


LAYOUTS = ["auto", "optimum"]  # auto: the direct GroupQueryAttention graph (exporters.onnx_graph)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp32_export_matches_torch(tiny_artifact, tmp_path: Path, layout: str) -> None:
    path, counts = export_onnx(tiny_artifact, tmp_path, layout)
    assert counts.get("MatMulNBits", 0) == 0
    assert counts.get("GroupQueryAttention", 0) == (2 if layout == "auto" else 0)
    ids = _ids(tiny_artifact)
    stats = compare_logits(_logits(tiny_artifact.model, ids), ort_runtime.logits(path, ids))
    assert stats["max_abs_diff"] < 1e-3 and stats["top1_agreement"] == 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", ["onnx:int4", "onnx:int4-asym", "onnx:int8", "onnx:int4-block64+embed=int4"])
def test_stored_weights_dequantize_to_the_fake_quantized_torch_weights(
    tiny_artifact, tmp_path: Path, spec, layout: str
) -> None:
    art = _quantized(tiny_artifact, spec)
    path, counts = export_onnx(art, tmp_path, layout)
    assert counts["tied_head"] == 1 and counts["GatherBlockQuantized"] == 1
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    params = dict(art.model.named_parameters())
    seen = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: x.i for x in node.attribute}
        zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        bq = unpack_matmul_nbits(
            a["bits"], a["block_size"], inits[node.input[1]], inits[node.input[2]], zp, a["N"], a["K"]
        )
        stored = bq.dequantize()
        matches = [
            n
            for n, p in params.items()
            if p.shape == stored.shape and np.array_equal(p.detach().numpy(), stored)
        ]
        assert matches, f"{node.name}: stored weights equal no fake-quantized torch weight"
        seen += 1
    assert seen == 2 * 7 + 1  # 7 matrices per layer + the tied head


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", ["onnx:int4", "onnx:int8"])
def test_quantized_file_runs_like_the_fake_quantized_torch_model(
    tiny_artifact, tmp_path: Path, spec, layout: str
) -> None:
    art = _quantized(tiny_artifact, spec)
    path, _ = export_onnx(art, tmp_path, layout)
    ids = _ids(tiny_artifact)
    stats = compare_logits(_logits(art.model, ids), ort_runtime.logits(path, ids))
    assert stats["mean_kl"] < 1e-3 and stats["top1_agreement"] > 0.9


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_with_kv_cache_equals_full_recompute(tiny_artifact, tmp_path: Path, layout: str) -> None:
    path, _ = export_onnx(tiny_artifact, tmp_path, layout)
    prompt = _ids(tiny_artifact, 12)
    got = ort_runtime.greedy(path, prompt, 10)
    with torch.no_grad():
        ref = tiny_artifact.model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
    assert got == ref[0, len(prompt) :].tolist()


def test_pruned_shapes_export_and_load_in_optimum(tiny_artifact, tmp_path: Path) -> None:
    ids = torch.tensor([_ids(tiny_artifact)])
    pruned, _ = prune_model(copy.deepcopy(tiny_artifact.model), PruneConfig.parse("heads=2,mlp=64"), [ids])
    art = tiny_artifact.evolve("prune", model=pruned)  # 2 heads x 16 != hidden 64
    art = _quantized(art, "onnx:int4")
    path, _ = export_onnx(art, tmp_path)
    ids = _ids(tiny_artifact, 32)
    stats = compare_logits(_logits(art.model, ids), ort_runtime.logits(path, ids))
    assert stats["top1_agreement"] > 0.9
    ort_model = load_ort_causal_lm(path.parent)
    out = ort_model.generate(torch.tensor([ids[:8]]), max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 14)


def test_ort_format_loads_and_gives_the_same_logits(tiny_artifact, tmp_path: Path) -> None:
    path, _ = export_onnx(_quantized(tiny_artifact, "onnx:int4"), tmp_path)
    ort_file, ops_config = ort_runtime.to_ort_format(path)
    assert ort_file.suffix == ".ort" and "MatMulNBits" in ops_config.read_text()
    ids = _ids(tiny_artifact, 32)
    assert np.allclose(ort_runtime.logits(ort_file, ids), ort_runtime.logits(path, ids), atol=1e-5)


def test_onnx_scheme_parsing() -> None:
    s = QuantScheme.parse("onnx:int4-asym-block64")
    assert (s.weight_type, s.symmetric, s.block_size, s.name) == ("int4", False, 64, "onnx:int4-asym-block64")
    assert s.bits("int4") == 4 + (32 + 4) / 64
    from compressor.errors import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        QuantScheme.parse("onnx:int4-block48")
