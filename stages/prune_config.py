"""PruneConfig: what to keep, parsed from ``--prune heads=6,kv_heads=3,mlp=1024,layers=24``.

Each value is an absolute count (an integer >= 1) or a ratio of the original to keep (0 < r < 1).
``resolve`` checks a config against a model's shape before any work and reports every problem at
once: a ratio outside (0, 1), removing all heads, a head count that breaks grouped-query attention,
an MLP width that is not a multiple of what the target formats pack (32 for Q4_0/Q8_0 blocks, 256
for K-quants, the MatMulNBits block for ONNX), more than the model has.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from compressor.arch import ARCHITECTURES
from compressor.artifact import ModelFacts
from compressor.errors import ConfigError
from stages.importance import Importance

# Every registered family prunes (the tensor table says where each head's and channel's rows are)
SUPPORTED_ARCHITECTURES = tuple(spec.hf_class for spec in ARCHITECTURES.values())
KEYS = ("heads", "kv_heads", "mlp", "layers")


class PruneConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    heads: float | None = None  # query heads to keep (count or ratio)
    kv_heads: float | None = None  # KV heads (whole groups) to keep
    mlp: float | None = None  # MLP channels to keep
    layers: float | None = None  # decoder layers to keep
    importance: Importance = Importance.ACTIVATION
    seed: int = 0

    @classmethod
    def parse(cls, text: str, importance: str = "activation", require: bool = False) -> PruneConfig:
        """Parse a spec, checking every value's range (the model-dependent checks are ``resolve``'s).

        ``require``: an empty spec (``''``, ``',,,'``) is an error rather than "prune nothing".
        """
        values: dict[str, float] = {}
        problems = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in KEYS:
                problems.append(f"'{part}': unknown key (use {', '.join(KEYS)})")
                continue
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"'{part}': '{raw}' is not a number")
                continue
            if key in values:
                problems.append(f"'{part}': {key} is given twice")
            elif (why := _value_problem(key, value)) is not None:
                problems.append(why)
            else:
                values[key] = value
        if require and not values and not problems:
            problems.append(
                f"nothing to prune; give e.g. heads=6,kv_heads=3,mlp=1024 or 'auto' (keys: {', '.join(KEYS)})"
            )
        try:
            method = Importance(importance)
        except ValueError:
            problems.append(f"importance '{importance}': choose {', '.join(m.value for m in Importance)}")
            method = Importance.ACTIVATION
        if problems:
            raise ConfigError(f"invalid --prune '{text}'", problems)
        return cls.model_validate({**values, "importance": method})


def _value_problem(name: str, value: float) -> str | None:
    """Why ``value`` cannot be a count or ratio for ``name``, or None."""
    if not math.isfinite(value) or value <= 0:
        return f"{name}={value:g}: must be a count >= 1 or a ratio in (0, 1); removing all is not allowed"
    if value > 1 and value != int(value):
        return f"{name}={value:g}: a ratio must lie in (0, 1); a count must be a whole number"
    return None


class ResolvedPrune(BaseModel):
    model_config = ConfigDict(frozen=True)
    q_per_group: int
    kv_heads: int
    mlp: int
    layers: int

    @property
    def heads(self) -> int:
        return self.q_per_group * self.kv_heads


def _count(name: str, value: float | None, full: int, problems: list[str]) -> int:
    if value is None:
        return full
    if value <= 0:
        problems.append(
            f"{name}={value:g}: must be a count >= 1 or a ratio in (0, 1); removing all is not allowed"
        )
        return full
    if value < 1:
        return max(1, int(full * value))
    if value != int(value):
        problems.append(f"{name}={value:g}: a ratio must lie in (0, 1); a count must be a whole number")
        return full
    if value > full:
        problems.append(f"{name}={int(value)}: the model has only {full}")
    return int(value)


def resolve(cfg: PruneConfig, facts: ModelFacts, row_multiple: int) -> ResolvedPrune:
    """Absolute, legal targets for this model, or one ConfigError listing every problem."""
    problems: list[str] = []
    if facts.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"pruning {facts.architecture} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    group = facts.n_heads // facts.n_kv_heads
    kv = _count("kv_heads", cfg.kv_heads, facts.n_kv_heads, problems)
    heads = _count("heads", cfg.heads, facts.n_heads, problems)
    if cfg.heads is not None and cfg.heads < 1 and not problems:
        heads = max(kv, heads - heads % kv)  # a ratio rounds down to whole groups
    if heads % kv:
        problems.append(f"heads={heads} is not a multiple of kv_heads={kv} (grouped-query attention)")
    elif heads // kv > group:
        problems.append(f"heads={heads} over kv_heads={kv} is {heads // kv} per group; the model has {group}")
    mlp = _count("mlp", cfg.mlp, facts.intermediate_size, problems)
    if cfg.mlp is not None and cfg.mlp < 1:
        mlp = max(row_multiple, mlp - mlp % row_multiple)  # a ratio rounds down to a legal width
    elif mlp % row_multiple:
        lo = mlp - mlp % row_multiple
        problems.append(
            f"mlp={mlp} is not a multiple of {row_multiple}, which the target formats need to pack whole "
            f"blocks; use {lo} or {lo + row_multiple}"
        )
    layers = _count("layers", cfg.layers, facts.n_layers, problems)
    if problems:
        raise ConfigError("invalid pruning request", problems)
    return ResolvedPrune(q_per_group=heads // kv, kv_heads=kv, mlp=mlp, layers=layers)
