"""The bad-input catalogue, part 2: ``check`` on tampered bundles (manifest paths outside the bundle,
symlinks, a missing or malformed manifest, swapped or unlisted files), through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import ExitCode
from tests.conftest import TINY_PROFILE
from tests.unit.catalogue import refuse

pytest.importorskip("llama_cpp")


# --- 2, 3. check: manifest paths, missing manifest, tampering -----------------------------------


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path, tiny_profile: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "out"
    assert (
        main(["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), "--quiet"])
        == 0
    )
    return out


@pytest.fixture()
def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst, symlinks=True)
    (tmp_path / "profile.toml").write_text(TINY_PROFILE)
    return dst


def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def _check(root: Path) -> list[str]:
    return ["check", str(root), "--device", str(root.parent / "profile.toml")]


@pytest.fixture()
def hashed(monkeypatch) -> list[Path]:
    """Every file ``check`` hashes."""
    import compressor.check

    seen: list[Path] = []
    real = compressor.check.sha256_file

    def spy(p: Path) -> str:
        seen.append(Path(p))
        return real(p)

    monkeypatch.setattr(compressor.check, "sha256_file", spy)
    return seen


@pytest.mark.parametrize(
    "path", ["../../../../etc/passwd", "/etc/shadow", "tokenizer/../../x", "./model.gguf"]
)
def test_check_never_reads_outside_the_bundle(copy_of: Path, capsys, hashed, path: str) -> None:
    def edit(m):
        m["files"].append({"path": path, "role": "model", "bytes": 1, "sha256": "0" * 64})

    _edit_manifest(copy_of, edit)
    refuse(_check(copy_of), copy_of.parent, capsys, ExitCode.BAD_INPUT, path)
    assert hashed == []  # rejected before any file was opened


def test_check_rejects_a_symlink_out_of_the_bundle(copy_of: Path, capsys, hashed) -> None:
    (copy_of / "tokenizer" / "vocab.txt").symlink_to("/etc/passwd")

    def edit(m):
        m["files"].append(
            {"path": "tokenizer/vocab.txt", "role": "tokenizer", "bytes": 1, "sha256": "0" * 64}
        )

    _edit_manifest(copy_of, edit)
    refuse(_check(copy_of), copy_of.parent, capsys, ExitCode.BAD_INPUT, "tokenizer/vocab.txt", "symlink")
    assert hashed == []


def test_check_without_a_manifest_is_not_a_bundle(copy_of: Path, capsys) -> None:
    (copy_of / "manifest.json").unlink()
    refuse(
        _check(copy_of),
        copy_of.parent,
        capsys,
        ExitCode.BAD_INPUT,
        "manifest.json",
        "not a compressor bundle",
    )


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m["files"][0].pop("bytes"), "bytes"),
        (lambda m: m.update(files="model.gguf"), "files"),
        (lambda m: m.update(files=[]), "files"),
        (lambda m: m["files"][0].update(sha256="abc"), "sha256"),
        (lambda m: m.update(created_by="someone"), "created_by"),
        (lambda m: m["files"].append(dict(m["files"][0])), "twice"),
    ],
)
def test_check_rejects_a_malformed_manifest(copy_of: Path, capsys, edit, needle: str) -> None:
    _edit_manifest(copy_of, edit)
    refuse(_check(copy_of), copy_of.parent, capsys, ExitCode.BAD_INPUT, needle)


def test_check_rejects_a_swapped_model(copy_of: Path, capsys) -> None:
    data = bytearray((copy_of / "model.gguf").read_bytes())
    data[-1] ^= 0xFF
    (copy_of / "model.gguf").write_bytes(bytes(data))
    refuse(_check(copy_of), copy_of.parent, capsys, ExitCode.BAD_INPUT, "model.gguf", "sha256")


def test_check_reports_files_the_manifest_does_not_list(copy_of: Path, capsys) -> None:
    (copy_of / "extra.gguf").write_bytes(b"GGUF planted")
    assert main(_check(copy_of)) == 0  # the listed model still passes; the stranger is not measured
    err = capsys.readouterr().err
    assert "warning:" in err and "extra.gguf" in err
