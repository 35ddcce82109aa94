"""QuantScheme: the one description of a weight format, shared by quantize, QAT and the exporters.

A scheme is written ``FORMAT:TYPE`` on the command line: ``gguf:Q4_0``, ``gguf:Q8_0``, ``gguf:Q4_K_M``,
``onnx:int4``, ``onnx:int4-asym-block64``, ``onnx:int8``. For every tensor it answers: which type will
this tensor really get, and if that is not the requested one, why (a fallback). The projection in
``budget.py`` and the exporters both ask the scheme, so what is projected is what gets written.

Types we pack ourselves: GGUF F32, F16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, IQ4_NL (bit-exact with ggml,
``ggml_types.py``) and every ONNX type (``onnx_blocks.py``). K-quant mixtures (Q4_K_M, Q5_K_M, Q6_K)
are produced by llama.cpp's own quantizer from our F32 file; their projected sizes follow llama.cpp's
fallback rules and are labelled estimates until measured.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from compressor.errors import ConfigError


class PtqMethod(StrEnum):
    RTN = "rtn"  # each type's reference rule (llama.cpp without an imatrix); what QAT trains through
    WEIGHTED = "weighted"  # importance-weighted scale search per block (ggml_search)
    GPTQ = "gptq"  # the weighted search's scales, codes by GPTQ error compensation (stages/gptq.py)


class ExportFormat(StrEnum):
    GGUF = "gguf"
    ONNX = "onnx"


class TensorRole(StrEnum):
    EMBEDDING = "embedding"  # token embedding; also the output head when tied
    OUTPUT = "output"  # untied output head
    ATTENTION = "attention"
    MLP = "mlp"
    NORM = "norm"  # 1-D tensors: always F32
    BIAS = "bias"  # 1-D biases (Qwen2's q/k/v): always F32

    @property
    def vector(self) -> bool:
        """1-D tensors kept in float whatever the scheme."""
        return self in (TensorRole.NORM, TensorRole.BIAS)


# Bits per weight of each ggml type (block bytes * 8 / block elements) and its block size.
GGML_BITS: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "Q8_0": 8.5,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
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
    "IQ4_NL": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q5_1": 32,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
}
# llama.cpp's fallback when a row is not a multiple of the type's block (llama-quant.cpp).
GGML_FALLBACK: dict[str, str] = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

OWN_GGUF_TYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL")
# Types QAT can train through with the reference rule's exact fake quantizer (stages/fake_quant.py).
FAKE_QUANT_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "fp32", "int8", "int4")
# GGUF types whose block scales QAT learns (stages/learned_quant.py), exported as trained.
LEARNED_SCALE_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL")
# llama.cpp file types (enum llama_ftype) we delegate to its quantizer, and their base tensor type.
LLAMA_FTYPES: dict[str, tuple[int, str]] = {
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}


SUB_8_BIT = ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "int4")
ONNX_TYPES = ("fp32", "int8", "int4")
ONNX_FALLBACK = "fp32"


class TensorPlan(BaseModel):
    """What one tensor will be stored as."""

    model_config = ConfigDict(frozen=True)
    requested: str
    effective: str
    bits: float  # storage bits per weight of ``effective`` (scales and zero points included)
    reason: str | None = None  # set when effective != requested


class QuantScheme(BaseModel):
    """A target weight format.

    GGUF: ``weight_type`` is a ggml type or llama.cpp mixture. ONNX: ``fp32``, ``int8`` or ``int4``,
    stored blockwise along the input dimension (MatMulNBits / GatherBlockQuantized) with
    ``block_size`` elements per fp32 scale, symmetric or with a zero point per block;
    ``accuracy_level`` is onnxruntime's MatMulNBits compute type (0: fp32 activations; 4: int8
    activations, several times faster on CPU and slightly less exact). ``block_size`` 0
    (``onnx:int8-channel``) stores int8 with one scale per output channel (a block is the whole row),
    which the exporter writes for onnxruntime's integer GEMM (``MatMulIntegerToFloat`` on dynamically
    quantized activations: the fastest int8 path on x86 and Arm CPUs); other types then use 32.
    ``embedding_type`` overrides the type of the (tied) embedding and output head.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    format: ExportFormat
    weight_type: str
    embedding_type: str | None = None
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    # gguf:mixed: the types a tensor may get, and (once chosen by the quantize stage) each tensor's
    # type by weight name. Before the choice, plans assume the cheapest allowed type (a lower bound).
    mixed_types: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def is_mixed(self) -> bool:
        return self.weight_type == MIXED

    def with_overrides(self, types: dict[str, str]) -> QuantScheme:
        return self.model_copy(update={"overrides": tuple(sorted(types.items()))})

    @property
    def name(self) -> str:
        if self.is_mixed and self.format is ExportFormat.GGUF:
            types = "" if self.mixed_types == DEFAULT_MIXED_TYPES else f"[{','.join(self.mixed_types)}]"
            return f"gguf:mixed{types}"
        kind = self.weight_type
        if self.format is ExportFormat.ONNX and kind != "fp32":
            kind += "" if self.symmetric else "-asym"
            if self.per_channel:
                kind += "-channel"
            elif self.block_size != 32:
                kind += f"-block{self.block_size}"
        suffix = f"+embed={self.embedding_type}" if self.embedding_type else ""
        return f"{self.format.value}:{kind}{suffix}"

    @classmethod
    def parse(
        cls,
        spec: str,
        embedding_type: str | None = None,
        accuracy_level: int = 4,
        mixed_types: str | None = None,
    ) -> QuantScheme:
        """Parse ``gguf:Q4_0``, ``onnx:int4-asym-block64``, optionally ``+embed=TYPE``.

        Raises ConfigError naming the choices.
        """
        text = spec.strip()
        if "+embed=" in text:
            text, embedding_type = text.split("+embed=", 1)
        fmt, _, kind = text.partition(":")
        choices = ", ".join(supported_schemes())
        if fmt.lower() == ExportFormat.ONNX.value and kind:
            onnx = _parse_onnx(spec, kind, embedding_type, accuracy_level)
            if onnx.is_mixed:
                return onnx.model_copy(update={"mixed_types": _onnx_mixed_types(mixed_types)})
            return onnx
        if fmt.lower() != ExportFormat.GGUF.value or not kind:
            raise ConfigError(f"unknown quantization scheme '{spec}'; choose one of: {choices}")
        kind = kind.upper()
        if kind == MIXED.upper():
            return cls(format=ExportFormat.GGUF, weight_type=MIXED, mixed_types=_mixed_types(mixed_types))
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
    def per_channel(self) -> bool:
        return self.format is ExportFormat.ONNX and self.block_size == 0

    def block_for(self, kind: str, row_len: int) -> int:
        """Elements per scale of an ONNX tensor of ``kind`` with rows of ``row_len``."""
        if self.per_channel:
            return row_len if kind == "int8" else 32
        return self.block_size

    @property
    def learns_scales(self) -> bool:
        """Whether QAT learns this scheme's block scales (GGUF types we pack, mixed plans included)."""
        if self.format is not ExportFormat.GGUF or self.delegated_to_llama_cpp:
            return False
        if self.is_mixed:
            return True
        types = {self.requested_type(r) for r in (TensorRole.MLP, TensorRole.EMBEDDING)}
        return bool(types & set(LEARNED_SCALE_TYPES)) and types <= {*LEARNED_SCALE_TYPES, "F32", "F16"}

    @property
    def trainable(self) -> bool:
        """Whether QAT can train through this scheme: learned scales, or an exact fake quantizer of
        the reference rule for every type it writes."""
        if self.learns_scales:
            return True
        if self.delegated_to_llama_cpp or self.is_mixed:
            return False
        return all(
            self.requested_type(role) in FAKE_QUANT_TYPES for role in (TensorRole.MLP, TensorRole.EMBEDDING)
        )

    @property
    def delegated_to_llama_cpp(self) -> bool:
        return self.format is ExportFormat.GGUF and self.weight_type in LLAMA_FTYPES

    @property
    def row_multiple(self) -> int:
        """Row lengths that pack without fallback (what pruning must round widths to)."""
        if self.format is ExportFormat.ONNX:
            if self.per_channel:
                return 32 if self.embedding_type == "int4" else 1
            return 1 if self.weight_type == "fp32" else self.block_size
        if self.is_mixed:
            return max(GGML_BLOCK[t] for t in self.mixed_types)
        base = LLAMA_FTYPES[self.weight_type][1] if self.delegated_to_llama_cpp else self.weight_type
        return GGML_BLOCK[base]

    def requested_type(self, role: TensorRole) -> str:
        onnx = self.format is ExportFormat.ONNX
        if role.vector:
            return "fp32" if onnx else "F32"
        if self.is_mixed:
            return min(self.mixed_types, key=self.bits)
        if role in (TensorRole.EMBEDDING, TensorRole.OUTPUT):
            if self.embedding_type:
                return self.embedding_type
            if self.delegated_to_llama_cpp:
                return "Q6_K"  # llama.cpp's choice for the output tensor of K-quant mixtures
            # 4-bit heads hurt most; like llama.cpp, keep the (tied) head at 8 bits by default.
            eight = "int8" if onnx else "Q8_0"
            return eight if self.weight_type in SUB_8_BIT else self.weight_type
        if self.delegated_to_llama_cpp:
            return LLAMA_FTYPES[self.weight_type][1]
        return self.weight_type

    def bits(self, kind: str, row_len: int = 1024) -> float:
        """Storage bits per weight of a tensor type under this scheme (``row_len``: per-channel scales)."""
        if self.format is ExportFormat.GGUF:
            return GGML_BITS[kind]
        if kind == "fp32":
            return 32.0
        code_bits = 4 if kind == "int4" else 8
        zero_point_bits = 0 if self.symmetric or kind == "int8" else code_bits
        return code_bits + (32 + zero_point_bits) / self.block_for(kind, row_len)

    def plan(self, role: TensorRole, row_len: int, name: str | None = None) -> TensorPlan:
        """The type a tensor with rows of ``row_len`` elements will really get."""
        chosen = dict(self.overrides)
        want = chosen[name] if name in chosen else self.requested_type(role)
        if self.format is ExportFormat.ONNX:
            block = self.block_for(want, row_len)
            ok = want == "fp32" or role.vector or row_len % block == 0
            kind = want if ok else ONNX_FALLBACK
        else:
            kind, block = want, GGML_BLOCK[want]
            if row_len % block:
                kind = GGML_FALLBACK.get(kind, "F16")
                if row_len % GGML_BLOCK[kind]:
                    kind = "F16"
        if kind == want:
            return TensorPlan(requested=want, effective=want, bits=self.bits(want, row_len))
        reason = f"row length {row_len} is not a multiple of {block} required by {want}"
        return TensorPlan(requested=want, effective=kind, bits=self.bits(kind, row_len), reason=reason)


