"""The compress pipeline: load -> (per target scheme) quantize -> export -> measure -> package,
with a budget check after every stage. Composition layer: it may import stages/ and exporters/.

Failure policy: problems with the input (profile, output location, model files) raise before anything
is written. Once the model is loaded, every stop (a budget that cannot be met, a validation failure)
still writes ``report.json`` and ``report.md`` into the output directory, and no model file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compressor import __version__, distributed
from compressor.artifact import ModelArtifact, weight_inventory
from compressor.budget import (
    BudgetCheck,
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
)
from compressor.config import CompressRequest, Settings
from compressor.device_profile import DeviceProfile
from compressor.errors import BudgetExceeded, CompressorError, ConfigError, ExitCode
from compressor.inputs import (
    checkpoint_path,
    fingerprint,
    input_paths,
    load_resume,
    ptq_method,
    resolve_inputs,
)
from compressor.outdir import OutputDir
from compressor.package import write_bundle
from compressor.quant import ExportFormat, PtqMethod, QuantScheme
from compressor.report import Outcome, RunReport, SearchReport, StageReport, StageStatus, render_markdown
from compressor.stage import StageContext
from stages import prune_auto
from stages.prune_config import PruneConfig, resolve

log = logging.getLogger(__name__)

Update = Callable[[float, float, str], None]  # (completed, total, status text)
Progress = Callable[[str, str], contextlib.AbstractContextManager[Update]]


def _ignore(completed: float, total: float, text: str) -> None:
    return None


@contextlib.contextmanager
def _quiet(stage: str, description: str) -> Iterator[Update]:
    yield _ignore


def project_after(artifact: ModelArtifact, ctx: StageContext, report: StageReport) -> list[BudgetCheck]:
    """Project the deployed footprint of ``artifact`` and attach it and its checks to ``report``."""
    inventory = weight_inventory(artifact.model)
    scheme = artifact.scheme if artifact.scheme is not None else ctx.scheme  # resolved mixed plans too
    overhead = None
    if scheme.is_mixed and scheme.format is ExportFormat.GGUF:  # fitted to the byte: real header + vocab
        from exporters.gguf import overhead_bytes

        overhead = overhead_bytes(artifact)
    elif scheme.is_mixed:  # onnx:mixed: the graph around the weights (the tokenizer is other files)
        overhead = onnx_graph_bytes(artifact)
    plans = plan_tensors(inventory, scheme)
    cost = cost_from_plan(artifact.facts, inventory, plans, scheme.name, overhead)
    report.footprint = project_footprint(cost, ctx.profile)
    report.checks = check_budgets(report.footprint, ctx.profile.budgets)
    return report.checks


class Run:
    """One compress run: holds the reports so far, so a stop at any point can be written out."""

    def __init__(self, req: CompressRequest, profile: DeviceProfile, schemes: list[QuantScheme]) -> None:
        self.req, self.profile, self.schemes = req, profile, schemes
        self.stages: list[StageReport] = []
        self.measured: dict[str, dict[str, Any]] = {}
        self.final_checks: list[BudgetCheck] = []
        self.files: dict[str, str] = {}
        self.learned_summary: dict[str, Any] = {}  # the mixed plan QAT trained through, for its report
        self.search: SearchReport | None = None  # what the search tried (compress with nothing pinned)
        self.resolved_schemes: dict[str, QuantScheme] = {}  # scheme name -> as written (mixed: plan)
        self.resolved_prune: str | None = None  # the shape pruned to (auto or searched)
        self.trained_tokens: int | None = None  # what distillation trained on (a recipe pins it)
        self.warnings: list[str] = []
        self.start_blocks: dict[str, Any] = {}  # the search's weighted blocks: GPTQ's start (a cache)
        self.prune: tuple[PruneConfig, dict[str, Any]] | None = None  # resolved once, after load

    def settings(self) -> Settings:
        """The request as resolved by this run: what ``recipe.toml`` pins, so a replay redoes it."""
        req, schemes = self.req, [self.resolved_schemes.get(s.name, s) for s in self.schemes]
        budgets = {k: getattr(self.profile.budgets, k) for k in req.budget_overrides()}
        mixed = [s for s in schemes if s.is_mixed]
        update: dict[str, Any] = {
            **budgets,
            "model": _absolute(req.model),
            "device": _absolute(req.device),
            "calib_data": [Path(p).resolve() for p in req.calib_data],
            "quant": ",".join(s.name for s in schemes),
            "formats": None,
            "plan": {s.format.value: dict(s.overrides) for s in schemes if s.overrides},
            "mixed_types": ",".join(mixed[0].mixed_types) if mixed else None,
            "ptq": ptq_method(req, schemes).value,
            "prune": self.resolved_prune or (None if req.prune == "auto" else req.prune),
            "calib_tokens": req.calibration_tokens,
            "time_budget": None,
        }
        if self.trained_tokens is not None:
            update.update(distill_tokens=self.trained_tokens, distill_minutes=None, distill=req.distill)
        return req.settings().model_copy(update=update)

    def report(self, outcome: Outcome, code: ExitCode, message: str | None = None) -> RunReport:
        return RunReport(
            tool_version=__version__,
            command="compress",
            model=self.req.model,
            device=self.profile.name,
            scheme=",".join(s.name for s in self.schemes),
            outcome=outcome,
            exit_code=int(code),
            message=message,
            stages=self.stages,
            measured=self.measured,
            checks=self.final_checks,
            artifacts=self.files if outcome is not Outcome.ERROR else {},
            search=self.search,
            warnings=self.warnings,
        )

    def gate(self, report: StageReport) -> None:
        """Stop the run if a budget check after this stage failed (unless --keep-going)."""
        failed = describe_failures(report.checks)
        if failed and not self.req.keep_going:
            report.status = StageStatus.STOPPED
            self.final_checks = report.checks
            raise BudgetExceeded(
                f"stopped after '{report.stage}': the projected footprint cannot fit '{self.profile.name}'",
                failed,
            )


def compress(req: CompressRequest, progress: Progress = _quiet) -> RunReport:
    """Run the whole pipeline for ``req``; returns the RunReport also written to the output dir."""
    from compressor.loading import load_model

    profile, schemes = resolve_inputs(req)
    warnings = _verify_recipe(req)  # a replay of other weights or data fails before any work
    resume = load_resume(req)  # a missing, damaged or foreign checkpoint fails before any write
    if not distributed.is_main():  # another torchrun process: it trains alongside rank 0, writes nothing
        return _train_only(req, profile, schemes)
    out = OutputDir(req.out, force=req.force, inputs=input_paths(req))
    staging = out.prepare()
    run = Run(req, profile, schemes)
    run.warnings += warnings
    missed: BudgetExceeded | None = None
    try:
        with progress("load", f"loading {req.model}"):
            start = time.perf_counter()
            artifact = load_model(req.model, trust_remote_code=req.trust_remote_code)
            load = StageReport(
                stage="load", seconds=time.perf_counter() - start, summary=artifact.facts.model_dump()
            )
        run.stages.append(load)
        if artifact.facts.is_encoder:
            load.summary["skipped"] = _check_encoder_request(req, artifact, profile, schemes)
        elif not req.searches:  # the pruning to do, resolved once: a bad request fails before any work
            try:
                run.prune = _plan_pruning(req, artifact, profile, schemes)
            except BudgetExceeded as exc:  # no shape fits: a budget miss, reported like any other
                missed = exc
        if not artifact.facts.is_encoder:
            profile.check_context(artifact.facts.max_context, req.model)
            _check_formats(artifact, schemes, req.model)
        if (
            req.calib_data
            and (req.prune is not None or req.distill or req.qat)
            and not artifact.facts.is_encoder
        ):
            from compressor.calibration import check_token_counts
            from stages.distill import DistillConfig

            cfg = DistillConfig()
            need = cfg.batch_size * cfg.seq_len if (req.distill or req.qat) else 1
            check_token_counts(artifact, list(req.calib_data), need)
    except BaseException:
        out.abandon()  # bad input: nothing written
        raise
    try:
        if missed is not None:
            raise missed
        if artifact.facts.is_encoder:
            from compressor.pipeline_encoder import run_encoder

            artifact = run_encoder(run, artifact, staging, progress, load)
        elif req.searches:
            from compressor.pipeline_search import run_search

            artifact = run_search(run, artifact, staging, out.target, progress)
        else:
            artifact = _run_decoder(run, artifact, staging, out.target, progress, resume, load)
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
    _write_recipe(run, staging)
    _write_plot(report, profile, staging)
    write_bundle(staging, artifact, report, profile)
    for name, text in _report_files(report).items():
        (staging / name).write_text(text, encoding="utf-8")
    if req.bundle:
        from compressor.bundle import build_bundle

        try:
            with progress("bundle", "packaging the bundle: reference logits, quality, zip"):
                build_bundle(out.target, work=staging)
        except CompressorError as exc:
            report = run.report(Outcome.ERROR, exc.exit_code, f"the bundle could not be made: {exc.render()}")
            out.fail(_report_files(report))
            return report
        except BaseException:
            out.abandon()
            raise
    out.commit()
    return report


def _absolute(name: str) -> str:
    """A path as an absolute one (a recipe replays from any directory); a built-in name as is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def _verify_recipe(req: CompressRequest) -> list[str]:
    if req.recipe is None:
        return []
    from compressor import recipe

    return recipe.verify(recipe.load(req.recipe), req.recipe)


