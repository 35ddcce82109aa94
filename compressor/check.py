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

MODEL_SUFFIXES = (".gguf", ".onnx")


def find_models(root: Path) -> list[Path]:
    """The model files of an output directory (model.gguf, onnx/model.onnx), or the one file given."""
    if not root.exists():
        raise InputError(f"artifact directory {root} does not exist")
    if root.is_file():
        if root.suffix in MODEL_SUFFIXES:
            return [root]
        raise InputError(f"{root} is neither an artifact directory nor a .gguf/.onnx file")
    manifest = root / "manifest.json"
    if manifest.is_file():
        _verify_manifest(root, manifest)
    found = sorted(root.glob("*.gguf")) + sorted(root.glob("onnx/*.onnx"))
    if not found:
        present = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
        raise InputError(
            f"{root} holds no .gguf or onnx/*.onnx model (it holds: {present}); run 'compressor compress'"
        )
    return found


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


def _readable(path: Path) -> None:
    """A clear error for a corrupt or truncated file before a runtime sees it."""
    if path.suffix == ".gguf":
        read_gguf_fields(path)
    else:
        from compressor.inspect_onnx import onnx_summary

        onnx_summary(path)


def check(root: Path, device: str, overrides: dict[str, float | None]) -> RunReport:
    profile = load_profile(device).with_budgets(**overrides)
    models = find_models(root)
    for m in models:
        _readable(m)
    from compressor.verify import measure_artifact

    base = root if root.is_dir() else root.parent
    stages, checks, measured = [], [], {}
    for m in models:
        label = m.relative_to(base).as_posix()
        stage, found = measure_artifact(m, profile, label)
        stages.append(stage)
        checks += found
        measured[label] = stage.summary
    failed = describe_failures(checks)
    return RunReport(
        tool_version=__version__,
        command="check",
        model=str(root),
        device=profile.name,
        outcome=Outcome.BUDGET_MISSED if failed else Outcome.PASS,
        exit_code=int(ExitCode.BUDGET_MISSED if failed else ExitCode.OK),
        message=("budgets missed:\n" + "\n".join(f"  - {f}" for f in failed)) if failed else None,
        stages=stages,
        measured=measured,
        checks=checks,
        artifacts={label: "" for label in measured},
    )
