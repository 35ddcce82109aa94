"""Shared by the bad-input catalogue tests: run the CLI and assert a clean refusal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from compressor.cli import main
from compressor.errors import ExitCode


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) -> content hash ('' for directories, link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = ""
        elif not p.is_file():
            out[rel] = "special"  # a pipe or device: never open it
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refuse(argv: list[str], sandbox: Path, capsys, code: ExitCode, *needles: str) -> str:
    """Run the CLI; it must exit ``code`` with one clear message containing ``needles``, no traceback,
    and leave ``sandbox`` exactly as it was."""
    before = _tree(sandbox)
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _tree(sandbox) == before, "the run wrote or deleted something"
    return err
