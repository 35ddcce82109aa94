"""The distillation stage adapter: heal a pruned student and/or train it through fake quantization."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compressor.artifact import ModelArtifact
from compressor.quant import QuantScheme
from compressor.report import StageReport
from compressor.stage import StageContext, StageResult
from stages.distill import DistillConfig, distill
from stages.fake_quant import apply_fake_quant, remove_fake_quant


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
    name: str = "distill"

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        student = artifact.model
        if self.qat_scheme is not None:
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
        if self.qat_scheme is not None:
            remove_fake_quant(student)  # the float weights; quantize then packs exactly what trained
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
        }
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        return StageResult(artifact=artifact.evolve(self.name, model=student), report=report)