def _parse_onnx(spec: str, kind: str, embedding_type: str | None, accuracy_level: int) -> QuantScheme:
    parts = kind.lower().split("-")
    base, options = parts[0], parts[1:]
    block, symmetric, channel = 32, True, False
    for opt in options:
        if opt == "asym":
            symmetric = False
        elif opt == "channel":
            channel = True
        elif opt.startswith("block") and opt[5:].isdigit():
            block = int(opt[5:])
        else:
            raise ConfigError(f"unknown option '{opt}' in '{spec}' (allowed: -asym, -blockN, -channel)")
    if channel and (base != "int8" or not symmetric or "block" in kind):
        raise ConfigError(
            f"'-channel' in '{spec}': per-channel scales are for symmetric int8 (onnx:int8-channel)"
        )
    if base not in (*ONNX_TYPES, MIXED):
        raise ConfigError(
            f"unknown ONNX type '{base}' in '{spec}'; choose one of: {', '.join(supported_schemes())}"
        )
    if block < 16 or block & (block - 1):
        raise ConfigError(f"block size {block} in '{spec}' must be a power of two >= 16 (MatMulNBits)")
    block = 0 if channel else block
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"accuracy level {accuracy_level} must be 0..4 (onnxruntime MatMulNBits)")
    if embedding_type is not None and embedding_type.lower() not in ONNX_TYPES:
        raise ConfigError(f"embedding type '{embedding_type}' is not one of {', '.join(ONNX_TYPES)}")
    return QuantScheme(
        format=ExportFormat.ONNX,
        weight_type=base,
        block_size=block,
        symmetric=symmetric,
        accuracy_level=accuracy_level,
        embedding_type=embedding_type.lower() if embedding_type else None,
    )


