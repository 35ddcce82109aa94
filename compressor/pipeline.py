"""The compress pipeline: load -> quantize -> export -> measure -> package, with a budget check
after every stage. Composition layer: it may import stages/ and exporters/.

Failure policy: problems with the input (profile, output location, model files) raise before anything
is written. Once the model is loaded, every stop (a budget that cannot be met, a validation failure)
still writes ``report.json`` and ``report.md`` into the output directory, and no model file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compressor import __version__
from compressor.artifact import ModelArtifact, weight_inventory
from compressor.budget import (
    BudgetCheck,
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
)
from compressor.config import CompressRequest
from compressor.device_profile import DeviceProfile, load_profile
from compressor.errors import BudgetExceeded, CompressorError, ExitCode
from compressor.outdir import OutputDir
from compressor.package import write_bundle
from compressor.quant import QuantScheme
from compressor.report import Outcome, RunReport, StageReport, StageStatus, render_markdown
from compressor.stage import StageContext

log = logging.getLogger(__name__)

Progress = Callable[[str, str], contextlib.AbstractContextManager[Any]]


@contextlib.contextmanager
def _quiet(stage: str, description: str) -> Iterator[None]:
    yield


def project_after(artifact: ModelArtifact, ctx: StageContext, report: StageReport) -> list[BudgetCheck]:
    """Project the deployed footprint of ``artifact`` and attach it and its checks to ``report``."""
    inventory = weight_inventory(artifact.model)
    cost = cost_from_plan(artifact.facts, inventory, plan_tensors(inventory, ctx.scheme), ctx.scheme.name)
    report.footprint = project_footprint(cost, ctx.profile)
    report.checks = check_budgets(report.footprint, ctx.profile.budgets)
    return report.checks


class Run:
    """One compress run: holds the reports so far, so a stop at any point can be written out."""

    def __init__(self, req: CompressRequest, profile: DeviceProfile, scheme: QuantScheme) -> None:
        self.req, self.ctx = req, StageContext(profile=profile, scheme=scheme)
        self.stages: list[StageReport] = []
        self.measured: dict[str, Any] = {}
        self.final_checks: list[BudgetCheck] = []

    def report(self, outcome: Outcome, code: ExitCode, message: str | None = None) -> RunReport:
        return RunReport(
            tool_version=__version__,
            command="compress",
            model=self.req.model,
            device=self.ctx.profile.name,
            scheme=self.ctx.scheme.name,
            outcome=outcome,
            exit_code=int(code),
            message=message,
            stages=self.stages,
            measured=self.measured,
            checks=self.final_checks,
            artifacts={"gguf": "model.gguf"} if outcome is Outcome.PASS else {},
        )

    def gate(self, report: StageReport) -> None:
        """Stop the run if a budget check after this stage failed (unless --keep-going)."""
        failed = describe_failures(report.checks)
        if failed and not self.req.keep_going:
            report.status = StageStatus.STOPPED
            self.final_checks = report.checks
            raise BudgetExceeded(
                f"stopped after '{report.stage}': the projected footprint cannot fit "
                f"'{self.ctx.profile.name}'",
                failed,
            )


def resolve_inputs(req: CompressRequest) -> tuple[DeviceProfile, QuantScheme]:
    profile = load_profile(req.device).with_budgets(**req.budget_overrides())
    scheme = QuantScheme.parse(req.scheme, req.embedding_type)
    return profile, scheme


def compress(req: CompressRequest, progress: Progress = _quiet) -> RunReport:
    """Run the whole pipeline for ``req``; returns the RunReport also written to the output dir."""
    from compressor.loading import load_model

    profile, scheme = resolve_inputs(req)
    out = OutputDir(req.out, force=req.force)
    staging = out.prepare()
    run = Run(req, profile, scheme)
    try:
        with progress("load", f"loading {req.model}"):
            start = time.perf_counter()
            artifact = load_model(req.model, trust_remote_code=req.trust_remote_code)
            load = StageReport(
                stage="load", seconds=time.perf_counter() - start, summary=artifact.facts.model_dump()
            )
        run.stages.append(load)
    except BaseException:
        out.abandon()  # bad input: nothing written
        raise
    try:
        project_after(artifact, run.ctx, load)
        run.gate(load)
        final = _run_stages(run, artifact, staging, progress)
    except CompressorError as exc:
        outcome = Outcome.BUDGET_MISSED if isinstance(exc, BudgetExceeded) else Outcome.ERROR
        if run.stages and run.stages[-1].status is StageStatus.OK and outcome is Outcome.ERROR:
            run.stages[-1].status = StageStatus.FAILED
        report = run.report(outcome, exc.exit_code, exc.render())
        out.fail(_report_files(report))
        return report
    except BaseException:
        out.abandon()
        raise
    report = run.report(Outcome.PASS, ExitCode.OK)
    _finish(report, run)
    write_bundle(staging, final, report, profile)
    for name, text in _report_files(report).items():
        (staging / name).write_text(text, encoding="utf-8")
    out.commit()
    return report


def _finish(report: RunReport, run: Run) -> None:
    failed = describe_failures(run.final_checks)
    if failed:
        report.outcome, report.exit_code = Outcome.BUDGET_MISSED, int(ExitCode.BUDGET_MISSED)
        report.message = "the measured artifact misses budgets:\n" + "\n".join(f"  - {f}" for f in failed)


def _run_stages(run: Run, artifact: ModelArtifact, staging: Path, progress: Progress) -> ModelArtifact:
    from exporters.validate import export_and_validate
    from stages.quantize import QuantizeStage

    with progress("quantize", f"quantizing to {run.ctx.scheme.name}"):
        result = QuantizeStage().run(artifact, run.ctx)
    run.stages.append(result.report)
    project_after(result.artifact, run.ctx, result.report)
    run.gate(result.report)

    with progress("export", "writing model.gguf and validating it in llama.cpp"):
        export_report, path = export_and_validate(result.artifact, staging, run.req.validate_tokens)
    run.stages.append(export_report)

    with progress("measure", f"measuring in llama.cpp, projecting to {run.ctx.profile.name}"):
        from compressor.verify import measure_gguf

        measure_report, checks = measure_gguf(path, run.ctx.profile)
    run.stages.append(measure_report)
    run.measured, run.final_checks = measure_report.summary, checks
    return result.artifact


def _report_files(report: RunReport) -> dict[str, str]:
    return {
        "report.json": json.dumps(report.model_dump(mode="json"), indent=2) + "\n",
        "report.md": render_markdown(report),
    }
