"""Why a path the user gave cannot be used, in words (one place, so every input says it alike)."""

from __future__ import annotations

from pathlib import Path


def unreachable(path: Path) -> str | None:
    """None if ``path`` exists (following symlinks); else 'does not exist' or why a symlink fails."""
    try:
        path.stat()
    except OSError as exc:
        if path.is_symlink():
            return f"is a broken symlink or a symlink loop ({exc.strerror})"
        return "does not exist"
    return None