def _write_recipe(run: Run, staging: Path) -> None:
    """``recipe.toml``: what ran, resolved, so ``--recipe`` replays it to the same files."""
    from compressor import recipe

    if run.search is not None:
        how = f"search: {', '.join(run.search.chosen)}"
    else:
        how = f"replay of {run.req.recipe}" if run.req.recipe else "flags"
    (staging / "recipe.toml").write_text(recipe.dumps(recipe.build(run.settings(), how)), encoding="utf-8")


def _write_plot(report: RunReport, profile: DeviceProfile, staging: Path) -> None:
    if report.search is None:
        return
    from compressor.plot import candidates_png

    limits = profile.budgets.model_dump()
    title = f"{report.model} on {profile.name}: candidates ({', '.join(report.search.chosen)} chosen)"
    if candidates_png(report.search.candidates, limits, staging / "candidates.png", title):
        report.search.plot = "candidates.png"


def _run_decoder(
    run: Run,
    artifact: ModelArtifact,
    staging: Path,
    target: Path,
    progress: Progress,
    resume: dict[str, Any] | None,
    load: StageReport,
) -> ModelArtifact:
    """prune -> distill -> per scheme: quantize, export, measure (decoders)."""
    req, profile, schemes, prune = run.req, run.profile, run.schemes, run.prune
    for scheme in schemes:  # fail in seconds if any target cannot fit (pruning may still fix it)
        project_after(artifact, StageContext(profile=profile, scheme=scheme), load)
        if prune is None:
            run.gate(load)
    teacher = artifact.model
    if prune is not None:
        artifact = _run_prune(run, artifact, prune, progress)
    if req.distill or req.qat:
        artifact = _run_distill(run, artifact, teacher, target, progress, resume)
    for scheme in schemes:
        _run_target(run, artifact, StageContext(profile=profile, scheme=scheme), staging, progress)
    return artifact


