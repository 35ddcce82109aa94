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

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Ratio = Annotated[float, Field(gt=0, le=1)]


class Engine(StrEnum):
    LLAMA_CPP = "llama.cpp"
    ONNXRUNTIME = "onnxruntime"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeakCompute(_Strict):
    """Peak arithmetic throughput of the cores the runtime uses, in GFLOP/s (GOP/s for int8)."""

    fp32_gflops: Positive
    fp16_gflops: Positive | None = None
    int8_gops: Positive | None = None


class Hardware(_Strict):
    cpu: str
    cores: PositiveInt
    ram_mib: PositiveInt
    memory_bandwidth_gbps: Positive  # sustained (or theoretical peak, then see efficiency below)
    bandwidth_efficiency_ratio: Ratio = 0.7  # fraction of memory_bandwidth_gbps decode really reaches
    compute_efficiency_ratio: Ratio = 0.3  # fraction of peak compute prompt processing reaches
    peak: PeakCompute


class Runtime(_Strict):
    engine: Engine = Engine.LLAMA_CPP
    threads: PositiveInt
    context_length: PositiveInt = 2048
    overhead_mib: Annotated[float, Field(ge=0)] = 64.0  # runtime code, compute buffers, allocator slack
    per_token_overhead_ms: Annotated[float, Field(ge=0)] = 0.5  # graph launch / sampling per token


class Budgets(_Strict):
    """Limits the deployed model must meet. Leave one out to not check it."""

    max_size_mib: Positive | None = None
    max_ram_mib: Positive | None = None  # peak RAM at the profile's context: weights + KV + overhead
    max_decode_ms_per_token: Positive | None = None
    max_ttft_ms: Positive | None = None
    ttft_prompt_tokens: PositiveInt = 128


class DeviceProfile(_Strict):
    name: str
    description: str
    hardware: Hardware
    runtime: Runtime
    budgets: Budgets
    source_path: str | None = None

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


def load_profile(name_or_path: str) -> DeviceProfile:
    """Load a shipped profile by name (``raspberry-pi-5``) or any profile by path (``my.toml``)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ProfileError(f"device profile file {path} does not exist")
        return parse_profile(path.read_text(encoding="utf-8"), str(path))
    shipped = _shipped()
    if name_or_path not in shipped:
        raise ProfileError(
            f"unknown device profile '{name_or_path}'; known profiles: {', '.join(sorted(shipped))} "
            "(or pass the path of a .toml file)"
        )
    return parse_profile(shipped[name_or_path].read_text(encoding="utf-8"), f"{name_or_path}.toml")
