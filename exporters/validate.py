"""Export to GGUF, then prove the file right in llama.cpp: same tokens, logits close to the torch model.

The torch model already holds the dequantized weights for schemes we pack ourselves, so a quantized
file is compared with the fake-quantized torch model; what remains is llama.cpp's 8-bit activation
quantization inside quantized dot products (mean KL ~0.005/token on SmolLM2). Schemes delegated to
llama.cpp's quantizer are compared with the float model with a looser sanity bound.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import torch

from compressor.artifact import ModelArtifact
from compressor.errors import ValidationError
from compressor.report import StageReport
from exporters import llama_runtime
from exporters.gguf import export_gguf

# (max mean KL per token, min top-1 agreement) by what the file holds relative to the torch model
TOLERANCES = {"exact": (1e-3, 0.97), "half": (5e-3, 0.95), "quantized": (0.05, 0.85), "delegated": (1.0, 0.5)}


def validation_text() -> str:
    return resources.files("compressor").joinpath("data/validation.txt").read_text(encoding="utf-8")


def _tolerance_key(artifact: ModelArtifact) -> str:
    scheme = artifact.scheme
    if scheme is None or scheme.weight_type == "F32":
        return "exact"
    if scheme.delegated_to_llama_cpp:
        return "delegated"
    return "half" if scheme.weight_type == "F16" else "quantized"


def export_and_validate(
    artifact: ModelArtifact, out_dir: Path, n_tokens: int = 128
) -> tuple[StageReport, Path]:
    start = time.perf_counter()
    path = export_gguf(artifact, out_dir)
    text = validation_text()
    ids = artifact.tokenizer(text, add_special_tokens=False).input_ids
    theirs = llama_runtime.tokenize(path.resolve(), text)
    if ids != theirs:
        first = next(
            (i for i, (a, b) in enumerate(zip(ids, theirs, strict=False)) if a != b),
            min(len(ids), len(theirs)),
        )
        raise ValidationError(
            f"{path.name}: llama.cpp tokenizes the validation text differently from the HF tokenizer",
            [f"first difference at token {first}: ours {ids[first:][:4]}, llama.cpp {theirs[first:][:4]}"],
        )
    ids = ids[:n_tokens]
    with torch.no_grad():
        ref = artifact.model(torch.tensor([ids])).logits[0].float().numpy()
    key = _tolerance_key(artifact)
    max_kl, min_top1 = TOLERANCES[key]
    stats = llama_runtime.validate(path.resolve(), ref, ids, max_kl=max_kl, min_top1=min_top1)
    summary = {
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "validated_tokens": len(ids),
        "compared_with": "float torch model" if key == "delegated" else "torch model with the same weights",
        "tokenizer_matches_llama_cpp": True,
        **{k: round(v, 6) for k, v in stats.items()},
        "max_kl_allowed": max_kl,
        "min_top1_required": min_top1,
    }
    return StageReport(stage="export", seconds=time.perf_counter() - start, summary=summary), path
