"""What a compress request means, checked before any model is loaded or any file written: the target
schemes, the profile with its overrides, the PTQ method, the paths the run reads (which ``--out`` must
never touch), and the distillation checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.config import CompressRequest
from compressor.device_profile import DeviceProfile, load_profile
from compressor.errors import ConfigError, InputError
from compressor.quant import ExportFormat, PtqMethod, QuantScheme, supported_schemes
from stages.prune_config import PruneConfig

DEFAULT_SCHEMES = {ExportFormat.GGUF: "gguf:Q4_0", ExportFormat.ONNX: "onnx:int4"}


def resolve_schemes(req: CompressRequest) -> list[QuantScheme]:
    """Schemes from ``--quant`` (comma-separated) and ``--formats`` (a default scheme per format)."""
    specs = [s for s in (req.quant or "").split(",") if s.strip()]
    schemes = [
        QuantScheme.parse(s, req.embedding_type, req.onnx_accuracy_level, req.mixed_types) for s in specs
    ]
    if req.formats:
        try:
            formats = [ExportFormat(f.strip().lower()) for f in req.formats.split(",") if f.strip()]
        except ValueError:
            raise ConfigError(f"--formats '{req.formats}': choose from gguf, onnx") from None
        extra = [s.name for s in schemes if s.format not in formats]
        if extra:
            raise ConfigError(f"--quant {', '.join(extra)} is not among --formats {req.formats}")
        have = {s.format for s in schemes}
        schemes += [
            QuantScheme.parse(DEFAULT_SCHEMES[f], req.embedding_type, req.onnx_accuracy_level)
            for f in formats
            if f not in have
        ]
    if not schemes:  # --embedding-type applies to the default scheme too
        schemes = [QuantScheme.parse(DEFAULT_SCHEMES[ExportFormat.GGUF], req.embedding_type)]
    if len({s.format for s in schemes}) != len(schemes):
        raise ConfigError("give at most one scheme per format (e.g. --quant gguf:Q4_0,onnx:int4)")
    return [_pinned(s, req.plan.get(s.format.value)) for s in schemes]


def _pinned(scheme: QuantScheme, plan: dict[str, str] | None) -> QuantScheme:
    """``scheme`` with a recipe's per-tensor types (checked when the model is loaded)."""
    if not plan:
        return scheme
    allowed = set(scheme.mixed_types) if scheme.is_mixed else set()
    bad = sorted({t for t in plan.values() if t not in allowed | {"F16", "F32", "fp32"}})
    if bad:
        raise ConfigError(
            f"recipe plan for {scheme.name}: types {', '.join(bad)} are not among its types "
            f"({', '.join(sorted(allowed)) or 'a plan pins mixed schemes only'})"
        )
    return scheme.with_overrides(plan)