def _check_encoder_request(
    req: CompressRequest, artifact: ModelArtifact, profile: DeviceProfile, schemes: list[QuantScheme]
) -> list[str]:
    """What an encoder run would fail on later, refused before any work."""
    if req.bundle:
        raise ConfigError(
            f"--bundle makes app bundles for text generators; {req.model} is an encoder: ship the output "
            "directory (its manifest.json lists and hashes every file; 'compressor check' verifies it)"
        )
    from compressor.pipeline_encoder import check_encoder_formats
    from compressor.sentences import sentence_split
    from stages.encoder_distill import parse_losses
    from stages.encoder_prune import resolve_encoder

    target = None
    if req.prune is not None and req.prune.strip() != "auto":
        target = resolve_encoder(
            PruneConfig.parse(req.prune, req.prune_importance, require=True),
            artifact.facts,
            _row_multiple(schemes),
        )
    prunes_heads = target is not None and target.heads < artifact.facts.n_heads
    kept, skipped = check_encoder_formats(artifact, schemes, req.model, prunes_heads)
    for why in skipped:
        log.warning("%s", why)
    schemes[:] = kept  # the Run holds this list: skipped formats are not written
    tokens = profile.budgets.encode_tokens
    if tokens > artifact.facts.max_context:
        raise ConfigError(
            f"device profile {profile.name}: budgets.encode_tokens {tokens} exceeds what {req.model} "
            f"takes ({artifact.facts.max_context} positions); lower it"
        )
    if req.distill or req.qat:
        parse_losses(req.knowledge, artifact.model.task)
    elif req.knowledge:
        raise ConfigError("--knowledge chooses distillation losses; add --distill (or --qat)")
    sentence_split(list(req.calib_data))  # unreadable or too little text fails now
    return skipped


