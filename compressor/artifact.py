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
    """Shape facts of a decoder-only transformer, read from its config (uniform across layers)."""

    model_config = ConfigDict(frozen=True)
    architecture: str
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

    def kv_cache_bytes(self, context_length: int, bytes_per_value: float = 2.0) -> float:
        """K and V for every layer at ``context_length`` (llama.cpp's default cache type is F16)."""
        return 2 * self.n_layers * context_length * self.n_kv_heads * self.head_dim * bytes_per_value


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

    def evolve(self, step: str, **changes: Any) -> ModelArtifact:
        return dataclasses.replace(self, lineage=(*self.lineage, step), **changes)


def weight_role(name: str) -> TensorRole:
    """Role of a parameter of a llama-style causal LM, by its name."""
    if name.endswith("embed_tokens.weight"):
        return TensorRole.EMBEDDING
    if name.startswith("lm_head"):
        return TensorRole.OUTPUT
    if ".self_attn." in name:
        return TensorRole.ATTENTION
    if ".mlp." in name:
        return TensorRole.MLP
    return TensorRole.NORM


def weight_inventory(model: Any) -> list[WeightInfo]:
    """Every stored weight (tied ones once) with its shape and role."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.append(WeightInfo(name=name, shape=tuple(p.shape), role=weight_role(name)))
    return out


def facts_from_config(config: Any, n_params: int, architecture: str | None = None) -> ModelFacts:
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return ModelFacts(
        architecture=architecture or (config.architectures or [type(config).__name__])[0],
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        n_params=n_params,
        max_context=getattr(config, "max_position_embeddings", 2048),
    )
