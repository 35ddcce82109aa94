"""Distillation on the real SmolLM2-135M: QAT through gguf:Q4_0 beats round-to-nearest in llama.cpp."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.harness import evaluate, reference_logits
from compressor.quant import QuantScheme
from exporters.gguf import export_gguf
from stages.quantize import quantize_model
from tests.conftest import LICENSE_TEXT
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration
HELDOUT = Path("/usr/share/common-licenses/Apache-2.0")  # not used for training


def test_qat_q4_0_has_lower_kl_than_rtn_in_llama_cpp(smollm2, tmp_path: Path) -> None:
    # the baseline: what compress writes without calibration text (the weighted scale search), written
    # through the API from the loaded model (the CLI path is exercised by the QAT run below)
    scheme = QuantScheme.parse("gguf:Q4_0")
    model, packed, _ = quantize_model(copy.deepcopy(smollm2.model), scheme, search=True)
    (tmp_path / "rtn").mkdir()
    export_gguf(smollm2.evolve("quantize", model=model, scheme=scheme, quantized=packed), tmp_path / "rtn")
    common = ["compress", "smollm2-135m", "--device", "host", "--quant", "gguf:Q4_0", "--quiet"]
    qat = cli(
        *common,
        "--out",
        str(tmp_path / "qat"),
        "--qat",
        "--calib-data",
        str(LICENSE_TEXT),
        "--distill-tokens",
        "16384",  # 8 steps of 8 x 256: a short, fixed CPU budget
        "--distill-lr",
        "1e-4",
        "--ptq",
        "weighted",  # QAT starts from the weighted scale search (GPTQ's codes would add ~40 s here)
    )
    assert qat.returncode == 0, qat.stderr
    stages = json.loads((tmp_path / "qat" / "report.json").read_text())["stages"]
    summary = next(s["summary"] for s in stages if s["stage"] == "distill")
    ids = smollm2.tokenizer(HELDOUT.read_text(encoding="utf-8")).input_ids[:512]
    ref = reference_logits(smollm2.model, ids)
    kl_rtn = evaluate(tmp_path / "rtn" / "model.gguf", ref, ids)["mean_kl"]
    kl_qat = evaluate(tmp_path / "qat" / "model.gguf", ref, ids)["mean_kl"]
    print(f"held-out KL to the float teacher in llama.cpp: RTN {kl_rtn:.4f}, QAT {kl_qat:.4f}", summary)
    assert kl_qat < 0.85 * kl_rtn
    sizes = [(tmp_path / d / "model.gguf").stat().st_size for d in ("rtn", "qat")]
    assert sizes[0] == sizes[1]  # same format, same size: the gain is in the weights
