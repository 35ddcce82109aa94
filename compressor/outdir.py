"""Atomic, safe output directories: build beside the target, rename into place at the end.

A finished bundle is never left half-written: work happens in ``.<name>.partial-<random>`` next to the
target, which is renamed to the target only when everything succeeded. On failure the target holds
only the reports (so CI can read why), and the partial directory is removed.

Safety rules (each one a data-loss report in the past):
- the target never contains, equals or lies inside one of the run's inputs (model, data, profile);
- ``--force`` replaces only a directory this tool wrote (its ``manifest.json`` or ``report.json``);
- every scratch directory carries an owner file (pid, host); a later run for the same target removes
  scratch left by a process that no longer runs (kill -9, power loss), and nothing else;
- parent directories created for ``--out`` are removed again when the run writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from compressor.errors import OutputError

OWNER_FILE = ".compressor-owner"
SCRATCH_KINDS = ("partial", "failed", "old")


def written_by_us(path: Path) -> bool:
    """Whether ``path`` is a directory a compressor run wrote: a bundle or a failed run's reports."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and str(manifest.get("created_by", "")).startswith("compressor "):
            return True
    except (OSError, ValueError):
        pass
    try:
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        return isinstance(report, dict) and report.get("command") == "compress" and "tool_version" in report
    except (OSError, ValueError):
        return False


def _overlap(target: Path, inp: Path) -> str | None:
    if inp == target:
        return "is"
    if inp.is_relative_to(target):
        return "contains"
    if target.is_relative_to(inp):
        return "lies inside"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_owner(scratch: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    (scratch / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")


def _stale(scratch: Path) -> bool:
    """A scratch directory whose owner process is gone (on this host)."""
    try:
        owner = json.loads((scratch / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours, or not readable: leave it alone
    return host == socket.gethostname() and not _pid_alive(pid)


class OutputDir:
    def __init__(self, target: Path, force: bool = False, inputs: tuple[Path, ...] = ()) -> None:
        self.target = target.resolve()
        self.force = force
        self.inputs = tuple(p.resolve() for p in inputs)
        self.staging: Path | None = None
        self.created: list[Path] = []  # parents this run created, deepest first

    def _check_target(self) -> None:
        t = self.target
        for inp in self.inputs:
            how = _overlap(t, inp)
            if how is not None:
                raise OutputError(
                    f"refusing to write --out {t}: it {how} the input {inp}; choose a directory that "
                    "neither holds nor is held by the model or data"
                )
        if t.exists() and not t.is_dir():
            raise OutputError(f"output path {t} exists and is not a directory; choose another --out")
        if t.is_dir() and any(t.iterdir()):
            if not self.force:
                raise OutputError(f"output directory {t} is not empty; pass --force to replace it")
            if not written_by_us(t):
                raise OutputError(
                    f"output directory {t} was not written by compressor (it has no manifest.json or "
                    "report.json of ours), so --force will not replace it; choose a new --out"
                )

    def clean_stale(self) -> list[Path]:
        """Remove scratch directories and files a killed run for this target left behind."""
        t, removed = self.target, list[Path]()
        if not t.parent.is_dir():
            return removed
        for kind in SCRATCH_KINDS:
            for p in t.parent.glob(f".{t.name}.{kind}-*"):
                if p.is_dir() and not p.is_symlink() and _stale(p):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        for p in t.parent.glob(f".{t.name}.distill-checkpoint.safetensors.tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def prepare(self) -> Path:
        """Check the target can be written and create the staging directory; nothing else is touched."""
        self._check_target()
        t = self.target
        try:
            missing = [p for p in (t.parent, *t.parent.parents) if not p.exists()]
            t.parent.mkdir(parents=True, exist_ok=True)
            self.created = missing
            self.clean_stale()
            self.staging = Path(tempfile.mkdtemp(prefix=f".{t.name}.partial-", dir=t.parent))
            _write_owner(self.staging)
        except OSError as exc:
            self._remove_created()
            raise OutputError(
                f"cannot write to {t.parent}: {exc.strerror or exc}; choose another --out"
            ) from None
        return self.staging

    def _swap_in(self, src: Path) -> None:
        (src / OWNER_FILE).unlink(missing_ok=True)
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            _write_owner(old)
        os.replace(src, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def commit(self) -> Path:
        if self.staging is None:
            raise RuntimeError("OutputDir.commit() before prepare()")
        self._swap_in(self.staging)
        self.staging = None
        return self.target

    def fail(self, reports: dict[str, str]) -> Path:
        """Replace the target by a directory holding only ``reports`` (name -> text)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.failed-", dir=self.target.parent))
        _write_owner(holder)
        for name, text in reports.items():
            (holder / name).write_text(text, encoding="utf-8")
        self._swap_in(holder)
        self.staging = None
        return self.target

    def abandon(self) -> None:
        """Undo everything: the staging directory and the parents this run created."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self.created:  # deepest first; stops at the first one that is not empty
            with contextlib.suppress(OSError):
                p.rmdir()
        self.created = []


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file beside it; nothing is left behind on failure."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