def _check_formats(artifact: ModelArtifact, schemes: list[QuantScheme], model: str) -> None:
    """A family whose export to a requested format is not possible says so before any work."""
    from exporters.validate import format_problems

    problems = [f"{s.name}: {p}" for s in schemes for p in format_problems(artifact.model, s.format)]
    problems += [
        f"{s.name}: per-channel int8 is written for encoders only; decoders use onnx:int8 (blockwise)"
        for s in schemes
        if s.per_channel
    ]
    if problems:
        raise ConfigError(
            f"{model} ({artifact.facts.family}) cannot be exported as requested: " + "; ".join(problems)
        )


def _train_only(req: CompressRequest, profile: DeviceProfile, schemes: list[QuantScheme]) -> RunReport:
    """A torchrun process of rank > 0: load, prune and distill in step with rank 0; no files."""
    from compressor.loading import load_model

    run = Run(req, profile, schemes)
    artifact = load_model(req.model, trust_remote_code=req.trust_remote_code)
    teacher = artifact.model
    prune = _plan_pruning(req, artifact, profile, schemes)
    if prune is not None:
        artifact = _run_prune(run, artifact, prune, _quiet)
    if req.distill or req.qat:
        _run_distill(run, artifact, teacher, Path(req.out).resolve(), _quiet, load_resume(req))
    return run.report(Outcome.PASS, ExitCode.OK, f"rank {distributed.rank()}: trained; rank 0 writes")


def _finish(report: RunReport, run: Run) -> None:
    from compressor.check import verdict

    outcome, code, message = verdict(run.final_checks)
    if code is not ExitCode.OK:
        report.outcome, report.exit_code = outcome, int(code)
        report.message = "the measured artifact: " + (message or "")


def _run_target(
    run: Run, artifact: ModelArtifact, ctx: StageContext, staging: Path, progress: Progress
) -> None:
    """quantize -> project -> export + validate -> measure, for one scheme, on a copy of the model."""
    from compressor.verify import measure_artifact
    from exporters.validate import export_and_validate

    name = ctx.scheme.name
    with progress(f"quantize[{name}]", f"quantizing to {name}"):
        work = (
            artifact.evolve("copy", model=copy.deepcopy(artifact.model)) if len(run.schemes) > 1 else artifact
        )
        learned = artifact.learned
        if learned is not None and ctx.scheme == run.schemes[0]:  # QAT's blocks, written as trained
            from stages.quantize import QuantizeStage

            stage = QuantizeStage(
                learned=learned.blocks, learned_scheme=learned.scheme, learned_summary=run.learned_summary
            )
        else:
            stage = _quantize_stage(run, work, ctx)
        result = stage.run(work, ctx)
    result.report.stage = f"quantize[{name}]"
    run.stages.append(result.report)
    if result.artifact.scheme is not None:
        run.resolved_schemes[name] = result.artifact.scheme
    project_after(result.artifact, ctx, result.report)
    run.gate(result.report)

    with progress(f"export[{name}]", f"writing {ctx.scheme.format.value} and validating it in its runtime"):
        try:
            export_report, paths = export_and_validate(
                result.artifact, staging, run.req.validate_tokens, mobile=run.req.mobile
            )
        except CompressorError as exc:
            run.stages.append(
                StageReport(stage=f"export[{name}]", status=StageStatus.FAILED, message=exc.render())
            )
            raise
    run.stages.append(export_report)

    for path in paths:
        label = path.relative_to(staging).as_posix()
        run.files[label] = name
        if path.suffix == ".ort":
            continue  # the same graph as model.onnx, validated at export; measured through model.onnx
        with progress(
            f"measure[{label}]", f"measuring {label} on this host, projecting to {ctx.profile.name}"
        ):
            measure_report, checks = measure_artifact(path, ctx.profile, label)
        run.stages.append(measure_report)
        run.measured[label] = measure_report.summary
        run.final_checks += checks


