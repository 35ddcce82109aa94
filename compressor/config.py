"""Typed, frozen requests for the pipeline: the ONE definition of every ``compress`` setting.

Each field of ``Settings`` is at once a recipe field (``recipe.toml``'s ``[settings]`` table) and a
command-line flag: its ``description`` is the flag's help and ``json_schema_extra`` names the flag
(``cli.py`` builds the ``compress`` parser from these fields; a test checks both stay one). Fields
of ``CompressRequest`` beyond ``Settings`` say where and how a run happens (output, force, resume) and
are never part of a recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compressor.builtin_models import BUILTIN_MODELS

PositiveOpt = Annotated[float | None, Field(gt=0, allow_inf_nan=False)]

DEFAULT_DISTILL_TOKENS = 32_768


def flag(
    default: Any,
    help: str,
    name: str | None = None,
    group: str = "",
    metavar: str | None = None,
    **constraints: Any,
) -> Any:
    """A setting with its command-line flag: ``name`` (default ``--field-name``), help, group."""
    extra: dict[str, Any] = {"group": group}
    if name is not None:
        extra["flag"] = name
    if metavar is not None:
        extra["metavar"] = metavar
    return Field(default, description=help, json_schema_extra=extra, **constraints)


BUDGET = "budget overrides (replace the profile's value)"
PRUNING = "pruning"
DISTILL = "distillation"
SEARCH = "search (used when neither --quant nor --prune is given)"


class Settings(BaseModel):
    """What a compress run does: everything a recipe pins."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = flag(
        "smollm2-135m",
        f"built-in name ({', '.join(BUILTIN_MODELS)}), a .gguf file, or a Hugging Face directory of a "
        "supported family",
        name="model",
    )
    device: str = flag("raspberry-pi-5", "profile name (see 'compressor profiles list') or .toml")
    quant: str | None = flag(
        None,
        "weight format(s), comma-separated, one per format: gguf:F32|F16|Q8_0|Q5_1|Q5_0|Q4_1|Q4_0|"
        "IQ4_NL|Q4_K_M|Q5_K_M|Q6_K|mixed, onnx:fp32|int8|int8-channel|int4[-asym][-blockN]; "
        "default: search the formats of the profile's runtime for the best plan that fits",
    )
    formats: str | None = flag(
        None, "export formats, e.g. onnx,gguf (a default scheme per format without --quant: searched)"
    )
    embedding_type: str | None = flag(
        None, "type of the (tied) embedding/output, e.g. Q8_0 (default: Q8_0 for 4-bit schemes)"
    )
    ptq: Literal["auto", "rtn", "weighted", "gptq"] = flag(
        "auto",
        "how weights are rounded: 'weighted' searches each block's scale, weighted by the input "
        "importance measured on calibration text; 'rtn' is each type's reference rule (what llama.cpp "
        "does without an imatrix); 'gptq' keeps the weighted scales and picks codes by GPTQ error "
        "compensation on the calibration activations; auto: gptq with calibration text "
        "(--calib-data, gguf:mixed, or a searched plan), else weighted; rtn under --qat",
    )
    mixed_types: str | None = flag(
        None,
        "the types a tensor may get: with --quant gguf:mixed (default IQ4_NL,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0; "
        "each tensor's type is chosen to fit --max-size-mib), or the types the search may use",
        metavar="TYPES",
    )
    bits_per_weight: Annotated[float | None, Field(ge=4.5, le=8.5, allow_inf_nan=False)] = flag(
        None,
        "with --quant gguf:mixed: fit the matrices to B bits per weight on average (4.5-8.5) instead "
        "of the size budget",
        metavar="B",
    )
    onnx_accuracy_level: Annotated[int, Field(ge=0, le=4)] = flag(
        4,
        "onnxruntime MatMulNBits compute type: 0 fp32 activations, 4 int8 (default, fastest)",
        metavar="0-4",
    )
    mobile: bool = flag(False, "also write the ORT format (.ort) for onnxruntime-mobile")
    # format ("gguf"/"onnx") -> tensor name -> type: a mixed plan pinned by a recipe
    plan: dict[str, dict[str, str]] = Field(default_factory=dict, json_schema_extra={"recipe_only": True})
    max_size_mib: PositiveOpt = flag(None, "largest model file allowed", group=BUDGET, metavar="MIB")
    max_ram_mib: PositiveOpt = flag(None, "peak RAM at the profile's context", group=BUDGET, metavar="MIB")
    max_decode_ms_per_token: PositiveOpt = flag(
        None, "slowest decode allowed, ms per token", name="--max-decode-ms", group=BUDGET, metavar="MS"
    )
    max_ttft_ms: PositiveOpt = flag(None, "slowest time to first token allowed", group=BUDGET, metavar="MS")
    max_encode_ms: PositiveOpt = flag(
        None,
        "encoders: slowest batch allowed (the profile's encode_batch x encode_tokens)",
        group=BUDGET,
        metavar="MS",
    )
    prune: str | None = flag(
        None,
        "'auto' (smallest pruning whose projection fits the budgets) or what to keep, e.g. "
        "heads=6,kv_heads=3,mlp=1024,layers=24 (counts, or ratios in (0,1)); without --quant and "
        "--prune the search prunes only when no quantization alone fits",
        group=PRUNING,
        metavar="SPEC",
    )
    prune_importance: Literal["activation", "taylor", "magnitude", "random"] = flag(
        "activation", "how structures are ranked", group=PRUNING
    )
    calib_data: list[Path] = flag(
        [],
        ".txt/.jsonl text for calibration and held-out evaluation (default: the built-in "
        "general-text sample; see --calib-text)",
        group=PRUNING,
        metavar="FILE",
    )
    calib_text: Literal["sample", "teacher"] = flag(
        "sample",
        "without --calib-data: 'sample' is the shipped general-text sample; 'teacher' has the model "
        "write text from built-in prompts (batched, cached per model)",
        group=PRUNING,
    )
    calib_tokens: Annotated[int | None, Field(ge=64, le=1_000_000)] = flag(
        None,
        "calibration tokens (default 16384 of --calib-data files, 4096 of the sample, 2048 of "
        "teacher-written text)",
        group=PRUNING,
    )
    distill: bool = flag(False, "heal the (pruned) student against the float teacher", group=DISTILL)
    qat: bool = flag(False, "distill through the first --quant scheme's exact quantizer", group=DISTILL)
    qat_codes: Literal["follow", "frozen"] = flag(
        "follow",
        "QAT on GGUF types trains each block's scale (initialised from PTQ); 'follow': the codes follow "
        "the trained weights; 'frozen': PTQ's codes stay, only scales and norms train (cheaper)",
        group=DISTILL,
    )
    qat_scale_lr: Annotated[float, Field(gt=0, le=1.0, allow_inf_nan=False)] = flag(
        1e-3,
        "peak learning rate of the learned scales (relative step per update; default 1e-3)",
        group=DISTILL,
    )
    distill_tokens: Annotated[int | None, Field(ge=256, le=10**12)] = flag(
        None, "tokens to train on (default 32768; no limit when --distill-minutes is given)", group=DISTILL
    )
    distill_minutes: Annotated[float | None, Field(gt=0, le=7 * 24 * 60, allow_inf_nan=False)] = flag(
        None, "stop after this many minutes", group=DISTILL
    )
    distill_loss: Literal["forward_kl", "reverse_kl", "skew_kl"] = flag(
        "forward_kl", "the distillation loss", group=DISTILL
    )
    distill_lr: Annotated[float | None, Field(gt=0, le=1.0, allow_inf_nan=False)] = flag(
        None, "peak learning rate (default 5e-5 for decoders, 6e-4 for encoders)", group=DISTILL
    )
    knowledge: str | None = flag(
        None,
        "encoders: what to distil, with optional weights: embedding (pooled output: cosine + MSE), "
        "logits (classifiers, with temperature), hidden (mapped layers' states), attention (MiniLM "
        "attention and value relations), similarity (sample-to-sample in a batch); default: "
        "'embedding,hidden,attention'",
        group=DISTILL,
        metavar="KINDS",
    )
    seed: int = flag(0, "seed of every random choice (sampling, data order, initialisation)", ge=0)
    time_budget: Annotated[float | None, Field(gt=0, le=7 * 24 * 60, allow_inf_nan=False)] = flag(
        None,
        "minutes the search may spend; what is left after the search and the finalists' "
        "measurements goes to distillation (of a pruned model) or QAT (default: no training)",
        group=SEARCH,
        metavar="MIN",
    )
    finalists: Annotated[int, Field(ge=1, le=16)] = flag(
        2, "candidates exported and measured in the real runtime (best by the proxy first)", group=SEARCH
    )
    validate_tokens: Annotated[int, Field(ge=16, le=2048)] = Field(
        128, json_schema_extra={"recipe_only": True}
    )

    @property
    def calibration_tokens(self) -> int:
        if self.calib_tokens is not None:
            return self.calib_tokens
        if self.calib_data:
            return 16384
        return 2048 if self.calib_text == "teacher" else 4096

    @property
    def train_tokens(self) -> int | None:
        """The token limit of distillation (None: the minutes alone bound it)."""
        if self.distill_tokens is not None:
            return self.distill_tokens
        return None if self.distill_minutes else DEFAULT_DISTILL_TOKENS

    @property
    def searches(self) -> bool:
        """Whether ``compress`` searches for the plan (nothing about the format or shape pinned)."""
        pinned = self.quant or self.prune or self.plan or self.qat or self.distill
        return not pinned and self.bits_per_weight is None and self.embedding_type is None

    def budget_overrides(self) -> dict[str, float | None]:
        return {
            "max_size_mib": self.max_size_mib,
            "max_ram_mib": self.max_ram_mib,
            "max_decode_ms_per_token": self.max_decode_ms_per_token,
            "max_ttft_ms": self.max_ttft_ms,
            "max_encode_ms": self.max_encode_ms,
        }


class CompressRequest(Settings):
    """A run: the settings plus where it writes and how it treats what is there."""

    out: Path = flag(..., "output directory (created atomically)")
    recipe: Path | None = flag(
        None, "replay a recipe.toml written by an earlier run (only --out, --force may be added)"
    )
    resume: bool = flag(False, "continue a killed distillation from its checkpoint", group=DISTILL)
    keep_going: bool = flag(False, "run every stage even if a projection fails")
    force: bool = flag(False, "replace a non-empty output directory")
    bundle: bool = flag(
        False, "also write NAME-DEVICE.bundle/ and its deterministic .zip for apps (see 'compressor bundle')"
    )
    trust_remote_code: bool = flag(False, "allow a model's own Python code (unsafe)")

    def settings(self) -> Settings:
        return Settings.model_validate(self.model_dump(include=set(Settings.model_fields)))


RUN_FIELDS = frozenset(CompressRequest.model_fields) - frozenset(Settings.model_fields)
