"""Device profiles: the hardware a model must fit, the runtime it runs in, and the budgets it must meet.

Profiles are TOML files. The shipped ones live in the ``device_profiles`` package (so they are found
from a wheel as well as from a checkout); any other path ending in ``.toml`` works too. Every field is
validated at load time and all problems are reported at once, each with its field path.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from compressor.errors import ProfileError
from compressor.paths import unreachable

# Upper bounds are physical sense, not taste: they catch a typo (1e18 tokens, "inf" GB/s) at load time
# instead of deep inside a runtime. Each is far beyond any device this tool targets.
PositiveInt = Annotated[int, Field(gt=0)]
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Cores = Annotated[int, Field(gt=0, le=4096)]
RamMiB = Annotated[int, Field(gt=0, le=64 * 1024 * 1024)]  # 64 TiB
BandwidthGBps = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)]  # HBM3e is ~8,000
Gflops = Annotated[float, Field(gt=0, le=1e8, allow_inf_nan=False)]  # 100 PFLOP/s
Tokens = Annotated[int, Field(gt=0, le=10_485_760)]  # 10 Mi tokens
Milliseconds = Annotated[float, Field(ge=0, le=3_600_000, allow_inf_nan=False)]  # an hour
MiB = Annotated[float, Field(ge=0, le=64 * 1024 * 1024, allow_inf_nan=False)]
TokensPerSecond = Annotated[float, Field(gt=0, le=1e7, allow_inf_nan=False)]
BillionParams = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)]  # 100 T parameters


class Engine(StrEnum):
    LLAMA_CPP = "llama.cpp"
    ONNXRUNTIME = "onnxruntime"
    ONNXRUNTIME_GENAI = "onnxruntime-genai"  # the ONNX model driven by onnxruntime-genai's generator (apps)


class MeasuredBackend(StrEnum):
    """Where the published run did its matrix work (llama-bench's ``backend`` column)."""

    CPU = "CPU"
    CUDA = "CUDA"
    METAL = "Metal"
    VULKAN = "Vulkan"
    OPENCL = "OpenCL"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeakCompute(_Strict):
    """Peak arithmetic throughput of the cores the runtime uses, in GFLOP/s (GOP/s for int8)."""

    fp32_gflops: Gflops
    fp16_gflops: Gflops | None = None
    int8_gops: Gflops | None = None


class Hardware(_Strict):
    cpu: str
    cores: Cores
    ram_mib: RamMiB
    memory_bandwidth_gbps: BandwidthGBps  # sustained (or theoretical peak, then see efficiency below)
    bandwidth_efficiency_ratio: Ratio = 0.7  # fraction of memory_bandwidth_gbps decode really reaches
    compute_efficiency_ratio: Ratio = 0.3  # fraction of peak compute prompt processing reaches
    peak: PeakCompute


class Runtime(_Strict):
    engine: Engine = Engine.LLAMA_CPP
    threads: Cores
    context_length: Tokens = 2048
    overhead_mib: MiB = 64.0  # runtime code, compute buffers, allocator slack
    per_token_overhead_ms: Milliseconds = 0.5  # graph launch / sampling per token


class Budgets(_Strict):
    """Limits the deployed model must meet. Leave one out to not check it."""

    max_size_mib: Annotated[MiB, Field(gt=0)] | None = None
    max_ram_mib: Annotated[MiB, Field(gt=0)] | None = None  # peak RAM at the context: weights+KV+overhead
    max_decode_ms_per_token: Annotated[Milliseconds, Field(gt=0)] | None = None
    max_ttft_ms: Annotated[Milliseconds, Field(gt=0)] | None = None
    ttft_prompt_tokens: Tokens = 128
    # encoders (embedding / classification models): one batch of encode_batch inputs of encode_tokens
    # tokens each, the latency an app waits for; decode and TTFT budgets do not apply to them
    max_encode_ms: Annotated[Milliseconds, Field(gt=0)] | None = None
    encode_batch: Annotated[int, Field(gt=0, le=4096)] = 8
    encode_tokens: Annotated[int, Field(gt=0, le=8192)] = 128


class Measurement(_Strict):
    """One published llama-bench style run on this device, replayed by the tests through the latency
    model (``budget.published_cost`` + ``budget.roofline_ms``) to keep the profile's figures honest.

    The file's bytes are what decode streams per token; ``params_b`` sets the FLOPs of a token."""

    model: Annotated[str, Field(min_length=1)]  # e.g. "Llama 3.2 3B Instruct"
    quant: Annotated[str, Field(min_length=1)]  # the file's type as llama-bench prints it, e.g. "Q4_K_M"
    params_b: BillionParams  # llama-bench "params" column, in billions
    file_mib: Annotated[MiB, Field(gt=0)]  # llama-bench "size" column, MiB (GiB x 1024)
    backend: MeasuredBackend = MeasuredBackend.CPU
    threads: Cores
    tg_tokens_per_s: TokensPerSecond  # token generation (llama-bench tgN)
    tg_tokens: Tokens = 128
    pp_tokens_per_s: TokensPerSecond | None = None  # prompt processing (llama-bench ppN), if published
    pp_tokens: Tokens = 512
    # where it was published and what the page says: the URL first, then a note
    source: Annotated[str, Field(pattern=r"^https?://\S+")]


class DeviceProfile(_Strict):
    name: str
    description: str
    hardware: Hardware
    runtime: Runtime
    budgets: Budgets
    # published runs the latency figures above were fitted to; none = the figures are assumptions
    measurements: tuple[Measurement, ...] = ()
    source_path: str | None = None

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        problems = []
        if self.budgets.ttft_prompt_tokens > self.runtime.context_length:
            problems.append(
                f"budgets.ttft_prompt_tokens ({self.budgets.ttft_prompt_tokens}) exceeds "
                f"runtime.context_length ({self.runtime.context_length})"
            )
        if self.runtime.overhead_mib >= self.hardware.ram_mib:
            problems.append(
                f"runtime.overhead_mib ({self.runtime.overhead_mib:g}) is not below "
                f"hardware.ram_mib ({self.hardware.ram_mib})"
            )
        for i, m in enumerate(self.measurements):
            if m.threads > self.hardware.cores:
                problems.append(
                    f"measurements.{i}.threads ({m.threads}) exceeds hardware.cores ({self.hardware.cores})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def check_context(self, model_max_context: int | None, model: str) -> None:
        """The profile's context must fit the model's (known only once the model is loaded)."""
        ctx = self.runtime.context_length
        if model_max_context and ctx > model_max_context:
            raise ProfileError(
                f"device profile {self.source_path or self.name}: runtime.context_length {ctx} exceeds "
                f"what {model} supports ({model_max_context} tokens); lower it to at most {model_max_context}"
            )

    def with_budgets(self, **overrides: float | None) -> DeviceProfile:
        """A copy whose budgets are replaced by the given non-None values (validated)."""
        values = self.budgets.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            budgets = Budgets.model_validate(values)
        except pydantic.ValidationError as exc:
            raise ProfileError("invalid budget override", _problems(exc)) from None
        return self.model_copy(update={"budgets": budgets})


def _problems(exc: pydantic.ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        bad = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        out.append(f"{loc}: {err['msg']}{bad}")
    return out


def _shipped() -> dict[str, resources.abc.Traversable]:
    root = resources.files("device_profiles")
    return {p.name.removesuffix(".toml"): p for p in root.iterdir() if p.name.endswith(".toml")}


def profile_names() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    return sorted(_shipped())


def parse_profile(text: str, origin: str) -> DeviceProfile:
    """Validate TOML text as a profile; ``origin`` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"device profile {origin} is not valid TOML: {exc}") from None
    try:
        return DeviceProfile.model_validate({**data, "source_path": origin})
    except pydantic.ValidationError as exc:
        raise ProfileError(
            f"device profile {origin} is invalid (fix these fields; see device_profiles/README.md)",
            _problems(exc),
        ) from None


def _read_text(path: Path) -> str:
    """A profile file's text, or a ProfileError saying exactly why it cannot be read."""
    if (why := unreachable(path)) is not None:
        raise ProfileError(f"device profile file {path} {why}")
    if path.is_dir():
        raise ProfileError(f"device profile {path} is a directory; give a .toml file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"device profile file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"device profile {path} is not UTF-8 text (byte {exc.start}); TOML files are UTF-8, "
            "so save it as UTF-8"
        ) from None


def load_profile(name_or_path: str) -> DeviceProfile:
    """Load a shipped profile by name (``raspberry-pi-5``) or any profile by path (``my.toml``)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        return parse_profile(_read_text(path), str(path))
    shipped = _shipped()
    if name_or_path not in shipped:
        raise ProfileError(
            f"unknown device profile '{name_or_path}'; known profiles: {', '.join(sorted(shipped))} "
            "(or pass the path of a .toml file)"
        )
    return parse_profile(shipped[name_or_path].read_text(encoding="utf-8"), f"{name_or_path}.toml")