MIXED = "mixed"
# --mixed-types default: every quantized type we pack exactly (F16/F32 only where rows cannot pack).
DEFAULT_MIXED_TYPES = ("IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def _mixed_types(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_MIXED_TYPES
    types = tuple(dict.fromkeys(t.strip().upper() for t in text.split(",") if t.strip()))
    bad = [t for t in types if t not in OWN_GGUF_TYPES or t in ("F32", "F16")]
    if bad or not types:
        raise ConfigError(
            f"--mixed-types {text}: {', '.join(bad) or 'empty'} not allowed; choose from "
            f"{', '.join(DEFAULT_MIXED_TYPES)}"
        )
    return types


ONNX_MIXED_TYPES = ("int4", "int8")


def _onnx_mixed_types(text: str | None) -> tuple[str, ...]:
    if not text:
        return ONNX_MIXED_TYPES
    types = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in types if t not in ONNX_MIXED_TYPES]
    if bad or not types:
        raise ConfigError(
            f"--mixed-types {text}: {', '.join(bad) or 'empty'} not allowed for onnx:mixed; choose from "
            f"{', '.join(ONNX_MIXED_TYPES)}"
        )
    return types


def supported_schemes() -> list[str]:
    gguf = [f"gguf:{t}" for t in (*OWN_GGUF_TYPES, *LLAMA_FTYPES, MIXED)]
    return [
        *gguf,
        "onnx:fp32",
        "onnx:int8",
        "onnx:int8-channel",
        "onnx:int4",
        "onnx:int4-asym",
        "onnx:int4-block64",
        "onnx:mixed",
    ]