def _quantize_stage(run: Run, artifact: ModelArtifact, ctx: StageContext) -> Any:
    """The quantize stage with what its method needs: calibration batches (the importance vectors
    when the user gave text; always for a mixed plan) and the byte budget of a mixed plan."""
    from compressor.calibration import calibration_ids
    from stages.quantize import QuantizeStage

    req, scheme, method = run.req, ctx.scheme, ptq_method(run.req, run.schemes)
    searchable = not scheme.delegated_to_llama_cpp and scheme.weight_type != "fp32"
    calib = None
    wants_data = method is PtqMethod.GPTQ or (method is PtqMethod.WEIGHTED and req.calib_data)
    if scheme.is_mixed or (wants_data and searchable):
        calib, _, _ = calibration_ids(
            artifact, list(req.calib_data), req.calibration_tokens, teacher=req.calib_text == "teacher"
        )
    budget = None
    if scheme.is_mixed and not scheme.overrides:  # a pinned plan (recipe, search) is not re-chosen
        from exporters.gguf import overhead_bytes

        limit = ctx.profile.budgets.max_size_mib
        inventory = weight_inventory(artifact.model)
        if req.bits_per_weight is not None:  # the matrices at B bits on average
            budget = req.bits_per_weight / 8 * sum(w.numel for w in inventory if len(w.shape) == 2)
        elif limit is None:  # resolve_inputs already refuses this; kept for library callers
            raise ConfigError("gguf:mixed needs a size budget (--max-size-mib or --bits-per-weight)")
        else:
            norms = sum(4 * w.numel for w in inventory if len(w.shape) == 1)
            onnx = scheme.format is ExportFormat.ONNX
            budget = (
                limit * 2**20 - (onnx_graph_bytes(artifact) if onnx else overhead_bytes(artifact)) - norms
            )
    return QuantizeStage(method=method, calibration=calib, budget_bytes=budget, start=run.start_blocks)


def onnx_graph_bytes(artifact: ModelArtifact) -> int:
    """onnx:mixed: room for the graph itself (nodes, names, shapes, scales' names) in model.onnx.
    SmolLM2 (30 layers) measured 1.3 MiB beyond its weights; 64 KiB a layer + 256 KiB covers it."""
    return (artifact.facts.n_layers * 64 + 256) * 1024


def _row_multiple(schemes: list[QuantScheme]) -> int:
    return math.lcm(*(s.row_multiple for s in schemes))


def _plan_pruning(
    req: CompressRequest, artifact: ModelArtifact, profile: DeviceProfile, schemes: list[QuantScheme]
) -> tuple[PruneConfig, dict[str, Any]] | None:
    """The pruning to do (resolved against the model so a bad request fails now), or None."""
    if req.prune is None:
        return None
    row = _row_multiple(schemes)
    if req.prune.strip() == "auto":
        config, why = prune_auto.choose(
            artifact.facts, schemes, profile, row, inventory=weight_inventory(artifact.model)
        )
        if why["chosen"] == "none":
            return None
        config = config.model_copy(
            update={"importance": PruneConfig.parse("", req.prune_importance).importance}
        )
    else:
        config, why = PruneConfig.parse(req.prune, req.prune_importance), {}
    resolve(config, artifact.facts, row)
    return config, why


def _run_prune(
    run: Run, artifact: ModelArtifact, prune: tuple[PruneConfig, dict[str, Any]], progress: Progress
) -> ModelArtifact:
    from compressor.calibration import calibration_ids
    from stages.prune_stage import PruneStage

    config, why = prune
    if not artifact.facts.is_encoder:
        r = resolve(config, artifact.facts, _row_multiple(run.schemes))
        run.resolved_prune = f"heads={r.heads},kv_heads={r.kv_heads},mlp={r.mlp},layers={r.layers}"
    with progress("prune", "measuring importance on calibration text and pruning"):
        batches, heldout, source = calibration_ids(
            artifact,
            list(run.req.calib_data),
            run.req.calibration_tokens,
            teacher=run.req.calib_text == "teacher",
        )
        stage = PruneStage(config, batches, heldout, _row_multiple(run.schemes), why)
        result = stage.run(artifact, StageContext(profile=run.profile, scheme=run.schemes[0]))
    result.report.summary["calibration_source"] = source
    run.stages.append(result.report)
    for scheme in run.schemes:
        project_after(result.artifact, StageContext(profile=run.profile, scheme=scheme), result.report)
        run.gate(result.report)
    return result.artifact


