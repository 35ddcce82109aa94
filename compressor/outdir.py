"""Atomic output directories: build beside the target, rename into place at the end.

A finished bundle is never left half-written: work happens in ``.<name>.partial-<random>`` next to the
target, which is renamed to the target only when everything succeeded. On failure the target holds
only the reports (so CI can read why), and the partial directory is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from compressor.errors import OutputError


class OutputDir:
    def __init__(self, target: Path, force: bool = False) -> None:
        self.target = target.resolve()
        self.force = force
        self.staging: Path | None = None

    def prepare(self) -> Path:
        """Check the target can be written and create the staging directory; nothing else is touched."""
        t = self.target
        if t.exists() and not t.is_dir():
            raise OutputError(f"output path {t} exists and is not a directory; choose another --out")
        if t.is_dir() and any(t.iterdir()) and not self.force:
            raise OutputError(f"output directory {t} is not empty; pass --force to replace it")
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{t.name}.partial-", dir=t.parent))
        except OSError as exc:
            raise OutputError(
                f"cannot write to {t.parent}: {exc.strerror or exc}; choose another --out"
            ) from None
        return self.staging

    def _swap_in(self, src: Path) -> None:
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(src, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def commit(self) -> Path:
        assert self.staging is not None, "prepare() first"
        self._swap_in(self.staging)
        self.staging = None
        return self.target

    def fail(self, reports: dict[str, str]) -> Path:
        """Replace the target by a directory holding only ``reports`` (name -> text)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.failed-", dir=self.target.parent))
        for name, text in reports.items():
            (holder / name).write_text(text, encoding="utf-8")
        self._swap_in(holder)
        self.staging = None
        return self.target

    def abandon(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
