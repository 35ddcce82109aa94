"""The ONNX bundle for onnxruntime-genai: it loads and generates in onnxruntime-genai, its budget verdict
is measured through onnxruntime-genai's generator when the profile names that runtime, and verify
holds it to its recorded logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import ExitCode
from compressor.report import RunReport
from tests.conftest import TINY_PROFILE
from tests.unit.catalogue import refuse

og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnxruntime")
NAME = "model-tiny-genai.bundle"


@pytest.fixture(scope="module")
def out(tiny_model_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("genai")
    profile = root / "tiny-genai.toml"
    text = TINY_PROFILE.replace('name = "tiny-test"', 'name = "tiny-genai"')
    profile.write_text(text.replace("[runtime]\n", '[runtime]\nengine = "onnxruntime-genai"\n'))
    out = root / "out"
    argv = ["compress", str(tiny_model_dir), "--device", str(profile), "--out", str(out)]
    assert main([*argv, "--quant", "onnx:int4", "--bundle", "--quiet"]) == 0
    return out


def test_onnx_bundle_is_an_onnxruntime_genai_folder(out: Path) -> None:
    root = out / NAME
    names = sorted(p.name for p in root.iterdir())
    for needed in (
        "genai_config.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
    ):
        assert needed in names
    m = json.loads((root / "manifest.json").read_text())
    assert m["runtime"] == "onnxruntime-genai" and m["format"] == "onnx" and m["model_file"] == "."
    cfg = json.loads((root / "genai_config.json").read_text())
    assert cfg["model"]["context_length"] == 256 == m["generation"]["context_length"]
    # loads and generates in onnxruntime-genai (here, in-process: the app's view)
    model = og.Model(str(root))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(
        json.dumps([{"role": "user", "content": "hello"}]), add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok.encode(prompt)
    assert list(ids) == m["reference"]["token_ids"][: len(ids)] or len(ids) > 0
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 6, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    new = []
    while not gen.is_done():
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    assert 1 <= len(new) <= 6


def test_genai_is_measured_and_judges_when_the_profile_names_it(out: Path) -> None:
    report = RunReport.model_validate_json((out / "report.json").read_text())
    measured = report.measured["onnx/model.onnx"]
    assert measured["runtime"] == "onnxruntime-genai (its generator)"
    assert measured["genai_decode_ms_per_token"] > 0 and measured["ort_loop_decode_ms_per_token"] > 0
    assert measured["host_decode_ms_per_token"] == measured["genai_decode_ms_per_token"]


def test_verify_an_onnx_bundle(out: Path, tmp_path: Path, capsys) -> None:
    assert main(["verify", str(out / NAME)]) == 0
    assert "onnxruntime-genai" in capsys.readouterr().out
    copy = tmp_path / NAME
    shutil.copytree(out / NAME, copy)
    (copy / "genai_config.json").write_text("{}")
    refuse(["verify", str(copy)], copy, capsys, ExitCode.BAD_INPUT, "genai_config.json", "manifest says")
