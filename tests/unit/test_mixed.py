"""Mixed precision: the knapsack keeps to its budget and spends it where the predicted KL falls most;
through the CLI the file is never larger than --max-size-mib and the plan is in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import ExitCode
from stages.mixed import Option, allocate
from tests.conftest import LICENSE_TEXT

pytest.importorskip("llama_cpp")


def _opts(kls: tuple[float, float, float]) -> list[Option]:
    return [Option("IQ4_NL", 45.0, kls[0]), Option("Q5_0", 55.0, kls[1]), Option("Q8_0", 85.0, kls[2])]


def test_allocation_keeps_to_the_budget_and_upgrades_the_sensitive_tensor() -> None:
    options = {"sensitive": _opts((1.0, 0.3, 0.01)), "robust": _opts((0.01, 0.005, 0.001))}
    chosen = allocate(options, 45 + 85)
    assert sum(o.size_bytes for o in chosen.values()) <= 130
    assert chosen["sensitive"].kind == "Q8_0" and chosen["robust"].kind == "IQ4_NL"
    everything = allocate(options, 10_000)
    assert all(o.kind == "Q8_0" for o in everything.values())  # no budget pressure: least KL
    tight = allocate(options, 90)
    assert all(o.kind == "IQ4_NL" for o in tight.values())
    with pytest.raises(ValueError):
        allocate(options, 89)


def test_mixed_file_fits_its_size_limit(tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--quant", "gguf:mixed", "--max-size-mib", "0.08", "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0
    size = (out / "model.gguf").stat().st_size
    assert size <= 0.08 * 2**20
    report = json.loads((out / "report.json").read_text())
    quant = next(s for s in report["stages"] if s["stage"].startswith("quantize"))
    projected = quant["footprint"]["size"]["value"] * 2**20
    assert 0 <= projected - size < 32 * 24  # an upper bound within the per-tensor alignment slack
    plan = quant["summary"]["mixed_plan"]
    kinds = {k for group in plan.values() for k in group}
    assert len(kinds) >= 2  # a real mix at this budget
    assert quant["summary"]["mixed_predicted_kl"] > 0


def test_mixed_without_a_size_is_refused(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    prof = tmp_path / "nosize.toml"
    from tests.conftest import TINY_PROFILE

    prof.write_text(TINY_PROFILE.replace("max_size_mib = 50\n", ""))
    out = tmp_path / "out"
    args = [
        "compress",
        str(tiny_model_dir),
        "--device",
        str(prof),
        "--out",
        str(out),
        "--quant",
        "gguf:mixed",
    ]
    assert main(args) == ExitCode.BAD_INPUT
    assert "--max-size-mib" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--quant", "gguf:mixed", "--mixed-types", "Q4_K,Q8_0", "--max-size-mib", "1"], "Q4_K"),
        (["--quant", "gguf:Q4_0", "--mixed-types", "Q8_0"], "gguf:mixed or onnx:mixed only"),
        (["--mixed-types", "Q3_K"], "cannot be searched"),
        (["--qat", "--ptq", "weighted", "--quant", "onnx:int4"], "--ptq rtn"),
        (["--qat", "--quant", "gguf:Q5_K_M"], "gguf:IQ4_NL"),
    ],
)
def test_bad_mixed_and_ptq_options(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys, extra: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), *extra]
    assert main(args) == ExitCode.BAD_INPUT
    assert needle in capsys.readouterr().err and not out.exists()


def test_gptq_through_the_cli(tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--quant", "gguf:IQ4_NL", "--ptq", "gptq", "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0  # the exported file validated against the torch model in llama.cpp
    report = json.loads((out / "report.json").read_text())
    quant = next(s for s in report["stages"] if s["stage"].startswith("quantize"))
    assert quant["summary"]["ptq"] == "gptq" and quant["summary"]["gptq_tensors"] == 2 * 7
    assert quant["summary"]["tensors_by_type"]["IQ4_NL"] == 2 * 7  # the tied embedding: Q8_0


@pytest.mark.parametrize("spec", ["onnx:int4", "onnx:int4-asym"])
def test_onnx_gptq_through_the_cli(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, spec: str
) -> None:
    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--quant", spec, "--ptq", "gptq", "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0  # the exported graph validated against the torch model in onnxruntime
    report = json.loads((out / "report.json").read_text())
    quant = next(s for s in report["stages"] if s["stage"].startswith("quantize"))
    assert quant["summary"]["ptq"] == "gptq" and quant["summary"]["gptq_tensors"] == 2 * 7


@pytest.mark.parametrize(
    ("spec", "bpw", "kinds"), [("onnx:mixed", 6.0, {"int4", "int8"}), ("gguf:mixed", 5.5, None)]
)
def test_bits_per_weight_budget(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, spec: str, bpw: float, kinds: set | None
) -> None:
    """--bits-per-weight fits the matrices to B bits on average; onnx:mixed mixes int4 and int8."""
    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--quant", spec, "--bits-per-weight", str(bpw), "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0  # exported and validated in its runtime
    report = json.loads((out / "report.json").read_text())
    quant = next(s for s in report["stages"] if s["stage"].startswith("quantize"))
    summary = quant["summary"]
    assert summary["mixed_weight_mib"] <= summary["mixed_budget_mib"]
    used = {k for group in summary["mixed_plan"].values() for k in group}
    assert len(used) >= 2 and (kinds is None or used == kinds)
    assert 4.5 < summary["bits_per_weight"] <= bpw + 0.5  # norms are fp32: a little above B
