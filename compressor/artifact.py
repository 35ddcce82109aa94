"""ModelArtifact: the model in memory, its shape facts, its precision and quant scheme, and its lineage.

Stages take an artifact and return a new one (``dataclasses.replace``); nothing here touches disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from compressor.arch import ArchSpec, identify, spec_for
from compressor.arch.config_keys import get, head_dim, layer_windows
from compressor.errors import ModelLoadError
from compressor.generation import Sampling
from compressor.quant import QuantScheme, TensorRole
from compressor.vocab import GGUFVocab


class SourceKind(StrEnum):
    HF_DIR = "hf-dir"
    GGUF = "gguf"
    BUILTIN = "builtin"


class ModelSource(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: SourceKind
    path: str
    name: str  # what the user typed
    sha256: str | None = None


class ModelFacts(BaseModel):
    """Shape facts of a decoder-only transformer, read from its config through its family's spec
    (uniform across layers, except which layers use a sliding window)."""

    model_config = ConfigDict(frozen=True)
    architecture: str
    family: str = ""  # the registry entry (compressor.arch)
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    n_params: int
    max_context: int
    layer_windows: tuple[int, ...] = ()  # per layer: sliding-window size, 0 = whole context
    task: str = ""  # encoders: "embedding" or "classification" (compressor.encoder.Task); "" = decoder
    n_labels: int = 0  # classifiers: number of output labels

    @property
    def is_encoder(self) -> bool:
        return bool(self.task)

    def kv_cache_bytes(self, context_length: int, bytes_per_value: float = 2.0) -> float:
        """K and V for every layer at ``context_length`` (llama.cpp's default cache type is F16);
        a sliding-window layer holds only its window. Encoders keep no cache."""
        if self.is_encoder:
            return 0.0
        return kv_cache_bytes(
            self.layer_windows or (0,) * self.n_layers,
            self.n_kv_heads * self.head_dim,
            context_length,
            bytes_per_value,
        )


def kv_cache_bytes(
    windows: tuple[int, ...] | list[int], kv_width: int, context_length: int, bytes_per_value: float
) -> float:
    """K and V bytes of a cache at ``context_length``: per layer min(context, window) positions of
    ``kv_width`` (= KV heads x head_dim) values each. The one KV formula (budget, GGUF, ONNX)."""
    positions = sum(min(context_length, w) if w > 0 else context_length for w in windows)
    return 2.0 * positions * kv_width * bytes_per_value


@dataclass(frozen=True)
class WeightInfo:
    name: str  # parameter name in the torch model
    shape: tuple[int, ...]
    role: TensorRole

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def row_len(self) -> int:
        return self.shape[-1]


@dataclass(frozen=True)
class QuantizedTensor:
    """One weight exactly as it will be written: ``kind`` is the effective type of its plan;
    ``data`` is the packed ggml blocks (rows, bytes_per_row) for GGUF types, or an
    ``onnx_blocks.BlockQuant`` for ONNX types."""

    kind: str
    shape: tuple[int, ...]
    data: Any


@dataclass(frozen=True)
class LearnedQuant:
    """The blocks QAT trained for one scheme (a mixed plan already resolved): weight name -> ggml
    ``Blocks`` with the trained scales and codes."""

    scheme: QuantScheme
    blocks: dict[str, Any]


@dataclass(frozen=True)
class ModelArtifact:
    model: Any  # transformers PreTrainedModel (kept Any so core does not import torch types eagerly)
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    facts: ModelFacts
    source: ModelSource
    precision: str = "float32"
    scheme: QuantScheme | None = None
    quantized: dict[str, QuantizedTensor] = field(default_factory=dict)
    # Tokenizer as llama.cpp stores it: copied from a source GGUF (the exact route) or derived from
    # the HF tokenizer. Exporters write it; the HF tokenizer above tokenizes identically.
    vocab: GGUFVocab | None = None
    lineage: tuple[str, ...] = ()
    learned: LearnedQuant | None = None  # blocks QAT trained; the quantize stage writes them as they are
    sampling: Sampling | None = None  # the source's sampling defaults (compressor.generation)
    stop_ids: tuple[int, ...] = ()  # every token generation stops at (the vocab's eos first)

    def evolve(self, step: str, **changes: Any) -> ModelArtifact:
        return dataclasses.replace(self, lineage=(*self.lineage, step), **changes)


def weight_role(spec: ArchSpec, name: str) -> TensorRole:
    """Role of parameter ``name`` of a model of family ``spec``, from its tensor table."""
    tid = identify(spec, name)
    if tid is None:
        raise ModelLoadError(
            f"parameter '{name}' is not in the {spec.family} tensor table; "
            "this checkpoint has weights the family spec does not know"
        )
    return tid.role


def weight_inventory(model: Any) -> list[WeightInfo]:
    """Every stored weight (tied ones once) with its shape and role."""
    spec = spec_for(model)
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.append(WeightInfo(name=name, shape=tuple(p.shape), role=weight_role(spec, name)))
    return out


def facts_from_config(config: Any, n_params: int, architecture: str | None = None) -> ModelFacts:
    spec = spec_for(config)
    k = spec.keys
    n_heads = int(get(config, k.n_heads))
    return ModelFacts(
        architecture=architecture or (getattr(config, "architectures", None) or [spec.hf_class])[0],
        family=spec.family,
        n_layers=int(get(config, k.n_layers)),
        hidden_size=int(get(config, k.hidden)),
        n_heads=n_heads,
        n_kv_heads=int(get(config, k.n_kv_heads, n_heads)),
        head_dim=head_dim(k, config),
        intermediate_size=int(get(config, k.mlp)),
        vocab_size=int(get(config, k.vocab)),
        tied_embeddings=bool(get(config, k.tied, False)),
        n_params=n_params,
        max_context=int(get(config, k.max_context, 2048)),
        layer_windows=layer_windows(k, config),
    )
