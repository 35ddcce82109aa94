"""Bad input: one clear message, a documented exit code, no traceback, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import ExitCode


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _compress(model: str, out: Path, device: str = "host", *extra: str) -> list[str]:
    return ["compress", model, "--device", device, "--out", str(out), *extra]


def test_missing_model_path(tmp_path: Path, capsys) -> None:
    code, err = _run(_compress(str(tmp_path / "nope"), tmp_path / "out"), capsys)
    assert code == ExitCode.BAD_INPUT and "not found" in err and "smollm2-135m" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00garbage", b"not a gguf at all" * 10])
def test_corrupt_gguf(tmp_path: Path, capsys, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    code, err = _run(_compress(str(bad), tmp_path / "out"), capsys)
    assert code == ExitCode.BAD_INPUT and "bad.gguf" in err and "GGUF" in err
    assert not (tmp_path / "out").exists()


def test_truncated_gguf(tiny_artifact, tmp_path: Path, capsys) -> None:
    from exporters.gguf import export_gguf

    good = export_gguf(tiny_artifact, tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, err = _run(_compress(str(cut), tmp_path / "out"), capsys)
    assert code == ExitCode.BAD_INPUT and "truncated" in err


def test_directory_without_config(tmp_path: Path, capsys) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"x")
    code, err = _run(_compress(str(tmp_path / "m"), tmp_path / "out"), capsys)
    assert code == ExitCode.BAD_INPUT and "config.json" in err and "weights.safetensors" in err


def test_pickled_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    code, err = _run(_compress(str(tmp_path / "model.bin"), tmp_path / "out"), capsys)
    assert code == ExitCode.BAD_INPUT and "pickled" in err and "safetensors" in err


def test_unknown_profile_lists_known(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = _run(_compress(str(tiny_model_dir), tmp_path / "out", "pi-99"), capsys)
    assert code == ExitCode.BAD_INPUT and "raspberry-pi-5" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("[budgets]", "[budgets]\nmax_sise_mib = 3", "max_sise_mib"),
        ("max_ram_mib = 1024\nmax_decode", "max_ram_mib = -4\nmax_decode", "max_ram_mib"),
    ],
)
def test_bad_profile(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys, old, new, needle
) -> None:
    text = tiny_profile.read_text()
    assert old in text
    text = text.replace(old, new)
    prof = tmp_path / "bad.toml"
    prof.write_text(text)
    code, err = _run(_compress(str(tiny_model_dir), tmp_path / "out", str(prof)), capsys)
    assert code == ExitCode.BAD_INPUT and needle in err and "bad.toml" in err


def test_unwritable_output(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(_compress(str(tiny_model_dir), blocker / "out"), capsys)
    assert code == ExitCode.OUTPUT_NOT_WRITABLE and "cannot write" in err


def test_non_empty_output_needs_force(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = _run(_compress(str(tiny_model_dir), tmp_path / "out"), capsys)
    assert code == ExitCode.OUTPUT_NOT_WRITABLE and "--force" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_negative_budget_flag(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = _run(_compress(str(tiny_model_dir), tmp_path / "out", "host", "--max-size-mib", "-3"), capsys)
    assert code == ExitCode.BAD_INPUT and "max-size-mib" in err


def test_check_on_missing_and_corrupt_artifacts(tmp_path: Path, capsys) -> None:
    code, err = _run(["check", str(tmp_path / "none"), "--device", "host"], capsys)
    assert code == ExitCode.BAD_INPUT and "does not exist" in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.gguf").write_bytes(b"GGUF" + b"\x00" * 40)
    code, err = _run(["check", str(tmp_path / "d" / "model.gguf"), "--device", "host"], capsys)
    assert code == ExitCode.BAD_INPUT and "model.gguf" in err


def test_usage_error_exits_2_from_the_real_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "compressor", "compress"], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE and "--device" in proc.stderr


def test_help_lists_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    out = capsys.readouterr().out
    assert "exit codes" in out and "budget" in out


def test_check_on_a_corrupt_onnx_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "d" / "onnx").mkdir(parents=True)
    (tmp_path / "d" / "onnx" / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (tmp_path / "d" / "onnx" / "config.json").write_text("{}")
    code, err = _run(["check", str(tmp_path / "d" / "onnx" / "model.onnx"), "--device", "host"], capsys)
    assert code == ExitCode.BAD_INPUT and "model.onnx" in err and "ONNX" in err
