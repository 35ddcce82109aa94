"""The pruning stage adapter: prune, then measure what it cost on held-out text."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from compressor.artifact import ModelArtifact, facts_from_config
from compressor.metrics import compare
from compressor.report import StageReport
from compressor.stage import StageContext, StageResult
from stages.prune import prune_model
from stages.prune_config import PruneConfig


@dataclass(frozen=True)
class PruneStage:
    config: PruneConfig
    calibration: list[torch.Tensor]  # (1, T) token batches
    heldout: list[int]
    row_multiple: int = 32
    why: dict[str, Any] = field(default_factory=dict)  # how --prune auto chose the config
    name: str = "prune"

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        teacher = artifact.model
        before = compare(teacher, None, self.heldout)
        student = copy.deepcopy(teacher)
        student, stats = prune_model(student, self.config, self.calibration, self.row_multiple)
        after = compare(student, teacher, self.heldout)
        n_params = sum(p.numel() for p in student.parameters())
        facts = facts_from_config(student.config, n_params, artifact.facts.architecture)
        summary = {
            **stats.model_dump(),
            "calibration_tokens": sum(b.numel() for b in self.calibration),
            "heldout_tokens": len(self.heldout),
            "heldout_perplexity_before": round(before["perplexity"], 3),
            "heldout_perplexity_after": round(after["perplexity"], 3),
            "heldout_kl_to_unpruned": round(after["mean_kl"], 5),
            "heldout_top1_agreement": round(after["top1_agreement"], 4),
            **({"auto": self.why} if self.why else {}),
        }
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        new = artifact.evolve(self.name, model=student, facts=facts)
        return StageResult(artifact=new, report=report)