def _run_distill(
    run: Run,
    artifact: ModelArtifact,
    teacher: Any,
    target: Path,
    progress: Progress,
    resume: dict[str, Any] | None,
) -> ModelArtifact:
    from compressor.calibration import token_stream
    from compressor.checkpoint import save_checkpoint
    from stages.distill import DistillConfig
    from stages.distill_stage import DistillStage

    req, ckpt = run.req, checkpoint_path(target)
    settings = fingerprint(req)

    def save(state: dict[str, Any]) -> None:
        save_checkpoint(ckpt, state, settings)  # atomic: a kill never leaves half a checkpoint

    last_kl: list[float] = []

    def report_row(row: dict[str, float]) -> None:
        if "heldout_kl" in row:
            last_kl[:] = [row["heldout_kl"]]
            log.info(
                "distill step %d: loss %.4f, held-out KL %.4f, %.0f tokens/s",
                row["step"],
                row["loss"],
                row["heldout_kl"],
                row["tokens_per_s"],
            )
        kl = f", held-out KL {last_kl[0]:.4f}" if last_kl else ""
        eta = time.strftime("%M:%S", time.gmtime(row["eta_s"]))
        bar(
            row["step"],
            row["total_steps"],
            f"step {row['step']}/{row['total_steps']}: loss {row['loss']:.4f}{kl}, "
            f"{row['tokens_per_s']:.0f} tokens/s, ETA {eta}",
        )

    config = DistillConfig.model_validate(
        {
            "loss": req.distill_loss,
            "max_tokens": req.train_tokens,
            "max_minutes": req.distill_minutes,
            "lr": req.distill_lr or 5e-5,
            "seed": req.seed,
            "scale_lr": req.qat_scale_lr,
        }
    )
    student = (
        artifact if artifact.model is not teacher else artifact.evolve("copy", model=copy.deepcopy(teacher))
    )
    scheme, blocks = run.schemes[0], None
    if req.qat and scheme.learns_scales:
        scheme, blocks = _qat_start(run, student, progress)
    with progress("distill", "distilling from the float teacher") as bar:
        # Training cycles over the data. Sampling text from the teacher runs at ~100 tokens/s here, so
        # teacher-written data is capped at 8192 tokens; the user's files give up to the token limit
        # (up to MINUTES_DATA_TOKENS of them when the minutes alone bound the run).
        limit = req.train_tokens or MINUTES_DATA_TOKENS
        n_data = limit if (req.calib_data or req.calib_text == "sample") else min(limit, 8192)
        train, heldout, source = token_stream(
            artifact, list(req.calib_data), n_data, teacher=req.calib_text == "teacher"
        )
        stage = DistillStage(
            config,
            teacher,
            train,
            heldout,
            scheme if req.qat else None,
            report_row,
            save,
            resume,
            qat_blocks=blocks,
            qat_codes=req.qat_codes,
        )
        result = stage.run(student, StageContext(profile=run.profile, scheme=run.schemes[0]))
    result.report.summary["data_source"] = source
    run.stages.append(result.report)
    run.trained_tokens = result.report.summary.get("tokens")
    if distributed.is_main():
        ckpt.unlink(missing_ok=True)
    return result.artifact


MINUTES_DATA_TOKENS = 1 << 20  # training text read when only --distill-minutes bounds the run


def _qat_start(run: Run, student: ModelArtifact, progress: Progress) -> tuple[QuantScheme, dict[str, Any]]:
    """What QAT with learned scales starts from: the PTQ blocks of every weight (the weighted
    search's scales, GPTQ's codes, a mixed plan's types), exactly what PTQ alone would write."""
    ctx = StageContext(profile=run.profile, scheme=run.schemes[0])
    with progress("qat-init", "PTQ: calibration statistics, scales and codes QAT starts from"):
        start = time.perf_counter()
        scheme, blocks, extra = _quantize_stage(run, student, ctx).ptq_blocks(student.model, ctx.scheme)
    report = StageReport(stage="qat-init", seconds=time.perf_counter() - start, summary=extra)
    run.stages.append(report)
    run.learned_summary = {k: v for k, v in extra.items() if k.startswith("mixed_")}
    return scheme, blocks


def _report_files(report: RunReport) -> dict[str, str]:
    return {
        "report.json": json.dumps(report.model_dump(mode="json"), indent=2) + "\n",
        "report.md": render_markdown(report),
    }
