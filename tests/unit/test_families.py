"""Every supported family through every stage, on a tiny random model of that family built in code:
load -> prune (heads, KV groups, MLP, a layer) -> QAT -> GGUF and ONNX export, each file validated in
its runtime (llama.cpp, onnxruntime) against the torch model holding the same quantized weights, and the
GGUF's tokenizer checked against transformers' on the validation text."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.cli import main
from compressor.report import RunReport
from tests.conftest import LICENSE_TEXT
from tests.families import FAMILIES, build_family_model

pytest.importorskip("llama_cpp")
pytest.importorskip("onnxruntime")

# llama.cpp runs Mistral as llama; its qwen2/phi3 architectures need heads x head_dim == hidden, so
# with query heads pruned those files are written as llama too (q/k permuted, biases kept, fused split)
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "qwen3", "gemma3": "gemma3"}
GGUF_ARCH["phi3"] = "llama"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_goes_through_every_stage(family: str, tmp_path: Path, tiny_profile: Path) -> None:
    import gguf

    src = build_family_model(family, tmp_path / "src" / "model")
    out = tmp_path / "out"
    layers = 2 if family == "gemma3" else 1
    args = ["compress", str(src), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--quant", "gguf:Q4_0,onnx:int4", "--prune", f"heads=2,kv_heads=1,mlp=64,layers={layers}"]
    args += ["--qat", "--distill-tokens", "4096", "--distill-lr", "1e-3", "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    stages = {s.stage: s.summary for s in report.stages}
    assert [s.stage for s in report.stages][:4] == ["load", "prune", "qat-init", "distill"]
    assert stages["load"]["family"] == family
    assert stages["prune"]["shape_after"] == {
        "layers": layers,
        "heads": 2,
        "kv_heads": 1,
        "head_dim": 16,
        "mlp": 64,
    }
    assert stages["distill"]["qat_scheme"] == "gguf:Q4_0" and stages["distill"]["tokens"] == 4096
    gguf_export, onnx_export = stages["export[gguf:Q4_0]"], stages["export[onnx:int4]"]
    assert gguf_export["tokenizer_matches_llama_cpp"] is True
    for summary in (gguf_export, onnx_export):
        assert summary["mean_kl"] <= summary["max_kl_allowed"]
        assert summary["top1_agreement"] >= summary["min_top1_required"]
    reader = gguf.GGUFReader(out / "model.gguf")
    assert reader.fields["general.architecture"].contents() == GGUF_ARCH[family]
    assert (out / "onnx" / "model.onnx").is_file()


NATIVE_ARCH = {**GGUF_ARCH, "qwen2": "qwen2", "phi3": "phi3"}


@pytest.mark.parametrize("family", FAMILIES)
def test_unpruned_model_runs_in_its_own_gguf_architecture(family: str, tmp_path: Path) -> None:
    """F32 GGUF of the unpruned model: llama.cpp's own architecture for the family, logits exact."""
    import gguf

    from compressor.loading import load_model
    from exporters.validate import export_and_validate

    artifact = load_model(str(build_family_model(family, tmp_path / "src" / "model")))
    report, (path,) = export_and_validate(artifact, tmp_path)
    assert report.summary["tokenizer_matches_llama_cpp"] is True
    assert report.summary["mean_kl"] < 1e-3 and report.summary["top1_agreement"] >= 0.97
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == NATIVE_ARCH[family]
