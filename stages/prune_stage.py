"""The pruning stage adapter: prune, refit the output projections, measure what it cost on held-out text.

``heldout_kl_before_refit`` is the KL to the unpruned model straight after slicing;
``heldout_kl_to_unpruned`` (and the perplexity/agreement figures) are the final ones, after the refit
when ``refit`` is on.
"""

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
from stages.prune_refit import refit_outputs


@dataclass(frozen=True)
class PruneStage:
    config: PruneConfig
    calibration: list[torch.Tensor]  # (1, T) token batches
    heldout: list[int]
    row_multiple: int = 32
    why: dict[str, Any] = field(default_factory=dict)  # how --prune auto chose the config
    name: str = "prune"
    refit: bool = True  # least-squares refit of o_proj/down_proj to the teacher (stages/prune_refit.py)

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult:
        start = time.perf_counter()
        teacher = artifact.model
        before = compare(teacher, None, self.heldout)
        student = copy.deepcopy(teacher)
        student, stats = prune_model(student, self.config, self.calibration, self.row_multiple)
        after = compare(student, teacher, self.heldout)
        refit: dict[str, Any] = {"refit": None}  # None: not asked for
        if self.refit:
            refit = {
                "heldout_kl_before_refit": round(after["mean_kl"], 5),
                "heldout_perplexity_before_refit": round(after["perplexity"], 3),
            }
            fit = refit_outputs(student, teacher, self.calibration, teacher_layers=stats.kept_layers)
            after = compare(student, teacher, self.heldout)
            refit |= {"refit_seconds": fit["seconds"], "refit": fit}
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
            **refit,
            **({"auto": self.why} if self.why else {}),
        }
        report = StageReport(stage=self.name, seconds=time.perf_counter() - start, summary=summary)
        new = artifact.evolve(self.name, model=student, facts=facts)
        return StageResult(artifact=new, report=report)
