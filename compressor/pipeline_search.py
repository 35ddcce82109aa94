"""``compress`` with nothing pinned: search, (prune and heal only if no quantization fits), then write
the chosen model. Composition layer: it runs stages; the search itself is ``compressor/search.py``.

Time: with ``--time-budget`` the run keeps to it. The proxy's type list is cut at half of it (the two
most useful types of each format always run), finalists stop being measured once it is spent (one is
always measured), and when pruning is needed the healing distillation gets 60% of what is left after
pruning. Without it every phase runs in full and nothing is trained.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor import search as S
from compressor.artifact import ModelArtifact, weight_inventory
from compressor.budget import MIB, Calibration, describe_failures
from compressor.errors import BudgetExceeded, CompressorError
from compressor.quant import ExportFormat, PtqMethod, QuantScheme
from compressor.report import SearchReport, StageReport, StageStatus
from compressor.stage import StageContext

log = logging.getLogger(__name__)

HELDOUT_TOKENS = 512
PRUNE_ATTEMPTS = 3  # prune, time the pruned model, prune further if it is slower than projected


class Clock:
    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.end = None if minutes is None else self.start + 60 * minutes

    def at(self, share: float) -> float | None:
        """The time ``share`` of the budget ends (None: no budget)."""
        return None if self.end is None else self.start + share * (self.end - self.start)

    def left_s(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def spent(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


def _overhead(artifact: ModelArtifact) -> Any:
    from compressor.pipeline import onnx_graph_bytes

    cache: dict[ExportFormat, float] = {}

    def overhead(scheme: QuantScheme) -> float:
        if scheme.format not in cache:
            if scheme.format is ExportFormat.GGUF:
                from exporters.gguf import overhead_bytes

                cache[scheme.format] = float(overhead_bytes(artifact))
            else:
                cache[scheme.format] = float(onnx_graph_bytes(artifact))
        return cache[scheme.format]

    return overhead


def pinned_formats(formats: str | None) -> list[ExportFormat] | None:
    if not formats:
        return None
    return [ExportFormat(f.strip().lower()) for f in formats.split(",") if f.strip()]


def run_search(
    run: Any, artifact: ModelArtifact, staging: Path, target: Path, progress: Any
) -> ModelArtifact:
    """Search, prune if nothing else fits, write the winner(s) into ``staging``; fills ``run``."""
    from compressor.pipeline import _run_distill, _run_prune
    from stages import prune_auto
    from stages.prune_config import PruneConfig, resolve

    if run.req.ptq == "auto":  # the search has calibration text: GPTQ (what the recipe then pins)
        run.req = run.req.model_copy(update={"ptq": "gptq"})
    req, profile = run.req, run.profile
    clock = Clock(req.time_budget)
    formats = S.formats_for(profile, pinned_formats(req.formats))
    teacher = artifact
    start = time.perf_counter()
    report = SearchReport(formats=[f.value for f in formats], time_budget_min=req.time_budget)
    run.search = report  # a stop part-way still reports what was tried
    cals = {}
    for fmt in formats:
        with progress(f"calibrate[{fmt.value}]", "timing the model in its runtime on this host"):
            cals[fmt], note = host_calibration(run, artifact, fmt, staging)
        report.calibrations[fmt.value] = note

    def candidates(art: ModelArtifact) -> list[S.Candidate]:
        out = []
        for fmt in formats:
            out += S.enumerate_candidates(art, profile, [fmt], _overhead(art), req.mixed_types, cals[fmt])[0]
        return out

    with progress("search", "projecting every candidate") as bar:
        cands = candidates(artifact)
        bar(1, 1, f"{len(cands)} candidates, {sum(c.fits for c in cands)} projected to fit")
    pre_prune: list[S.Candidate] = []
    if not any(c.fits for c in cands):
        pre_prune = cands
        smallest = min(cands, key=lambda c: c.projected["size_mib"])
        scheme = smallest.scheme
        run.schemes[:] = [scheme]  # the stage gates project the pruned model at the smallest plan
        cal, pruned, tries = cals[scheme.format], None, []
        for attempt in range(1, PRUNE_ATTEMPTS + 1):
            try:
                config, why = prune_auto.choose(
                    artifact.facts,
                    [scheme],
                    profile,
                    scheme.row_multiple,
                    inventory=weight_inventory(artifact.model),
                    calibration=cal,
                )
            except BudgetExceeded as exc:
                if pruned is not None:  # a smaller shape would be needed than any uniform one
                    break
                near = S.closest(cands)
                report.candidates = [c.row() for c in cands]
                report.nothing_fits = _nothing_fits(near, exc.problems)
                run.stages.append(
                    StageReport(
                        stage="search",
                        status=StageStatus.STOPPED,
                        seconds=time.perf_counter() - start,
                        message=report.nothing_fits,
                    )
                )
                raise BudgetExceeded(report.nothing_fits, exc.problems) from None
            config = config.model_copy(
                update={"importance": PruneConfig.parse("", req.prune_importance).importance}
            )
            resolve(config, artifact.facts, scheme.row_multiple)
            if pruned is not None:
                run.stages[-1].status = StageStatus.SKIPPED
                run.stages[-1].message = "superseded: the pruned model timed slower than projected"
            run.resolved_prune = why["chosen"]
            pruned = _run_prune(run, artifact, (config, why), progress)
            tries.append(why["chosen"])
            # the host timing of the pruned model: its fixed costs shrink less than its bytes
            with progress(f"calibrate[{scheme.format.value}]", "timing the pruned model on this host"):
                new_cal, note = host_calibration(run, pruned, scheme.format, staging)
            if new_cal is None or attempt == PRUNE_ATTEMPTS:
                break
            cals[scheme.format], cal = new_cal, new_cal
            report.calibrations[scheme.format.value] = f"pruned {why['chosen']}: {note}"
            if any(c.fits for c in candidates(pruned)):
                break
        assert pruned is not None
        artifact = pruned
        report.pruned = (
            f"no quantization alone fits ({smallest.label}, the smallest, misses: "
            f"{'; '.join(smallest.misses)}); pruned to {run.resolved_prune}, the largest uniform shape "
            f"projected to fit at {scheme.name}"
            + (f" (shapes tried, each timed on this host: {', '.join(tries)})" if len(tries) > 1 else "")
        )
        log.warning("%s", report.pruned)
        left = clock.left_s()
        if left is not None and left > 120:
            minutes = 0.6 * left / 60
            report.distill = f"healed by distillation for {minutes:.1f} min (60% of the time left)"
            run.req = req = req.model_copy(update={"distill": True, "distill_minutes": minutes})
            artifact = _run_distill(run, artifact, teacher.model, target, progress, None)
        else:
            report.distill = "not healed: give --time-budget MIN for distillation after pruning"
        cands = candidates(artifact)
        for c in cands:
            c.label = f"pruned {c.label}"
    chosen = []
    for fmt in formats:
        pool = [c for c in cands if c.scheme.format is fmt]
        chosen.append(_rank_and_measure(run, artifact, teacher, pool, staging, progress, clock, report))
    report.candidates = [c.row() for c in pre_prune + cands]
    report.chosen = [c.label for c in chosen]
    report.seconds = round(time.perf_counter() - start, 1)
    summary = {"chosen": report.chosen, "candidates": len(report.candidates), "pruned": bool(report.pruned)}
    run.stages.insert(1, StageReport(stage="search", seconds=report.seconds, summary=summary))
    run.schemes[:] = [c.scheme for c in chosen]
    return artifact


def host_calibration(
    run: Any, artifact: ModelArtifact, fmt: ExportFormat, scratch: Path
) -> tuple[Calibration | None, str]:
    """Time the model at the cheapest uniform type (reference rounding: seconds to write) in its
    runtime on this host; measured / roofline scales every candidate's latency projection, as the
    final check's will be (None: no latency budget, or a busy host)."""
    from compressor.verify import measure_artifact
    from stages.quantize import QuantizeStage

    b = run.profile.budgets
    if b.max_decode_ms_per_token is None and b.max_ttft_ms is None:
        return None, "no latency budget: latency projections uncalibrated"
    scheme = QuantScheme.parse("gguf:Q4_0" if fmt is ExportFormat.GGUF else "onnx:int4")
    work = artifact.evolve("copy", model=copy.deepcopy(artifact.model))
    ctx = StageContext(profile=run.profile, scheme=scheme)
    quantized = QuantizeStage(method=PtqMethod.RTN).run(work, ctx).artifact
    out = scratch / f".calibrate-{fmt.value}"
    out.mkdir()
    try:
        if fmt is ExportFormat.GGUF:
            from exporters.gguf import export_gguf

            path = export_gguf(quantized, out)
        else:
            from exporters.onnx import export_onnx

            path, _ = export_onnx(quantized, out)
        measured, _ = measure_artifact(path, run.profile, path.name)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    m = measured.summary
    if not m["host_measurement_reliable"]:
        return None, "the host was busy: latency projections uncalibrated"
    cal = Calibration.model_validate(m["calibration"])
    return cal, f"{scheme.name} (reference rounding) timed on this host: {cal.basis}"


