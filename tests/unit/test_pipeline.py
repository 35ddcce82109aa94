"""The whole compress/check flow on the tiny model, through the real CLI entry point."""

import hashlib
import json
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import ExitCode
from compressor.report import RunReport

pytest.importorskip("llama_cpp")


PIN = ("--quant", "gguf:Q4_0")


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path, tiny_profile: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(
        # the pinned pipeline (test_search covers the search)
        ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet", *PIN]
    )
    assert code == 0
    return out


def test_compress_writes_a_complete_bundle(bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert {"model.gguf", "report.json", "report.md", "manifest.json", "tokenizer"} <= names
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no partial dirs left
    report = RunReport.model_validate_json((bundle / "report.json").read_text())
    assert report.outcome.value == "pass" and report.exit_code == 0
    assert [s.stage for s in report.stages] == [
        "load",
        "quantize[gguf:Q4_0]",
        "export[gguf:Q4_0]",
        "measure[model.gguf]",
    ]
    m = report.measured["model.gguf"]
    assert m["host_decode_ms_per_token"] > 0 and m["host_runtime_rss_mib"] > 0
    kinds = {c.budget: (c.provenance.value, c.where) for c in report.checks}
    assert kinds["max_size_mib"] == ("measured", "file")
    assert kinds["max_decode_ms_per_token"] == ("estimated", "device:tiny-test")
    assert "PASS" in (bundle / "report.md").read_text()


def test_manifest_hashes_the_shipped_files(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert {"model.gguf", "tokenizer/tokenizer.json"} <= set(files)
    digest = hashlib.sha256((bundle / "model.gguf").read_bytes()).hexdigest()
    assert files["model.gguf"]["sha256"] == digest
    assert manifest["budgets"]["max_size_mib"] == 50 and manifest["measured"]["model.gguf"]["file_bytes"] > 0


def test_check_passes_then_gates_on_an_impossible_budget(
    bundle: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    assert main(["check", str(bundle), "--device", str(tiny_profile)]) == 0
    junit, js = tmp_path / "r.xml", tmp_path / "r.json"
    code = main(
        [
            "check",
            str(bundle),
            "--device",
            str(tiny_profile),
            "--max-size-mib",
            "0.01",
            "--junit",
            str(junit),
            "--json",
            str(js),
        ]
    )
    assert code == ExitCode.BUDGET_MISSED
    assert (
        'name="model.gguf:max_size_mib"><failure message="model.gguf: max_size_mib' not in junit.read_text()
    )
    assert 'name="model.gguf:max_size_mib"><failure' in junit.read_text()
    report = json.loads(js.read_text())
    (failed,) = [c for c in report["checks"] if not c["passed"]]
    assert failed["budget"] == "max_size_mib" and failed["limit"] == 0.01 and failed["value"] > 0.01


def test_check_refuses_a_tampered_bundle(bundle: Path, tiny_profile: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "model.gguf", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    assert main(["check", str(copy), "--device", str(tiny_profile)]) == ExitCode.BAD_INPUT
    assert "manifest" in capsys.readouterr().err


def test_projected_miss_stops_before_quantizing(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compress",
            str(tiny_model_dir),
            "--device",
            str(tiny_profile),
            "--out",
            str(out),
            "--max-size-mib",
            "0.001",
            "--quiet",
            "--quant",
            "gguf:Q4_0",
        ]
    )
    assert code == ExitCode.BUDGET_MISSED
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no model file
    report = RunReport.model_validate_json((out / "report.json").read_text())
    assert [(s.stage, s.status.value) for s in report.stages] == [("load", "stopped")]
    assert "max_size_mib" in (report.message or "") and "limit 0.001" in (report.message or "")


def test_k_quant_fallbacks_are_reported(tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compress",
            str(tiny_model_dir),
            "--device",
            str(tiny_profile),
            "--out",
            str(out),
            "--quant",
            "gguf:Q4_K_M",
            "--quiet",
        ]
    )
    assert code == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    quant = next(s for s in report.stages if s.stage.startswith("quantize"))
    assert quant.summary["fallback_count"] > 0
    assert "not a multiple of 256" in quant.summary["fallbacks"][0]["reason"]
    assert quant.summary["bits_per_weight"] > 4.5  # fallbacks cost bits; reported before writing


def test_report_schema_doc_is_in_sync() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"
    assert json.loads(doc.read_text()) == RunReport.model_json_schema(), (
        "run: compressor schema > docs/report.schema.json"
    )


def test_qat_through_the_cli_trains_and_ships(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    from tests.conftest import LICENSE_TEXT

    out = tmp_path / "qat"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    args += ["--qat", "--distill-tokens", "8192", "--distill-lr", "1e-3", "--calib-data", str(LICENSE_TEXT)]
    assert main(args) == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    assert [s.stage for s in report.stages][:3] == ["load", "qat-init", "distill"]
    assert report.stages[1].summary["ptq"] == "gptq"  # QAT starts from what PTQ alone would write
    summary = report.stages[2].summary
    assert summary["qat_scheme"] == "gguf:Q4_0" and summary["tokens"] == 8192
    assert summary["qat_quantizer"] == "learned scales (codes follow)" and summary["scales_changed"] > 0
    quant = next(s for s in report.stages if s.stage.startswith("quantize"))
    assert (
        quant.summary["ptq"] == "learned (QAT)" and quant.summary["tensors_from_qat"] == 2 * 7 + 1
    )  # the frozen embedding: its PTQ blocks
    assert summary["heldout_kl_after"] < summary["heldout_kl_before"]
    assert summary["processes"] == 1 and summary["tokens_per_s"] > 0
    assert (out / "model.gguf").is_file()
    assert not list(tmp_path.glob(".*checkpoint*"))  # the checkpoint goes once the run succeeds


def test_resume_without_a_checkpoint_is_a_clear_error(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "none"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    assert main([*args, "--distill", "--resume"]) == ExitCode.BAD_INPUT
    assert "no checkpoint" in capsys.readouterr().err and not out.exists()