def resolve_inputs(req: CompressRequest) -> tuple[DeviceProfile, list[QuantScheme]]:
    """Everything that can be checked without the model, before anything is loaded or written."""
    from compressor.textdata import check_text_files
    from stages.distill import DistillConfig

    profile = load_profile(req.device).with_budgets(**req.budget_overrides())
    check_text_files(req.calib_data)
    if req.prune is not None and req.prune.strip() != "auto":
        PruneConfig.parse(req.prune, req.prune_importance, require=True)  # syntax and ranges
    else:
        PruneConfig.parse("", req.prune_importance)
    schemes = resolve_schemes(req)
    if req.qat and not schemes[0].trainable:
        trainable = [s for s in supported_schemes() if QuantScheme.parse(s).trainable]
        raise ConfigError(
            f"--qat trains through an exact fake quantizer, which {schemes[0].name} has none of "
            f"(llama.cpp quantizes it itself); use one of: {', '.join(trainable)}"
        )
    if req.qat and not schemes[0].learns_scales and req.ptq in (PtqMethod.WEIGHTED, PtqMethod.GPTQ):
        raise ConfigError(
            f"--qat on {schemes[0].name} trains through the reference rounding rule; use --ptq rtn "
            "(or auto) with it"
        )
    mixed = any(s.is_mixed and not s.overrides for s in schemes)
    if mixed and profile.budgets.max_size_mib is None and req.bits_per_weight is None:
        raise ConfigError(
            f"a mixed plan fits a size: give --max-size-mib or --bits-per-weight, or a profile with "
            f"budgets.max_size_mib ('{profile.name}' has none)"
        )
    if req.bits_per_weight is not None and not any(s.is_mixed for s in schemes):
        raise ConfigError("--bits-per-weight applies to --quant gguf:mixed or onnx:mixed only")
    if req.mixed_types and req.searches:
        from compressor.search import OPTION_ORDER

        known = {t.upper() for menu in OPTION_ORDER.values() for t in menu}
        bad = [t for t in req.mixed_types.split(",") if t.strip() and t.strip().upper() not in known]
        if bad:
            raise ConfigError(
                f"--mixed-types: {', '.join(bad)} cannot be searched; choose from "
                f"{', '.join(t for menu in OPTION_ORDER.values() for t in menu)}"
            )
    if req.mixed_types and not req.searches and not any(s.is_mixed for s in schemes):
        raise ConfigError("--mixed-types applies to --quant gguf:mixed or onnx:mixed only")
    if req.resume and not (req.distill or req.qat):
        raise ConfigError("--resume continues a distillation; add --distill or --qat")
    cfg = DistillConfig()
    batch_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    if (req.distill or req.qat) and req.distill_tokens is not None and req.distill_tokens < batch_tokens:
        raise ConfigError(
            f"--distill-tokens {req.distill_tokens} is less than one training batch "
            f"({cfg.batch_size} x {cfg.seq_len} = {batch_tokens} tokens); give at least {batch_tokens}"
        )
    return profile, schemes


def input_paths(req: CompressRequest) -> tuple[Path, ...]:
    """Every path the run reads: the output must never hold, equal or sit inside one of them."""
    from compressor.loading import resolve_source

    paths = [Path(resolve_source(req.model).path), *req.calib_data]
    if Path(req.device).is_file():
        paths.append(Path(req.device))
    return tuple(paths)


def ptq_method(req: CompressRequest, schemes: list[QuantScheme]) -> PtqMethod:
    """--ptq auto: GPTQ when there is calibration text (the user's, or a mixed plan's), else the
    weighted search (QAT with learned scales starts from it); under QAT through the reference rule
    (ONNX), that rule."""
    if req.ptq == "auto":
        if req.qat and not schemes[0].learns_scales:
            return PtqMethod.RTN
        mixed = any(s.is_mixed for s in schemes)
        return PtqMethod.GPTQ if (req.calib_data or mixed) else PtqMethod.WEIGHTED
    return PtqMethod(req.ptq)


def checkpoint_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.distill-checkpoint.safetensors")


def fingerprint(req: CompressRequest) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue this run (the time budget may change)."""
    return {
        "model": req.model,
        "prune": req.prune,
        "prune_importance": req.prune_importance,
        "quant": req.quant,
        "formats": req.formats,
        "embedding_type": req.embedding_type,
        "qat": req.qat,
        "qat_codes": req.qat_codes,
        "qat_scale_lr": req.qat_scale_lr,
        "ptq": req.ptq,
        "mixed_types": req.mixed_types,
        "max_size_mib": req.max_size_mib,
        "bits_per_weight": req.bits_per_weight,
        "device": req.device,
        "distill_tokens": req.distill_tokens,
        "distill_loss": req.distill_loss,
        "distill_lr": req.distill_lr,
        "knowledge": req.knowledge,
        "calib_data": [str(p) for p in req.calib_data],
        "calib_tokens": req.calib_tokens,
        "calib_text": req.calib_text,
        "plan": req.plan,
        "seed": req.seed,
    }


def load_resume(req: CompressRequest) -> dict[str, Any] | None:
    if not req.resume:
        return None
    from compressor.checkpoint import load_checkpoint

    ckpt = checkpoint_path(Path(req.out).resolve())
    if not ckpt.is_file():
        raise InputError(f"--resume: no checkpoint at {ckpt}; run without --resume")
    return load_checkpoint(ckpt, fingerprint(req))