def _mmss(seconds: float) -> str:
    return time.strftime("%M:%S", time.gmtime(max(seconds, 0.0)))


def _nothing_fits(near: S.Candidate | None, prune_problems: list[str]) -> str:
    if near is None:
        return "no candidate fits"
    return (
        f"nothing fits, not even pruned (pruning: {'; '.join(prune_problems[:2]) or 'no shape fits'}); "
        f"the closest candidate is {near.label}, which misses: {'; '.join(near.misses)}"
    )


def _rank_and_measure(
    run: Any,
    artifact: ModelArtifact,
    teacher: ModelArtifact,
    cands: list[S.Candidate],
    staging: Path,
    progress: Any,
    clock: Clock,
    report: SearchReport,
) -> S.Candidate:
    from compressor.calibration import calibration_ids

    req, fmt = run.req, cands[0].scheme.format
    menu = S.type_menu(fmt, req.mixed_types)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        near = S.closest(cands)
        report.candidates = [c.row() for c in cands]
        report.nothing_fits = _nothing_fits(near, [])
        raise BudgetExceeded(report.nothing_fits, near.misses if near else [])
    with progress(f"search[{fmt.value}]", "ranking by KL to the teacher on calibration text") as bar:
        batches, heldout, source = calibration_ids(
            artifact, list(req.calib_data), req.calibration_tokens, teacher=req.calib_text == "teacher"
        )
        report.calibration = source

        def status(text: str) -> None:
            bar(0, 1, text)

        work = copy.deepcopy(artifact.model)
        data = S.prepare_proxy(artifact.model, batches, [fmt], clock.at(0.5), status, menu, teacher.model)
        report.proxy_seconds.update({k: round(v, 1) for k, v in data.seconds.items()})
        inventory = weight_inventory(artifact.model)
        t0 = time.monotonic()
        for i, c in enumerate(fitting):
            eta = f", ETA {_mmss((time.monotonic() - t0) / i * (len(fitting) - i))}" if i else ""
            bar(i, len(fitting), f"proxy KL of {c.label} ({len(fitting) - i} left{eta})")
            if c.scheme.is_mixed and not S.allocate_mixed(c, data):
                c.status, c.why = "dropped", "no mixed plan of the computed types fits its byte target"
                continue
            types = S.assignment(c, data, inventory)
            if types is None:
                c.status, c.why = "dropped", "its type was not computed within the time budget"
                continue
            c.proxy_kl = S.proxy_kl(work, artifact.model, c, data, types)
            c.status, c.why = "ranked", "ranked by the proxy"
        del work
    # ties (a type on the teacher's own grid is exact) go to the smaller file
    ranked = sorted(
        (c for c in fitting if c.proxy_kl is not None),
        key=lambda c: (round(c.proxy_kl or 0.0, 5), c.projected["size_mib"]),
    )
    if not ranked:
        raise BudgetExceeded("no candidate could be ranked", [])
    ids = heldout[:HELDOUT_TOKENS]
    with torch.no_grad():
        ref = teacher.model(torch.tensor([ids])).logits[0].float().numpy()
    best: tuple[float, S.Candidate, Any, Path] | None = None
    measured = 0
    for c in ranked:
        if measured >= req.finalists or (measured >= 1 and clock.spent()):
            break
        measured += 1
        c.status = "finalist"
        log.info(
            "finalist %d of at most %d: %s (proxy KL %.4f)", measured, req.finalists, c.label, c.proxy_kl
        )
        sub_dir = staging / f".search-{fmt.value}-{measured}"
        sub_dir.mkdir()
        try:
            sub = _measure_finalist(
                run, artifact, c, sub_dir, progress, ids, ref, S.blocks_of(c, data, inventory)
            )
        except CompressorError as exc:
            c.why = f"finalist failed: {exc.render()}"
            shutil.rmtree(sub_dir, ignore_errors=True)
            continue
        if not c.measured["fits"]:
            c.why = "measured: misses " + "; ".join(c.measured["misses"])
        elif best is None or c.measured["kl"] < best[0]:
            best = (c.measured["kl"], c, sub, sub_dir)
    for c in ranked:
        if c.status == "ranked":
            c.why = f"ranked {ranked.index(c) + 1} of {len(ranked)} by the proxy; not measured"
    if best is None:
        for d in staging.glob(f".search-{fmt.value}-*"):
            shutil.rmtree(d, ignore_errors=True)
        near = min(
            (c for c in ranked if c.measured), key=lambda c: len(c.measured.get("misses", [])), default=None
        )
        report.candidates = [c.row() for c in cands]
        report.nothing_fits = "no finalist fits when measured" + (
            f"; the closest, {near.label}, misses: {'; '.join(near.measured['misses'])}" if near else ""
        )
        raise BudgetExceeded(report.nothing_fits, near.measured["misses"] if near else [])
    _, win, sub, win_dir = best
    win.status = "chosen"
    win.why = (
        f"least measured KL to the teacher ({win.measured['kl']:.4f}) of the "
        f"{sum(1 for c in ranked if c.status in ('chosen', 'finalist'))} finalists that fit"
    )
    for c in ranked:
        if c.status == "finalist" and c.measured.get("fits"):
            c.why = f"measured KL {c.measured['kl']:.4f}, not below the chosen one's"
    _adopt(run, sub, win_dir, staging)
    for d in staging.glob(f".search-{fmt.value}-*"):
        shutil.rmtree(d, ignore_errors=True)
    return win


