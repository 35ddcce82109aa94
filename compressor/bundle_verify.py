"""``compressor verify BUNDLE``: prove a bundle (folder or .zip) is exactly what was packaged.

In order, every problem found at a step reported at once, each naming its file:
1. ``manifest.json`` is valid against the bundle schema (``compressor schema manifest``);
2. every listed path is a plain file inside the bundle (no absolute path, ``..``, symlink) — checked
   before any file is opened, so nothing outside the bundle is read — and has its listed size and
   sha256 (``check``'s own rules, ``check.verify_listed``);
3. nothing extra: no file, directory or link the manifest does not list;
4. the bundled tokenizer turns the recorded prompt into the recorded ids, and the model, loaded in its
   runtime, gives the recorded logits on them (within the recorded tolerance; top-1 may differ only
   where the recorded top two were closer than it).
Steps 1-3 fail with exit 3 (the bundle does not match its manifest), step 4 with exit 5. A zip is
checked entry by entry (names, types) before it is extracted into a temporary directory.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from compressor.bundle_manifest import BundleManifest
from compressor.check import TamperError, verify_listed
from compressor.errors import ValidationError
from compressor.package import MANIFEST


class LogitsMismatch(ValidationError):
    """The bundled model (or tokenizer) does not behave as it did when packaged (exit 5)."""


def read_manifest(root: Path) -> BundleManifest:
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise TamperError(f"{path}: missing; {root} is not a bundle (run 'compressor bundle OUT')")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TamperError(f"{path}: not valid JSON ({exc})") from None
    try:
        return BundleManifest.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [
            f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()[:10]
        ]
        raise TamperError(
            f"{path}: not a valid bundle manifest (compressor schema manifest)", problems
        ) from None


def _extra(root: Path, listed: set[str]) -> list[str]:
    """Everything under ``root`` the manifest does not list (links are reported, never followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            rel = (here / name).relative_to(root).as_posix()
            if (here / name).is_symlink():
                out.append(f"{rel}: a symlink, not listed in {MANIFEST}")
            elif not any(p.startswith(rel + "/") for p in listed):
                out.append(f"{rel}/: a directory no listed file is in")
        for name in filenames:
            rel = (here / name).relative_to(root).as_posix()
            if rel != MANIFEST and rel not in listed:
                out.append(f"{rel}: not listed in {MANIFEST}")
    return sorted(out)


def verify_files(root: Path, m: BundleManifest) -> None:
    """Nothing extra, then every listed path inside the bundle with its size and sha256 (``check``'s
    rules: every path is checked before any file is opened)."""
    paths = [f.path for f in m.files]
    if MANIFEST in paths:
        raise TamperError(f"{root}/{MANIFEST} lists itself")
    extra = _extra(root, set(paths))  # os.walk: links are reported, never followed
    verify_listed(root, list(m.files))
    if extra:
        raise TamperError(f"{root} holds files its {MANIFEST} does not list", extra)


def compare_reference(m: BundleManifest, logits: np.ndarray) -> tuple[list[str], float]:
    """(problems, largest |logit difference| on the recorded ids); no problems = the recorded logits."""
    ref = m.reference
    if logits.shape[0] != len(ref.token_ids):
        return [f"the model gave {logits.shape[0]} positions for {len(ref.token_ids)} prompt tokens"], float(
            "inf"
        )
    worst, where, flips = 0.0, -1, []
    for i, (ids, vals) in enumerate(zip(ref.top_ids, ref.top_logits, strict=True)):
        got = logits[i, ids]
        diff = float(np.max(np.abs(got - np.asarray(vals))))
        if diff > worst:
            worst, where = diff, i
        gap = vals[0] - vals[1] if len(vals) > 1 else float("inf")
        if int(np.argmax(logits[i])) != ids[0] and gap > ref.tolerance:
            flips.append(i)
    problems = []
    if worst > ref.tolerance:
        problems.append(
            f"logits differ from the recorded ones by up to {worst:.4g} (position {where}; "
            f"tolerance {ref.tolerance})"
        )
    if flips:
        problems.append(f"the most likely next token changed at {len(flips)} positions (first: {flips[0]})")
    return problems, worst


def verify_behaviour(root: Path, m: BundleManifest) -> dict[str, Any]:
    from compressor.bundle import prompt_ids, runtime_logits

    model = m.model_file if m.format == "gguf" else "model.onnx"
    text, ids = prompt_ids(root, m.generation.chat_template)
    if text != m.reference.prompt or ids != m.reference.token_ids:
        raise LogitsMismatch(
            "tokenizer.json/tokenizer_config.json: the bundled tokenizer does not turn the recorded prompt "
            "into the recorded token ids"
        )
    logits = runtime_logits(root, m.runtime, m.model_file, ids, threads=m.reference.threads)
    problems, worst = compare_reference(m, logits)
    if problems:
        raise LogitsMismatch(f"{model}: does not give the logits recorded at packaging time", problems)
    return {"positions": len(ids), "max_abs_logit_diff": worst, "tolerance": m.reference.tolerance}


def _safe_extract(zpath: Path, dest: Path) -> Path:
    """Extract a bundle zip after checking every entry: one top folder, relative names without '..',
    regular files only (a symlink entry is refused). Returns the bundle folder."""
    try:
        z = zipfile.ZipFile(zpath)
    except (OSError, zipfile.BadZipFile) as exc:
        raise TamperError(f"{zpath}: not a readable zip ({exc})") from None
    with z:
        problems, tops = [], set()
        for info in z.infolist():
            name = info.filename
            parts = name.rstrip("/").split("/")
            mode = info.external_attr >> 16
            if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
                problems.append(f"{name!r}: not a relative path inside the bundle")
            elif stat.S_ISLNK(mode):
                problems.append(f"{name}: a symlink")
            tops.add(parts[0])
        if len(tops) > 1:
            problems.append(f"more than one top-level folder: {', '.join(sorted(tops))}")
        if problems:
            raise TamperError(f"{zpath}: unsafe or malformed entries", problems)
        for info in z.infolist():
            if not info.is_dir():
                target = dest / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
    return dest / next(iter(tops))


def verify(path: Path) -> dict[str, Any]:
    """Verify a bundle folder or zip; raises TamperError (exit 3) or LogitsMismatch (exit 5)."""
    if path.is_symlink() or not path.exists():
        raise TamperError(f"{path}: no such bundle")
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="compressor-verify-") as tmp:
            return verify(_safe_extract(path, Path(tmp)))
    m = read_manifest(path)
    verify_files(path, m)
    behaviour = verify_behaviour(path, m)
    return {"bundle": path.name, "files": len(m.files), "runtime": m.runtime, **behaviour}
