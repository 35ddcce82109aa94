"""The bundle a mobile app developer ships: model file, tokenizer, and manifest.json with hashes,
budgets and the measured figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compressor.artifact import ModelArtifact
from compressor.builtin_models import sha256_file
from compressor.device_profile import DeviceProfile
from compressor.generation import Generation, sampling_from_gguf
from compressor.outdir import OWNER_FILE
from compressor.report import RunReport

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE_SUFFIXES = (".gguf", ".onnx", ".ort", ".data")  # .onnx.data: external weights
REPORTS = ("report.json", "report.md", "candidates.png")  # beside the manifest, not listed in it


class ManifestFile(BaseModel):
    """One file of a bundle: a POSIX path relative to the bundle root, its size and its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    role: Literal["model", "tokenizer", "config", "card"]
    bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ManifestFiles(BaseModel):
    """The part of manifest.json that ``check`` trusts; the rest is information for people and apps."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    manifest_version: Literal[1]
    created_by: Annotated[str, Field(pattern=r"^compressor ")]
    files: Annotated[list[ManifestFile], Field(min_length=1)]


def _role(rel: Path) -> Literal["model", "tokenizer", "config"]:
    if rel.parts[0] == "tokenizer":
        return "tokenizer"
    if rel.suffix in MODEL_FILE_SUFFIXES:
        return "model"
    return "config"


def generation_of(artifact: ModelArtifact, context_length: int) -> Generation | None:
    """The generation defaults of a decoder (None for an encoder)."""
    if artifact.facts.is_encoder:
        return None
    v = artifact.vocab
    stop = list(artifact.stop_ids) or ([v.eos_id] if v and v.eos_id is not None else [])
    return Generation(
        bos_token_id=v.bos_id if v else None,
        eos_token_ids=stop,
        pad_token_id=v.pad_id if v else None,
        add_bos_token=bool(v and v.add_bos),
        context_length=min(context_length, artifact.facts.max_context),
        max_context=artifact.facts.max_context,
        chat_template=v.chat_template if v else None,
        sampling=artifact.sampling or sampling_from_gguf({}),
    )


def write_bundle(root: Path, artifact: ModelArtifact, report: RunReport, profile: DeviceProfile) -> Path:
    """Save the tokenizer next to the model files in ``root`` and write ``root/manifest.json``."""
    artifact.tokenizer.save_pretrained(root / "tokenizer")
    files: list[dict[str, Any]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, *REPORTS, OWNER_FILE):
            entry = ManifestFile(
                path=p.relative_to(root).as_posix(),
                role=_role(p.relative_to(root)),
                bytes=p.stat().st_size,
                sha256=sha256_file(p),
            )
            files.append(entry.model_dump())
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
        "generation": gen.model_dump()
        if (gen := generation_of(artifact, profile.runtime.context_length))
        else None,
        "files": files,
        "budgets": profile.budgets.model_dump(),
        "measured": report.measured,
        "checks": [c.model_dump(mode="json") for c in report.checks],
        "outcome": report.outcome.value,
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
