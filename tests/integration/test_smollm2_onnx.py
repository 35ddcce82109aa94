"""ONNX on the real SmolLM2-135M: fp32 exactness, int4 decoding, both formats from one run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from compressor.quant import QuantScheme
from exporters import ort_runtime
from exporters.onnx import export_onnx, load_ort_causal_lm
from exporters.workers import compare_logits
from stages.quantize import quantize_model
from tests.conftest import LICENSE_TEXT
from tests.integration.conftest import chat_prompt, cli

pytestmark = pytest.mark.integration
pytest.importorskip("onnxruntime")


# The tests check the gate's mechanics, not this host's speed under load: latency budgets relaxed.
RELAXED = ("--max-decode-ms", "1000", "--max-ttft-ms", "60000")


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("both") / "OUT"
    proc = cli(
        "compress",
        "smollm2-135m",
        "--device",
        "snapdragon-8-gen-3-genai",  # ONNX through onnxruntime-genai: the bundle is its folder
        "--quant",
        "gguf:Q4_0,onnx:int4",
        *RELAXED,
        "--mobile",
        "--bundle",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_fp32_onnx_logits_match_torch(smollm2, tmp_path: Path) -> None:
    path, _ = export_onnx(smollm2, tmp_path)
    ids = smollm2.tokenizer(LICENSE_TEXT.read_text(encoding="utf-8")).input_ids[:256]
    with torch.no_grad():
        ref = smollm2.model(torch.tensor([ids])).logits[0].numpy()
    stats = compare_logits(ref, ort_runtime.logits(path, ids))
    assert stats["max_abs_diff"] < 1e-3, stats
    prompt = torch.tensor([chat_prompt(smollm2.tokenizer)])
    out = load_ort_causal_lm(path.parent).generate(prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0, prompt.shape[1] :])


def test_one_run_writes_and_measures_both_formats(both: Path) -> None:
    report = json.loads((both / "report.json").read_text())
    assert report["outcome"] == "pass"
    assert set(report["measured"]) == {"model.gguf", "onnx/model.onnx"}
    for m in report["measured"].values():
        assert m["file_bytes"] > 0 and m["host_decode_ms_per_token"] > 0 and m["host_ttft_ms"] > 0
        assert m["host_peak_rss_mib"] > 0
    export = next(s for s in report["stages"] if s["stage"] == "export[onnx:int4]")["summary"]
    assert export["accuracy_level"] == 4 and export["tied_head"] == 1 and export["GatherBlockQuantized"] == 1
    assert export["ort_format"]["file"] == "model.ort" and (both / "onnx" / "model.ort").is_file()
    md = (both / "report.md").read_text()
    assert "onnx/model.onnx" in md and "model.gguf" in md
    assert cli("check", str(both), "--device", "raspberry-pi-5", *RELAXED).returncode == 0


def test_int4_greedy_matches_the_fake_quantized_torch_model(smollm2, both: Path) -> None:
    # --ptq auto without calibration text: the weighted scale search (no importance vector)
    model, _, _ = quantize_model(copy.deepcopy(smollm2.model), QuantScheme.parse("onnx:int4"), search=True)
    prompt = chat_prompt(smollm2.tokenizer)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    expected = ref[0, len(prompt) :].tolist()
    assert len(expected) >= 8  # may stop early at the end-of-turn token
    assert ort_runtime.greedy(both / "onnx" / "model.onnx", prompt, 16)[: len(expected)] == expected


def test_int4_and_int8_load_in_ort_model_for_causal_lm(smollm2, both: Path, tmp_path: Path) -> None:
    model, packed, _ = quantize_model(copy.deepcopy(smollm2.model), scheme := QuantScheme.parse("onnx:int8"))
    export_onnx(smollm2.evolve("q", model=model, scheme=scheme, quantized=packed), tmp_path)
    prompt = torch.tensor([chat_prompt(smollm2.tokenizer)])
    for onnx_dir in (both / "onnx", tmp_path / "onnx"):
        text = smollm2.tokenizer.decode(
            load_ort_causal_lm(onnx_dir).generate(prompt, max_new_tokens=12, do_sample=False)[
                0, prompt.shape[1] :
            ]
        )
        assert "Paris" in text, (onnx_dir, text)


def test_the_onnx_bundle_verifies_and_chats_in_onnxruntime_genai(both: Path) -> None:
    pytest.importorskip("onnxruntime_genai")
    from exporters import genai_runtime

    name = "smollm2-135m-snapdragon-8-gen-3-genai.bundle"
    assert cli("verify", str(both / f"{name}.zip")).returncode == 0
    manifest = json.loads((both / name / "manifest.json").read_text())
    assert manifest["runtime"] == "onnxruntime-genai" and manifest["quality"]["measured"]
    assert {f["path"] for f in manifest["files"]} >= {"model.onnx", "genai_config.json", "tokenizer.json"}
    reply = genai_runtime.chat(
        both / name, [{"role": "user", "content": "What is the capital of France?"}], 16
    )
    assert "Paris" in reply["reply"], reply
    report = json.loads((both / "report.json").read_text())
    onnx = report["measured"]["onnx/model.onnx"]
    assert onnx["runtime"].startswith("onnxruntime-genai") and onnx["ort_loop_decode_ms_per_token"] > 0
