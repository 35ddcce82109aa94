"""The bundle a mobile app developer ships: model file, tokenizer, and manifest.json with hashes,
budgets and the measured figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.artifact import ModelArtifact
from compressor.device_profile import DeviceProfile
from compressor.loading import sha256_file
from compressor.report import RunReport

MANIFEST_VERSION = 1


def write_bundle(root: Path, artifact: ModelArtifact, report: RunReport, profile: DeviceProfile) -> Path:
    """Save the tokenizer next to the model files in ``root`` and write ``root/manifest.json``."""
    artifact.tokenizer.save_pretrained(root / "tokenizer")
    files: list[dict[str, Any]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("manifest.json", "report.json", "report.md"):
            role = "model" if p.suffix in (".gguf", ".onnx", ".ort") else "tokenizer"
            files.append(
                {
                    "path": p.relative_to(root).as_posix(),
                    "role": role,
                    "bytes": p.stat().st_size,
                    "sha256": sha256_file(p),
                }
            )
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created_by": f"compressor {report.tool_version}",
        "source_model": artifact.source.name,
        "lineage": list(artifact.lineage),
        "scheme": report.scheme,
        "device": profile.name,
        "runtime": profile.runtime.engine.value,
        "context_length": profile.runtime.context_length,
        "chat_template": artifact.vocab.chat_template if artifact.vocab else None,
        "eos_token_id": artifact.vocab.eos_id if artifact.vocab else None,
        "files": files,
        "budgets": profile.budgets.model_dump(),
        "measured": report.measured,
        "checks": [c.model_dump(mode="json") for c in report.checks],
        "outcome": report.outcome.value,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