def _measure_finalist(
    run: Any,
    artifact: ModelArtifact,
    cand: S.Candidate,
    out_dir: Path,
    progress: Any,
    ids: list[int],
    ref: np.ndarray,
    start: dict[str, Any],
) -> Any:
    """Quantize (GPTQ on the calibration text), export, validate and measure one candidate in
    ``out_dir``; its figures go into ``cand.measured``. Returns the sub-run holding its reports."""
    from compressor.pipeline import Run, _run_target
    from exporters import llama_runtime, ort_runtime

    # the search projected it (host-calibrated); the measurement decides, not the stage gates
    req = run.req.model_copy(update={"quant": cand.scheme.name, "plan": {}, "keep_going": True})
    sub = Run(req, run.profile, [cand.scheme])
    sub.start_blocks = start
    work = artifact.evolve("copy", model=copy.deepcopy(artifact.model))
    _run_target(sub, work, StageContext(profile=run.profile, scheme=cand.scheme), out_dir, progress)
    path = next(out_dir / f for f in sub.files if not f.endswith(".ort"))
    rt = llama_runtime if path.suffix == ".gguf" else ort_runtime
    q = S.heldout_kl(ref, rt.logits(path.resolve(), ids))
    checks = sub.final_checks
    by = {c.budget: c.value for c in checks}
    cand.measured = {
        "file_mib": round(path.stat().st_size / MIB, 3),
        "decode_ms": by.get("max_decode_ms_per_token"),
        "ttft_ms": by.get("max_ttft_ms"),
        "ram_mib": by.get("max_ram_mib"),
        "kl": round(q["kl"], 5),
        "top1": round(q["top1"], 4),
        "heldout_tokens": len(ids),
        # a latency read while other processes used the CPU decides nothing: the run's verdict says so
        "fits": all(c.passed or not c.reliable for c in checks),
        "misses": describe_failures([c for c in checks if c.reliable]),
        "unreliable": describe_failures([c for c in checks if not c.reliable]),
    }
    return sub


def _adopt(run: Any, sub: Any, src: Path, staging: Path) -> None:
    """The chosen finalist's files and reports become the run's."""
    for entry in src.iterdir():
        entry.rename(staging / entry.name)
    src.rmdir()
    run.stages += sub.stages
    run.files.update(sub.files)
    run.measured.update(sub.measured)
    run.final_checks += sub.final_checks
    run.resolved_schemes.update(sub.resolved_schemes)


def plan_rows(cands: list[S.Candidate]) -> list[list[str]]:
    rows = []
    for c in cands:
        p = c.projected
        rows.append(
            [
                c.label,
                f"{p['bits_per_weight']:.2f}",
                f"{p['size_mib']:.{1 if p['size_mib'] >= 10 else 3}f}",
                f"{p['ram_mib']:.0f}",
                f"{p.get('decode_ms', float('nan')):.1f}",
                f"{p.get('ttft_ms', float('nan')):.0f}",
                "fits" if c.fits else "; ".join(m.split(" (")[0] for m in c.misses),
            ]
        )
    return rows
