"""``compressor check DIR --device X``: re-measure a finished artifact and gate on the budgets (CI)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pydantic

from compressor import __version__
from compressor.budget import BudgetCheck, split_failures
from compressor.builtin_models import sha256_file
from compressor.device_profile import DeviceProfile, load_profile
from compressor.errors import ExitCode, InputError, ModelLoadError, require
from compressor.loading import read_gguf_fields
from compressor.package import MANIFEST, REPORTS, ManifestFile, ManifestFiles
from compressor.paths import unreachable
from compressor.report import Outcome, RunReport

MODEL_SUFFIXES = (".gguf", ".onnx")


class TamperError(InputError):
    """A bundle whose manifest is missing, malformed, or does not match the files (exit 3)."""


def _stat_problem(root: Path) -> str | None:
    why = unreachable(root)
    return None if why is None else f"artifact {root} {why}"


def find_models(root: Path) -> tuple[list[Path], list[str]]:
    """(model files to measure, warnings). A directory must be a bundle with a valid manifest.json;
    a single .gguf/.onnx file given directly is measured as it is."""
    if (why := _stat_problem(root)) is not None:
        raise InputError(why)
    if root.is_file():
        if root.suffix in MODEL_SUFFIXES:
            return [root], []
        raise InputError(f"{root} is neither an artifact directory nor a .gguf/.onnx file")
    entries = _read_manifest(root)
    verify_listed(root, entries)
    listed = {e.path for e in entries}
    models = [root / e.path for e in entries if e.role == "model" and Path(e.path).suffix in MODEL_SUFFIXES]
    if not models:
        raise TamperError(f"{root}/{MANIFEST} lists no .gguf or .onnx model; re-run compress")
    for m in models:
        if m.suffix == ".onnx":
            _check_external_data(root, m, listed)
    unlisted = _unlisted(root, listed)
    warnings = [f"{root}: files not in {MANIFEST} (not measured, not verified): {', '.join(unlisted[:10])}"]
    return models, warnings if unlisted else []


def _read_manifest(root: Path) -> list[ManifestFile]:
    manifest = root / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        present = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
        raise TamperError(
            f"{root} is not a compressor bundle: it has no {MANIFEST} (it holds: {present}); "
            "run 'compressor compress', or pass a single .gguf/.onnx file to check it alone"
        )
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TamperError(f"{manifest} is not valid JSON ({exc}); re-run compress") from None
    try:
        return list(ManifestFiles.model_validate(data).files)
    except pydantic.ValidationError as exc:
        problems = [
            f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()[:10]
        ]
        raise TamperError(f"{manifest} is not a valid compressor manifest", problems) from None


def member_problem(root: Path, rel: str) -> str | None:
    """Why ``rel`` is not a plain file inside ``root`` (checked without opening it), or None.

    Only relative POSIX paths of normal names are allowed, and no component may be a symlink, so
    nothing outside the bundle is ever read (not even to hash it)."""
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or ":" in parts[0] or "\x00" in rel:
        return f"{rel!r}: not a relative POSIX path inside the bundle"
    if any(part in ("", ".", "..") for part in parts):
        return f"{rel!r}: contains an empty, '.' or '..' component"
    here = root
    for part in parts:
        here = here / part
        try:
            st = here.lstat()
        except OSError:
            return f"{rel}: missing"
        if stat.S_ISLNK(st.st_mode):
            return f"{rel}: {here.relative_to(root).as_posix()} is a symlink (not allowed in a bundle)"
    if not stat.S_ISREG(st.st_mode):
        return f"{rel}: not a regular file"
    return None


def verify_listed(root: Path, entries: list[ManifestFile]) -> None:
    """Every path checked before any file is opened; then sizes and hashes."""
    problems = [why for e in entries if (why := member_problem(root, e.path)) is not None]
    if len({e.path for e in entries}) != len(entries):
        problems.append("a path is listed twice")
    if problems:
        raise TamperError(f"{root}/{MANIFEST} lists paths that are not files of the bundle", problems)
    for e in entries:
        p = root / e.path
        if p.stat().st_size != e.bytes:
            problems.append(f"{e.path}: {p.stat().st_size} bytes, the manifest says {e.bytes}")
        elif sha256_file(p) != e.sha256:
            problems.append(f"{e.path}: contents differ from the manifest's sha256")
    if problems:
        raise TamperError(f"{root} does not match its {MANIFEST} (re-run compress)", problems)


def _check_external_data(root: Path, model: Path, listed: set[str]) -> None:
    """An ONNX model's external weights must be files the manifest lists (and so verified)."""
    onnx = require("onnx", "onnx")
    from compressor.inspect_onnx import external_data_locations

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{model} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    base = model.parent.relative_to(root)
    for loc in sorted(external_data_locations(proto)):
        rel = (base / loc).as_posix() if base.parts else loc
        if member_problem(root, rel) is not None or rel not in listed:
            raise TamperError(f"{model} reads weights from {loc!r}, which is not a file its manifest lists")


def _unlisted(root: Path, listed: set[str]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked directories
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel.split("/")[0].endswith((".bundle", ".bundle.zip")):
                continue  # the app bundle built from this output: 'compressor verify' checks it
            if rel not in listed and rel not in (MANIFEST, *REPORTS):
                out.append(rel)
    return sorted(out)


def _readable(path: Path, profile: DeviceProfile) -> None:
    """A clear error for a corrupt or truncated file (or a context it cannot hold) before a runtime."""
    if path.suffix == ".gguf":
        fields, _ = read_gguf_fields(path)
        arch = fields.get("general.architecture")
        ctx = fields.get(f"{arch}.context_length")
        if arch != "bert":  # an encoder has no decode context: its batch shape is budgeted instead
            profile.check_context(int(ctx) if isinstance(ctx, int) else None, path.name)
    else:
        from compressor.inspect_onnx import onnx_summary

        onnx_summary(path)


def check(root: Path, device: str, overrides: dict[str, float | None]) -> RunReport:
    profile = load_profile(device).with_budgets(**overrides)
    models, warnings = find_models(root)
    for m in models:
        _readable(m, profile)
    from compressor.verify import measure_artifact

    base = root if root.is_dir() else root.parent
    stages, checks, measured = [], [], {}
    for m in models:
        label = m.relative_to(base).as_posix()
        stage, found = measure_artifact(m, profile, label)
        stages.append(stage)
        checks += found
        measured[label] = stage.summary
    outcome, code, message = verdict(checks)
    return RunReport(
        tool_version=__version__,
        command="check",
        model=str(root),
        device=profile.name,
        outcome=outcome,
        exit_code=int(code),
        message=message,
        stages=stages,
        measured=measured,
        checks=checks,
        artifacts={label: "" for label in measured},
        warnings=warnings,
    )


def verdict(checks: list[BudgetCheck]) -> tuple[Outcome, ExitCode, str | None]:
    """Missed budgets fail (exit 1); misses seen only on a busy host are 'unreliable' (exit 7)."""
    hard, shaky = split_failures(checks)
    if hard:
        return Outcome.BUDGET_MISSED, ExitCode.BUDGET_MISSED, _bullets("budgets missed", hard + shaky)
    if shaky:
        return (
            Outcome.UNRELIABLE,
            ExitCode.MEASUREMENT_UNRELIABLE,
            _bullets(
                "latency looked over budget, but other processes used the CPU while measuring; "
                "re-run on an idle machine",
                shaky,
            ),
        )
    return Outcome.PASS, ExitCode.OK, None


def _bullets(head: str, items: list[str]) -> str:
    return head + ":\n" + "\n".join(f"  - {f}" for f in items)
