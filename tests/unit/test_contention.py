"""A gate that does not flake under load: a busy host is detected, and a latency budget is never
failed on figures measured while other processes used the CPU (exit 7 instead of 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.budget import BudgetCheck, Provenance, mark_unreliable
from compressor.check import verdict
from compressor.cli import main
from compressor.errors import ExitCode
from compressor.report import Outcome, RunReport, render_junit

pytest.importorskip("llama_cpp")


def _check(budget: str, passed: bool) -> BudgetCheck:
    return BudgetCheck(
        budget=budget,
        limit=1.0,
        value=1.0 if passed else 2.0,
        unit="ms",
        provenance=Provenance.ESTIMATED,
        where="device:x",
        passed=passed,
        artifact="model.gguf",
    )


def test_verdict_trusts_size_and_doubts_latency_measured_on_a_busy_host() -> None:
    busy = mark_unreliable([_check("max_size_mib", True), _check("max_decode_ms_per_token", False)], "busy")
    assert verdict(busy)[:2] == (Outcome.UNRELIABLE, ExitCode.MEASUREMENT_UNRELIABLE)
    busy_and_big = mark_unreliable([_check("max_size_mib", False), _check("max_ttft_ms", False)], "busy")
    outcome, code, message = verdict(busy_and_big)
    assert (outcome, code) == (Outcome.BUDGET_MISSED, ExitCode.BUDGET_MISSED) and "max_ttft_ms" in message
    assert verdict([_check("max_decode_ms_per_token", False)])[1] == ExitCode.BUDGET_MISSED  # idle host
    assert verdict(busy[:1])[1] == ExitCode.OK


def test_junit_calls_a_busy_host_an_error_not_a_failure() -> None:
    checks = mark_unreliable([_check("max_decode_ms_per_token", False)], "busy")
    report = RunReport(
        tool_version="0", command="check", model="m", device="d", outcome=Outcome.UNRELIABLE, exit_code=7,
        checks=checks,
    )  # fmt: skip
    xml = render_junit(report)
    assert 'failures="0"' in xml and 'errors="1"' in xml and "<error" in xml


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path, tiny_profile: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("busy") / "out"
    args = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


def test_check_on_a_busy_host_says_so_instead_of_failing_the_budget(
    bundle: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
    ]
    try:
        code = main(
            [
                "check",
                str(bundle),
                "--device",
                str(tiny_profile),
                "--max-decode-ms",
                "1e-6",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
    finally:
        for b in burners:
            b.kill()
            b.wait()
    err = capsys.readouterr().err
    assert code == ExitCode.MEASUREMENT_UNRELIABLE, err
    assert "idle machine" in err
    report = json.loads((tmp_path / "r.json").read_text())
    measured = report["measured"]["model.gguf"]
    assert measured["host_foreign_load_cores"] > 0.5 and measured["host_measurement_reliable"] is False
    decode = next(c for c in report["checks"] if c["budget"] == "max_decode_ms_per_token")
    size = next(c for c in report["checks"] if c["budget"] == "max_size_mib")
    assert decode["reliable"] is False and not decode["passed"] and "unreliable" in decode["where"]
    assert size["reliable"] is True
