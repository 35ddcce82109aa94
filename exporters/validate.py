"""Export, then prove the file right in its real runtime: logits close to the torch model's.

The torch model already holds the dequantized weights for schemes we pack ourselves, so a quantized
file is compared with the fake-quantized torch model. What remains is the runtime's own activation
arithmetic: llama.cpp quantizes activations to 8 bits inside quantized dot products, and so does
onnxruntime's MatMulNBits at accuracy_level 4 (mean KL ~0.005-0.01/token on SmolLM2). Schemes
delegated to llama.cpp's quantizer are compared with the float model with a looser sanity bound.

``EXPORTERS`` is the registry of formats (a test keeps it in sync with ``ExportFormat``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.arch import spec_for
from compressor.artifact import ModelArtifact
from compressor.errors import ValidationError
from compressor.quant import ExportFormat
from compressor.report import StageReport

# (max mean KL per token, min top-1 agreement) by what the file holds relative to the torch model
# KL is the real criterion; top-1 is a coarse guard (a pruned, unhealed model has flat distributions
# whose top-1 flips under llama.cpp's 8-bit activations while its KL stays small: 0.82 seen).
TOLERANCES = {"exact": (1e-3, 0.97), "half": (5e-3, 0.95), "quantized": (0.05, 0.7), "delegated": (1.0, 0.5)}


def validation_text() -> str:
    return resources.files("compressor").joinpath("data/validation.txt").read_text(encoding="utf-8")


def _tolerance(artifact: ModelArtifact) -> tuple[str, float, float]:
    scheme = artifact.scheme
    if scheme is None or scheme.weight_type in ("F32", "fp32"):
        key = "exact"
    elif scheme.delegated_to_llama_cpp:
        key = "delegated"
    else:
        key = "half" if scheme.weight_type == "F16" else "quantized"
    return (key, *TOLERANCES[key])


def _export_gguf(artifact: ModelArtifact, out_dir: Path, ids: list[int], ref: np.ndarray, mobile: bool):
    from exporters import llama_runtime
    from exporters.gguf import export_gguf

    path = export_gguf(artifact, out_dir)
    text = validation_text()
    theirs = llama_runtime.tokenize(path.resolve(), text)
    ours = artifact.tokenizer(text, add_special_tokens=False).input_ids
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(ours))
        raise ValidationError(
            f"{path.name}: llama.cpp tokenizes the validation text differently from the HF tokenizer",
            [f"first difference at token {first}: ours {ours[first:][:4]}, llama.cpp {theirs[first:][:4]}"],
        )
    _, max_kl, min_top1 = _tolerance(artifact)
    stats = llama_runtime.validate(path.resolve(), ref, ids, max_kl=max_kl, min_top1=min_top1)
    return [path], {"tokenizer_matches_llama_cpp": True, **_rounded(stats)}


def _export_onnx(artifact: ModelArtifact, out_dir: Path, ids: list[int], ref: np.ndarray, mobile: bool):
    from exporters import ort_runtime
    from exporters.onnx import export_onnx

    path, counts = export_onnx(artifact, out_dir)
    _, max_kl, min_top1 = _tolerance(artifact)
    stats = ort_runtime.validate(path.resolve(), ref, ids, max_kl=max_kl, min_top1=min_top1)
    summary: dict[str, Any] = {**counts, **_rounded(stats)}
    if artifact.scheme is not None:
        summary["accuracy_level"] = artifact.scheme.accuracy_level
    paths = [path]
    if mobile:
        ort_file, ops_config = ort_runtime.to_ort_format(path.resolve())
        ort_stats = ort_runtime.validate(ort_file, ref, ids, max_kl=max_kl, min_top1=min_top1)
        summary["ort_format"] = {
            "file": ort_file.name,
            "required_operators": ops_config.name,
            **_rounded(ort_stats),
        }
        paths.append(ort_file)
    return paths, summary


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in stats.items()}


Exporter = Callable[[ModelArtifact, Path, list[int], np.ndarray, bool], tuple[list[Path], dict[str, Any]]]
EXPORTERS: dict[ExportFormat, Exporter] = {ExportFormat.GGUF: _export_gguf, ExportFormat.ONNX: _export_onnx}


def format_problems(model: Any, fmt: ExportFormat) -> list[str]:
    """Why a model of this family cannot be written to ``fmt`` so that its runtime matches torch
    ([] = it can); asked before any work starts."""
    spec = spec_for(model)
    if fmt is ExportFormat.GGUF:
        from exporters.gguf_meta import export_problems

        return export_problems(model.config)
    if not spec.onnx_exporter:
        return [f"ONNX export of the {spec.family} family is not available"]
    return []


def export_and_validate(
    artifact: ModelArtifact, out_dir: Path, n_tokens: int = 128, mobile: bool = False
) -> tuple[StageReport, list[Path]]:
    """Write the artifact in its scheme's format under ``out_dir`` and validate every file written."""
    start = time.perf_counter()
    fmt = artifact.scheme.format if artifact.scheme else ExportFormat.GGUF
    ids = artifact.tokenizer(validation_text(), add_special_tokens=False).input_ids[:n_tokens]
    with torch.no_grad():
        ref = artifact.model(torch.tensor([ids])).logits[0].float().numpy()
    paths, stats = EXPORTERS[fmt](artifact, out_dir, ids, ref, mobile)
    key, max_kl, min_top1 = _tolerance(artifact)
    summary = {
        "files": [p.relative_to(out_dir).as_posix() for p in paths],
        "bytes": sum(p.stat().st_size for p in paths[:1]),
        "validated_tokens": len(ids),
        "compared_with": "float torch model" if key == "delegated" else "torch model with the same weights",
        **stats,
        "max_kl_allowed": max_kl,
        "min_top1_required": min_top1,
    }
    name = artifact.scheme.name if artifact.scheme else "gguf:F32"
    report = StageReport(stage=f"export[{name}]", seconds=time.perf_counter() - start, summary=summary)
    return report, paths
