"""The compress pipeline's stages for encoders (families whose objective is ``encoder``):
sentences -> project -> prune -> distill (QAT) -> per scheme: quantize -> export + validate ->
measure (one batch's latency in the runtime, quality against the teacher) -> the same gate, report
and bundle as decoders (``compressor.pipeline`` calls ``run_encoder`` inside its ``Run``).

What differs from decoders, and why it is here rather than spread through ``pipeline.py``: the data
is sentences, not a token stream (an encoder's teacher cannot write its own text); the footprint is
one batch's latency and peak RAM, not decode/TTFT; distillation matches embeddings, hidden states and
relations, not next-token distributions; quality is cosine and retrieval agreement measured in the
runtime the file ships in, over held-out sentences.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifact import ModelArtifact, weight_inventory
from compressor.budget import BudgetCheck, check_budgets, plan_tensors
from compressor.encoder import EncoderModel, Task, encode, encoder_facts, max_length, tokenize
from compressor.encoder_budget import encoder_cost, encoder_footprint
from compressor.encoder_metrics import embedding_agreement, label_agreement
from compressor.errors import CompressorError, ConfigError, ValidationError
from compressor.quant import ExportFormat, QuantScheme
from compressor.report import StageReport, StageStatus
from compressor.sentences import sentence_split
from compressor.stage import StageContext

QUALITY_SENTENCES = 3000  # held-out sentences for cosine and retrieval agreement
VALIDATE_SENTENCES = 64
SMOOTH_SENTENCES = 512  # calibration sentences for activation smoothing (per-channel int8)
ONNX_MIN_COSINE = 0.995  # mean, file vs torch with the same weights (int8 activations round a little)
TIMING_RUNS = 20


def check_encoder_formats(
    artifact: ModelArtifact, schemes: list[QuantScheme], model: str, prunes_heads: bool = False
) -> tuple[list[QuantScheme], list[str]]:
    """(the schemes to run, why each other one is skipped), before any work. A GGUF this encoder
    cannot be run as by llama.cpp is skipped with the reason (the other formats still run); a scheme
    no format can take, or nothing left to write, is refused."""
    problems, skipped, kept = [], [], []
    for s in schemes:
        if s.delegated_to_llama_cpp:
            problems.append(
                f"{s.name}: llama.cpp's K-quant mixtures are not written for encoders; use Q8_0 or Q4_0"
            )
        elif s.is_mixed:
            problems.append(f"{s.name}: mixed plans are not searched for encoders yet; name one type")
        elif s.format is ExportFormat.GGUF:
            from exporters.gguf_encoder import encoder_gguf_problems

            why = encoder_gguf_problems(artifact)
            if prunes_heads:
                why.append("llama.cpp's BERT cannot load a file whose attention heads were pruned")
            if why:
                skipped += [f"{s.name} skipped: {w}" for w in why]
            else:
                kept.append(s)
        else:
            kept.append(s)
    if problems or not kept:
        raise ConfigError(
            f"{model} ({artifact.facts.family} encoder) cannot be exported as requested", problems + skipped
        )
    return kept, skipped


def project(
    artifact: ModelArtifact, profile: Any, scheme: QuantScheme, report: StageReport
) -> list[BudgetCheck]:
    inventory = weight_inventory(artifact.model)
    cost = encoder_cost(artifact.facts, inventory, plan_tensors(inventory, scheme), scheme.name)
    report.footprint = encoder_footprint(cost, profile, artifact.facts.n_heads)
    report.checks = check_budgets(report.footprint, profile.budgets)
    return report.checks


def run_encoder(
    run: Any, artifact: ModelArtifact, staging: Path, progress: Any, load: StageReport
) -> ModelArtifact:
    """Every stage after loading, for an encoder; returns the artifact whose files were written."""
    req, profile = run.req, run.profile
    train, heldout, source = sentence_split(list(req.calib_data))
    load.summary["sentences"] = {"train": len(train), "heldout": len(heldout), "source": source}
    for scheme in run.schemes:
        project(artifact, profile, scheme, load)
        if req.prune is None:
            run.gate(load)
    teacher = artifact
    if req.prune is not None:
        artifact = _prune(run, artifact, train, progress)
    if req.distill or req.qat:
        artifact = _distill(run, teacher, artifact, train, heldout, progress)
    for scheme in run.schemes:
        ctx = StageContext(profile=profile, scheme=scheme)
        _target(run, artifact, teacher, ctx, staging, train, heldout, progress)
    return artifact


def _prune(run: Any, artifact: ModelArtifact, train: list[str], progress: Any) -> ModelArtifact:
    from stages.encoder_prune import prune_encoder, resolve_encoder
    from stages.prune_config import PruneConfig

    if run.req.prune.strip() == "auto":
        raise ConfigError("--prune auto is for decoders; for an encoder name the shape, e.g. layers=3")
    row = max(s.row_multiple for s in run.schemes)
    target = resolve_encoder(
        PruneConfig.parse(run.req.prune, run.req.prune_importance, require=True), artifact.facts, row
    )
    with progress("prune", "scoring heads and channels on calibration sentences and pruning"):
        model = copy.deepcopy(artifact.model)
        summary = prune_encoder(model, target, artifact.tokenizer, train[:512])
        pruned = artifact.evolve("prune", model=model, facts=encoder_facts(model))
    report = StageReport(stage="prune", seconds=summary.pop("seconds"), summary=summary)
    run.stages.append(report)
    for scheme in run.schemes:
        project(pruned, run.profile, scheme, report)
        run.gate(report)
    return pruned


def _distill(
    run: Any,
    teacher: ModelArtifact,
    student: ModelArtifact,
    train: list[str],
    heldout: list[str],
    progress: Any,
) -> ModelArtifact:
    from stages.encoder_distill import EncoderDistillConfig, distill_encoder, parse_losses

    req = run.req
    model: EncoderModel = student.model
    if model is teacher.model:
        model = copy.deepcopy(model)
    cfg = EncoderDistillConfig(
        losses=parse_losses(req.knowledge, model.task),
        max_minutes=req.distill_minutes or 10.0,
        max_tokens=req.distill_tokens,
        lr=req.distill_lr or 6e-4,
    )
    qat = run.schemes[0] if req.qat else None
    smoothing = None
    if qat is not None and qat.per_channel:  # train the weights the file will hold: smoothed ones
        from stages.smooth import smooth_encoder

        smoothing = smooth_encoder(model, teacher.tokenizer, train[:SMOOTH_SENTENCES])
    with progress("distill", "distilling from the float teacher") as bar:

        def on_step(row: dict[str, float]) -> None:
            cos = f", held-out cosine {row['heldout_cosine']:.4f}" if "heldout_cosine" in row else ""
            eta = time.strftime("%M:%S", time.gmtime(row["eta_s"]))
            bar(
                row["step"],
                row["total_steps"],
                f"step {int(row['step'])}: loss {row['loss']:.4f}{cos}, ETA {eta}",
            )

        stats = distill_encoder(teacher.model, model, teacher.tokenizer, train, heldout, cfg, qat, on_step)
    history = stats.pop("history")
    stats["heldout_cosine_curve"] = [[h["step"], round(h["heldout_cosine"], 4)] for h in history]
    if smoothing is not None:
        stats["smoothing"] = smoothing
    report = StageReport(stage="distill", seconds=stats["seconds"], summary=stats)
    run.stages.append(report)
    return student.evolve("distill", model=model, facts=encoder_facts(model))


def _target(
    run: Any,
    artifact: ModelArtifact,
    teacher: ModelArtifact,
    ctx: StageContext,
    staging: Path,
    train: list[str],
    heldout: list[str],
    progress: Any,
) -> None:
    from stages.quantize import QuantizeStage
    from stages.smooth import is_smoothed, smooth_encoder

    name = ctx.scheme.name
    with progress(f"quantize[{name}]", f"quantizing to {name}"):
        work = artifact.evolve("copy", model=copy.deepcopy(artifact.model))
        smoothing = None
        if ctx.scheme.per_channel and not is_smoothed(work.model):
            smoothing = smooth_encoder(work.model, work.tokenizer, train[:SMOOTH_SENTENCES])
        result = QuantizeStage().run(work, ctx)
    if smoothing is not None:
        result.report.summary["smoothing"] = smoothing
    result.report.stage = f"quantize[{name}]"
    run.stages.append(result.report)
    project(result.artifact, ctx.profile, ctx.scheme, result.report)
    run.gate(result.report)

    quantized = result.artifact
    texts = heldout[:VALIDATE_SENTENCES]
    with progress(f"export[{name}]", f"writing {ctx.scheme.format.value} and validating it in its runtime"):
        start = time.perf_counter()
        try:
            paths, summary = _export(quantized, staging, texts)
        except CompressorError as exc:
            run.stages.append(
                StageReport(stage=f"export[{name}]", status=StageStatus.FAILED, message=exc.render())
            )
            raise
        run.stages.append(
            StageReport(stage=f"export[{name}]", seconds=time.perf_counter() - start, summary=summary)
        )
    for path in paths:
        label = path.relative_to(staging).as_posix()
        run.files[label] = name
        with progress(f"measure[{label}]", f"timing a batch and scoring {label} against the teacher"):
            report, checks = measure_encoder(path, quantized, teacher, ctx.profile, label, heldout)
        run.stages.append(report)
        run.measured[label] = report.summary
        run.final_checks += checks


def _export(artifact: ModelArtifact, staging: Path, texts: list[str]) -> tuple[list[Path], dict[str, Any]]:
    if artifact.scheme is not None and artifact.scheme.format is ExportFormat.GGUF:
        from exporters.gguf_encoder import export_encoder_gguf, validate_encoder_gguf

        paths, summary = export_encoder_gguf(artifact, staging)
        paths = [p for p in paths if p.suffix == ".gguf"]
        summary["validation"] = validate_encoder_gguf(paths[0], artifact, texts)
        return paths, summary
    from exporters.onnx_encoder import export_encoder_onnx, validate_encoder_onnx

    paths, summary = export_encoder_onnx(artifact, staging)
    paths = [p for p in paths if p.suffix == ".onnx"]
    summary["validation"] = check = validate_encoder_onnx(paths[0], artifact, texts)
    # the file against the torch model holding the same weights: only activation rounding differs
    if check.get("mean_cosine", 1.0) < ONNX_MIN_COSINE or check.get("label_agreement", 1.0) < 0.95:
        raise ValidationError(
            f"{paths[0].name} disagrees with the torch model holding the same weights: {check}; "
            "please report this"
        )
    return paths, summary


def measure_encoder(
    path: Path,
    artifact: ModelArtifact,
    teacher: ModelArtifact,
    profile: Any,
    label: str,
    heldout: list[str],
) -> tuple[StageReport, list[BudgetCheck]]:
    """``check``'s measurement of the file (one budget batch timed in its runtime, the budgets), plus
    its agreement with the float teacher on held-out sentences, run through the same runtime."""
    from compressor.verify import measure_encoder_file

    start = time.perf_counter()
    report, checks = measure_encoder_file(path, profile, label)
    texts = heldout[:QUALITY_SENTENCES]
    runtime, outputs = _outputs(path, artifact, texts)
    t_out = encode(teacher.model, teacher.tokenizer, texts).numpy()
    if artifact.facts.task == Task.CLASSIFICATION.value:
        quality = label_agreement(t_out, outputs)
    else:
        quality = embedding_agreement(t_out, outputs)
    report.summary.update({f"vs_teacher_{k}": v for k, v in quality.items()})
    report.summary["quality_basis"] = (
        f"{len(texts)} held-out sentences through {runtime} vs the float torch teacher"
    )
    report.seconds = time.perf_counter() - start
    return report, checks


def _outputs(path: Path, artifact: ModelArtifact, texts: list[str]) -> tuple[str, np.ndarray]:
    """(runtime name, the file's outputs for ``texts``) from the file's own runtime."""
    n = max_length(artifact.model, artifact.tokenizer)
    if path.suffix == ".gguf":
        from exporters.gguf_encoder import gguf_embed

        return "llama.cpp (llama-cpp-python)", gguf_embed(path, texts, 2, max_len=n)
    from exporters.onnx_encoder import feeds, ort_session

    session = ort_session(path, 2)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    out: np.ndarray | None = None
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        got = session.run(None, feeds(session, tokenize(artifact.tokenizer, [texts[j] for j in idx], n)))[0]
        if out is None:
            out = np.empty((len(texts), got.shape[-1]), dtype=np.float32)
        out[idx] = got
    assert out is not None
    return "onnxruntime", out
