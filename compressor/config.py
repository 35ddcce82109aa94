"""Typed, frozen requests for the pipeline; the CLI builds them, defaults live here only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveOpt = Annotated[float | None, Field(gt=0, allow_inf_nan=False)]


DEFAULT_DISTILL_TOKENS = 32_768


class CompressRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = "smollm2-135m"
    device: str = "raspberry-pi-5"
    out: Path
    quant: str | None = None  # comma-separated schemes; None: a default per format (gguf:Q4_0)
    formats: str | None = None  # e.g. "onnx,gguf": add the default scheme of each format not in quant
    embedding_type: str | None = None
    ptq: Literal["auto", "rtn", "weighted", "gptq"] = "auto"  # auto: weighted, except rtn under --qat
    mixed_types: str | None = None  # gguf:mixed: comma-separated types (default: every type we pack)
    # gguf:mixed: average bits per weight of the quantized matrices (instead of a size budget)
    bits_per_weight: Annotated[float | None, Field(ge=4.5, le=8.5, allow_inf_nan=False)] = None
    onnx_accuracy_level: Annotated[int, Field(ge=0, le=4)] = 4
    mobile: bool = False  # also write the ORT format (.ort) for onnxruntime-mobile
    max_size_mib: PositiveOpt = None
    max_ram_mib: PositiveOpt = None
    max_decode_ms_per_token: PositiveOpt = None
    max_ttft_ms: PositiveOpt = None
    max_encode_ms: PositiveOpt = None
    prune: str | None = None  # "auto", or e.g. "heads=6,kv_heads=3,mlp=1024,layers=24"
    prune_importance: str = "activation"
    calib_data: list[Path] = []  # .txt / .jsonl; none: text sampled from the teacher
    # None: 16384 tokens of the user's files (PTQ statistics, GPTQ), 2048 of teacher-written text
    # (sampling it is slow on a CPU).
    calib_tokens: Annotated[int | None, Field(ge=64, le=1_000_000)] = None

    @property
    def calibration_tokens(self) -> int:
        if self.calib_tokens is not None:
            return self.calib_tokens
        return 16384 if self.calib_data else 2048

    distill: bool = False  # heal the (pruned) student against the float teacher
    qat: bool = False  # distill through the first target scheme's exact quantizer
    # QAT on GGUF types learns each block's scale; "follow": codes follow the trained weights,
    # "frozen": the PTQ codes stay and only scales, offsets and norms train.
    qat_codes: Literal["follow", "frozen"] = "follow"
    qat_scale_lr: Annotated[float, Field(gt=0, le=1.0, allow_inf_nan=False)] = 1e-3
    # None: 32768, or no token limit when --distill-minutes bounds the run.
    distill_tokens: Annotated[int | None, Field(ge=256, le=10**12)] = None
    distill_minutes: Annotated[float | None, Field(gt=0, le=7 * 24 * 60, allow_inf_nan=False)] = None
    distill_loss: str = "forward_kl"
    # None: 5e-5 for decoders, 6e-4 for encoders
    distill_lr: Annotated[float | None, Field(gt=0, le=1.0, allow_inf_nan=False)] = None
    # encoders: knowledge to distil, e.g. "embedding,hidden=0.5,attention,similarity" (None: the default mix)
    knowledge: str | None = None
    resume: bool = False  # continue a killed distillation from its checkpoint
    keep_going: bool = False  # run every stage even when a projected budget fails
    force: bool = False  # replace a non-empty output directory
    trust_remote_code: bool = False
    validate_tokens: Annotated[int, Field(ge=16, le=2048)] = 128

    @property
    def train_tokens(self) -> int | None:
        """The token limit of distillation (None: the minutes alone bound it)."""
        if self.distill_tokens is not None:
            return self.distill_tokens
        return None if self.distill_minutes else DEFAULT_DISTILL_TOKENS

    def budget_overrides(self) -> dict[str, float | None]:
        return {
            "max_size_mib": self.max_size_mib,
            "max_ram_mib": self.max_ram_mib,
            "max_decode_ms_per_token": self.max_decode_ms_per_token,
            "max_ttft_ms": self.max_ttft_ms,
            "max_encode_ms": self.max_encode_ms,
        }
