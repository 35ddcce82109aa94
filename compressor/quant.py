"""QuantScheme: the one description of a weight format, shared by quantize, QAT and the exporters.

A scheme is written ``FORMAT:TYPE`` on the command line, e.g. ``gguf:Q4_0``, ``gguf:Q8_0``,
``gguf:Q4_K_M``. For every tensor it answers: which type will this tensor really get, and if that is
not the requested one, why (a fallback). The projection in ``budget.py`` and the exporters both ask
the scheme, so what is projected is what gets written.

Types we pack ourselves (bit-exact with ggml, see ``ggml_blocks.py``): F32, F16, Q8_0, Q4_0.
K-quant mixtures (Q4_K_M, Q5_K_M, Q6_K) are produced by llama.cpp's own quantizer from our F32 file;
their projected sizes follow llama.cpp's fallback rules and are labelled estimates until measured.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from compressor.errors import ConfigError


class ExportFormat(StrEnum):
    GGUF = "gguf"
    ONNX = "onnx"


class TensorRole(StrEnum):
    EMBEDDING = "embedding"  # token embedding; also the output head when tied
    OUTPUT = "output"  # untied output head
    ATTENTION = "attention"
    MLP = "mlp"
    NORM = "norm"  # 1-D tensors: always F32


# Bits per weight of each ggml type (block bytes * 8 / block elements) and its block size.
GGML_BITS: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "Q8_0": 8.5,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q4_K": 4.5,
    "Q5_K": 5.5,
    "Q6_K": 6.5625,
}
GGML_BLOCK: dict[str, int] = {
    "F32": 1,
    "F16": 1,
    "Q8_0": 32,
    "Q4_0": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q5_1": 32,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
}
# llama.cpp's fallback when a row is not a multiple of the type's block (llama-quant.cpp).
GGML_FALLBACK: dict[str, str] = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

OWN_GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0")
# llama.cpp file types (enum llama_ftype) we delegate to its quantizer, and their base tensor type.
LLAMA_FTYPES: dict[str, tuple[int, str]] = {
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}


class TensorPlan(BaseModel):
    """What one tensor will be stored as."""

    model_config = ConfigDict(frozen=True)
    requested: str
    effective: str
    reason: str | None = None  # set when effective != requested


class QuantScheme(BaseModel):
    """A target weight format. ``embedding_type`` overrides the type of the (tied) embedding."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    format: ExportFormat
    weight_type: str
    embedding_type: str | None = None

    @property
    def name(self) -> str:
        suffix = f"+embed={self.embedding_type}" if self.embedding_type else ""
        return f"{self.format.value}:{self.weight_type}{suffix}"

    @classmethod
    def parse(cls, spec: str, embedding_type: str | None = None) -> QuantScheme:
        """Parse ``gguf:Q4_0`` (optionally ``gguf:Q4_0+embed=Q8_0``); raise ConfigError listing choices."""
        text = spec.strip()
        if "+embed=" in text:
            text, embedding_type = text.split("+embed=", 1)
        fmt, _, kind = text.partition(":")
        choices = ", ".join(supported_schemes())
        if fmt.lower() != ExportFormat.GGUF.value or not kind:
            raise ConfigError(f"unknown quantization scheme '{spec}'; choose one of: {choices}")
        kind = kind.upper()
        if kind not in OWN_GGUF_TYPES and kind not in LLAMA_FTYPES:
            raise ConfigError(f"unknown GGUF type '{kind}' in '{spec}'; choose one of: {choices}")
        if embedding_type is not None:
            embedding_type = embedding_type.upper()
            if embedding_type not in OWN_GGUF_TYPES:
                raise ConfigError(
                    f"embedding type '{embedding_type}' is not one of {', '.join(OWN_GGUF_TYPES)}"
                )
        return cls(format=ExportFormat.GGUF, weight_type=kind, embedding_type=embedding_type)

    @property
    def delegated_to_llama_cpp(self) -> bool:
        return self.weight_type in LLAMA_FTYPES

    @property
    def row_multiple(self) -> int:
        """Row lengths that pack without fallback (what pruning must round widths to)."""
        base = LLAMA_FTYPES[self.weight_type][1] if self.delegated_to_llama_cpp else self.weight_type
        return GGML_BLOCK[base]

    def requested_type(self, role: TensorRole) -> str:
        if role is TensorRole.NORM:
            return "F32"
        if role in (TensorRole.EMBEDDING, TensorRole.OUTPUT):
            if self.embedding_type:
                return self.embedding_type
            if self.delegated_to_llama_cpp:
                return "Q6_K"  # llama.cpp's choice for the output tensor of K-quant mixtures
            # 4-bit heads hurt most; like llama.cpp, keep the (tied) head at 8 bits by default.
            return "Q8_0" if self.weight_type == "Q4_0" else self.weight_type
        if self.delegated_to_llama_cpp:
            return LLAMA_FTYPES[self.weight_type][1]
        return self.weight_type

    def plan(self, role: TensorRole, row_len: int) -> TensorPlan:
        """The type a tensor with rows of ``row_len`` elements will really get."""
        want = self.requested_type(role)
        kind = want
        if row_len % GGML_BLOCK[kind]:
            kind = GGML_FALLBACK.get(kind, "F16")
            if row_len % GGML_BLOCK[kind]:
                kind = "F16"
        if kind == want:
            return TensorPlan(requested=want, effective=want)
        reason = f"row length {row_len} is not a multiple of {GGML_BLOCK[want]} required by {want}"
        return TensorPlan(requested=want, effective=kind, reason=reason)


def supported_schemes() -> list[str]:
    return [f"gguf:{t}" for t in (*OWN_GGUF_TYPES, *LLAMA_FTYPES)]
