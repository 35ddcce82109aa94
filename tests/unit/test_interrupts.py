"""Interrupted runs through the real CLI process: SIGTERM unwinds cleanly; after kill -9 the next run
cleans the killed run's scratch and --resume finishes with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressor.errors import ExitCode
from tests.conftest import LICENSE_TEXT

pytest.importorskip("llama_cpp")
REPO = Path(__file__).resolve().parents[2]
STEP_TOKENS = 8 * 256  # one distillation batch


def _args(model: Path, profile: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "compressor", "compress", str(model), "--device", str(profile),
        "--out", str(out), "--quiet", "--qat", "--distill-lr", "1e-3", "--calib-data", str(LICENSE_TEXT),
        "--distill-tokens", str(steps * STEP_TOKENS),
    ]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} did not appear in {timeout_s} s")
        time.sleep(0.01)


def _scratch(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*")) + sorted(
        out.parent.glob(f".{out.name}.failed-*")
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigterm_unwinds_and_leaves_nothing_half_written(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = _start(_args(tiny_model_dir, tiny_profile, out, steps=400))
    _wait_for(tmp_path / ".out.distill-checkpoint.safetensors", proc)  # deep in the training loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED, err
    assert "terminated" in err and "Traceback" not in err
    assert not out.exists() and _scratch(out) == []
    # what stays is the checkpoint, on purpose: it is what --resume continues from
    assert [p.name for p in tmp_path.iterdir()] == [".out.distill-checkpoint.safetensors"]


def test_kill9_then_resume_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    steps = 100  # checkpoints every 20 steps
    whole = tmp_path / "whole"
    done = subprocess.run(_args(tiny_model_dir, tiny_profile, whole, steps), cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "cut"
    proc = _start(_args(tiny_model_dir, tiny_profile, out, steps))
    _wait_for(tmp_path / ".cut.distill-checkpoint.safetensors", proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    leftovers = _scratch(out)
    assert leftovers, "a killed run leaves its partial directory (nothing can clean up after SIGKILL)"

    resumed = subprocess.run(
        [*_args(tiny_model_dir, tiny_profile, out, steps), "--resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.exists() for p in leftovers) and _scratch(out) == []  # the next run cleaned them
    assert not (tmp_path / ".cut.distill-checkpoint.safetensors").exists()
    import json

    distill = next(
        s for s in json.loads((out / "report.json").read_text())["stages"] if s["stage"] == "distill"
    )
    assert distill["summary"]["resumed_from_step"] in (20, 40, 60, 80)
    assert distill["summary"]["steps"] == steps
    assert _sha(out / "model.gguf") == _sha(whole / "model.gguf")
