"""``compressor check DIR --device X``: re-measure a finished artifact and gate on the budgets (CI)."""

from __future__ import annotations

import json
from pathlib import Path

from compressor import __version__
from compressor.budget import describe_failures
from compressor.device_profile import load_profile
from compressor.errors import ExitCode, InputError
from compressor.loading import read_gguf_fields, sha256_file
from compressor.report import Outcome, RunReport


def find_model(root: Path) -> Path:
    """The GGUF in an output directory (model.gguf, or the one the manifest names)."""
    if not root.exists():
        raise InputError(f"artifact directory {root} does not exist")
    if root.is_file():
        if root.suffix == ".gguf":
            return root
        raise InputError(f"{root} is neither an artifact directory nor a .gguf file")
    manifest = root / "manifest.json"
    if manifest.is_file():
        _verify_manifest(root, manifest)
    candidates = sorted(root.glob("*.gguf"))
    if not candidates:
        present = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
        raise InputError(
            f"{root} holds no .gguf model (it holds: {present}); run 'compressor compress' first"
        )
    return root / "model.gguf" if (root / "model.gguf").is_file() else candidates[0]


def _verify_manifest(root: Path, manifest: Path) -> None:
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest} is not a valid compressor manifest ({exc})") from None
    problems = []
    for f in files:
        p = root / f["path"]
        if not p.is_file():
            problems.append(f"{f['path']}: missing")
        elif p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            problems.append(f"{f['path']}: contents differ from the manifest's sha256")
    if problems:
        raise InputError(f"{root} does not match its manifest.json (re-run compress)", problems)


def check(root: Path, device: str, overrides: dict[str, float | None]) -> RunReport:
    profile = load_profile(device).with_budgets(**overrides)
    model = find_model(root)
    read_gguf_fields(model)  # clear error for a corrupt or truncated file before llama.cpp sees it
    from compressor.verify import measure_gguf

    stage, checks = measure_gguf(model, profile)
    failed = describe_failures(checks)
    return RunReport(
        tool_version=__version__,
        command="check",
        model=str(model),
        device=profile.name,
        outcome=Outcome.BUDGET_MISSED if failed else Outcome.PASS,
        exit_code=int(ExitCode.BUDGET_MISSED if failed else ExitCode.OK),
        message=("budgets missed:\n" + "\n".join(f"  - {f}" for f in failed)) if failed else None,
        stages=[stage],
        measured=stage.summary,
        checks=checks,
        artifacts={"gguf": model.name},
    )
