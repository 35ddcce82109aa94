"""The distillation stage adapter: heal a pruned student and/or train it through fake quantization."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressor.artifact import LearnedQuant, ModelArtifact, weight_inventory
from compressor.ggml_types import Blocks
from compressor.quant import QuantScheme, TensorRole
from compressor.report import StageReport
from compressor.stage import StageContext, StageResult
from stages.distill import DistillConfig, distill
from stages.fake_quant import apply_fake_quant, remove_fake_quant
from stages.learned_quant import Codes, apply_learned, export_learned


@dataclass(frozen=True)
class DistillStage:
    config: DistillConfig
    teacher: Any
    train_ids: list[int]
    heldout_ids: list[int]
    qat_scheme: QuantScheme | None = None  # train through this scheme's exact quantizer
    progress: Callable[[dict[str, float]], None] | None = None
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    resume: dict[str, Any] | None = None
    # QAT with learned scales: the PTQ blocks to start from (every quantized weight) and whether the
    # codes follow the weights or stay frozen. Without them, QAT trains through the reference rule.
    qat_blocks: dict[str, Blocks] | None = None
    qat_codes: Codes = "follow"
    name: str = "distill"

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        student = artifact.model
        if self.qat_blocks is not None and self.qat_scheme is not None:
            frozen = set()
            if self.config.train == "no_embedding":  # frozen: keeps its PTQ blocks as they are
                frozen = {w.name for w in weight_inventory(student) if w.role in _HEADS}
            apply_learned(student, self.qat_blocks, self.qat_codes, frozen)
        elif self.qat_scheme is not None:
            apply_fake_quant(student, self.qat_scheme)
        student, stats = distill(
            student,
            self.teacher,
            self.train_ids,
            self.heldout_ids,
            self.config,
            progress=self.progress,
            checkpoint=self.checkpoint,
            resume=self.resume,
        )
        extra: dict[str, Any] = {}
        if self.qat_blocks is not None and self.qat_scheme is not None:
            trained = export_learned(student)  # the trained scales and codes, as they are
            blocks = {**self.qat_blocks, **trained}
            extra = {
                "qat_quantizer": f"learned scales (codes {self.qat_codes})",
                **_scale_moves(self.qat_blocks, trained),
            }
            artifact = artifact.evolve("learned", learned=LearnedQuant(self.qat_scheme, blocks))
        elif self.qat_scheme is not None:
            remove_fake_quant(student)  # the float weights; quantize then packs exactly what trained
            extra = {"qat_quantizer": "reference rule (scales from the weights)"}
        for p in student.parameters():
            p.requires_grad_(False)
        summary = {
            "qat_scheme": self.qat_scheme.name if self.qat_scheme else None,
            "loss": self.config.loss,
            "tokens": stats.tokens,
            "steps": stats.steps,
            "tokens_per_s": round(stats.tokens_per_s, 1),
            "train_seconds": round(stats.train_seconds, 1),
            "teacher_pass_seconds": round(stats.teacher_seconds, 1),
            "device": stats.device,
            "precision": stats.precision,
            "processes": stats.world_size,
            "heldout_kl_before": round(stats.before["mean_kl"], 5),
            "heldout_kl_after": round(stats.after["mean_kl"], 5),
            "heldout_top1_before": round(stats.before["top1_agreement"], 4),
            "heldout_top1_after": round(stats.after["top1_agreement"], 4),
            "heldout_tokens": len(self.heldout_ids),
            "evaluated": "the fake-quantized student" if self.qat_scheme else "the float student",
            "history": [r for r in stats.history if "heldout_kl" in r],
            "resumed_from_step": self.resume["step"] if self.resume else None,
            "restored_best_step": stats.best_step,
            **extra,
        }
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        return StageResult(artifact=artifact.evolve(self.name, model=student), report=report)


_HEADS = (TensorRole.EMBEDDING, TensorRole.OUTPUT)


def _scale_moves(start: dict[str, Blocks], trained: dict[str, Blocks]) -> dict[str, Any]:
    """How far training moved the stored scales and codes from the PTQ start."""
    moved = total = codes_changed = codes = 0
    log_ratio = 0.0
    for name, b in trained.items():
        d0, d1 = start[name].d.astype(np.float64), b.d.astype(np.float64)
        ok = (d0 != 0) & (d1 != 0)
        moved += int((d0 != d1).sum())
        total += d0.size
        log_ratio += float(np.abs(np.log(np.abs(d1[ok] / d0[ok]))).sum())
        codes_changed += int((start[name].q != b.q).sum())
        codes += b.q.size
    return {
        "learned_tensors": len(trained),
        "scales_changed": round(moved / max(1, total), 4),
        "scale_mean_abs_log_change": round(log_ratio / max(1, total), 5),
        "codes_changed": round(codes_changed / max(1, codes), 4),
    }
