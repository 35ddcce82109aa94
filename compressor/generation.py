"""Generation defaults an app needs next to the weights: stop tokens, context length, sampling.

Sampling defaults come from the source model when it names any — an HF directory's
``generation_config.json`` (only the values it sets, not transformers' class defaults) or a source
GGUF's ``general.sampling.*`` keys — and otherwise are llama.cpp's own defaults (``common.h``:
temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition penalty), which is what a llama.cpp
app would use anyway. ``source`` says which. The same values go into the GGUF's ``general.sampling.*``
keys, the bundle's ``generation.json`` and onnxruntime-genai's ``search`` section.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

LLAMA_CPP_DEFAULTS = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repetition_penalty": 1.0,
}
GGUF_KEYS = {  # general.sampling.<key> -> our field
    "temp": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "penalty_repeat": "repetition_penalty",
}


class Sampling(BaseModel):
    """Sampling defaults for chat; an app may override every one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = Field(ge=0.0)
    top_k: int = Field(ge=0)
    top_p: float = Field(ge=0.0, le=1.0)
    min_p: float = Field(ge=0.0, le=1.0)
    repetition_penalty: float = Field(gt=0.0)
    source: str = Field(description="where these values come from")

    def gguf_fields(self) -> dict[str, float | int]:
        """``general.sampling.*`` key suffix -> value."""
        return {key: getattr(self, ours) for key, ours in GGUF_KEYS.items()}


def sampling_from_gguf(fields: dict[str, Any]) -> Sampling:
    found = {
        ours: fields[f"general.sampling.{key}"]
        for key, ours in GGUF_KEYS.items()
        if isinstance(fields.get(f"general.sampling.{key}"), int | float)
    }
    source = (
        "general.sampling.* of the source GGUF" if found else "llama.cpp's defaults (the source sets none)"
    )
    return Sampling(**{**LLAMA_CPP_DEFAULTS, **found}, source=source)


def sampling_from_generation_config(config: Any) -> Sampling:
    """From a transformers ``GenerationConfig``: only the values its file set. A file that sets
    ``do_sample: false`` asks for greedy decoding (temperature 0)."""
    try:
        diff = config.to_diff_dict() if config is not None else {}
    except Exception:
        diff = {}
    found = {
        k: diff[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty") if k in diff
    }
    found = {k: v for k, v in found.items() if isinstance(v, int | float)}
    if diff.get("do_sample") is False:
        found["temperature"] = 0.0
    source = (
        "generation_config.json of the source model"
        if found
        else "llama.cpp's defaults (the source sets none)"
    )
    return Sampling(**{**LLAMA_CPP_DEFAULTS, **found}, source=source)


class Generation(BaseModel):
    """What an app needs to run the model as it was measured: tokens, context, template, sampling."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bos_token_id: int | None
    eos_token_ids: list[int] = Field(description="generation stops at any of these")
    pad_token_id: int | None
    add_bos_token: bool
    context_length: int = Field(gt=0, description="the context the budgets were judged at")
    max_context: int = Field(gt=0, description="the most the model was trained for")
    chat_template: str | None = Field(description="Jinja2, as in tokenizer_config.json")
    sampling: Sampling
