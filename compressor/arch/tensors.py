"""The tensor-role table: per family, which module holds which slot; and what each slot is.

One table drives the weight roles (quantization plan, budget), the pruning groups (which rows or
columns go with a head or an MLP channel) and the GGUF tensor names (through gguf-py's own
``MODEL_TENSOR`` names, so llama.cpp's naming is not restated here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compressor.arch.spec import Slot, TensorRule
from compressor.quant import TensorRole

if TYPE_CHECKING:
    from compressor.arch.spec import ArchSpec

_G = False  # rule from the model root, not inside a layer

DECODER_ENDS = (
    TensorRule("model.embed_tokens", Slot.EMBED, _G),
    TensorRule("model.norm", Slot.FINAL_NORM, _G),
    TensorRule("lm_head", Slot.HEAD, _G),
)
SPLIT_ATTENTION = (
    TensorRule("self_attn.q_proj", Slot.Q),
    TensorRule("self_attn.k_proj", Slot.K),
    TensorRule("self_attn.v_proj", Slot.V),
    TensorRule("self_attn.o_proj", Slot.O),
)
QK_NORMS = (TensorRule("self_attn.q_norm", Slot.Q_NORM), TensorRule("self_attn.k_norm", Slot.K_NORM))
GATED_MLP = (
    TensorRule("mlp.gate_proj", Slot.GATE),
    TensorRule("mlp.up_proj", Slot.UP),
    TensorRule("mlp.down_proj", Slot.DOWN),
)
PRE_NORMS = (
    TensorRule("input_layernorm", Slot.ATTN_NORM),
    TensorRule("post_attention_layernorm", Slot.MLP_NORM),  # HF's name; it feeds the MLP
)

LLAMA = DECODER_ENDS + PRE_NORMS + SPLIT_ATTENTION + GATED_MLP
QWEN3 = LLAMA + QK_NORMS
GEMMA3 = (
    DECODER_ENDS
    + SPLIT_ATTENTION
    + QK_NORMS
    + GATED_MLP
    + (
        TensorRule("input_layernorm", Slot.ATTN_NORM),
        TensorRule("post_attention_layernorm", Slot.ATTN_POST_NORM),
        TensorRule("pre_feedforward_layernorm", Slot.MLP_NORM),
        TensorRule("post_feedforward_layernorm", Slot.MLP_POST_NORM),
    )
)
PHI3 = (
    DECODER_ENDS
    + PRE_NORMS
    + (
        TensorRule("self_attn.qkv_proj", Slot.QKV),
        TensorRule("self_attn.o_proj", Slot.O),
        TensorRule("mlp.gate_up_proj", Slot.GATE_UP),
        TensorRule("mlp.down_proj", Slot.DOWN),
    )
)


# BERT-family encoders (names relative to the task model: ``bert.`` + the base model's names)
def _encoder(prefix: str, classifier: tuple[TensorRule, ...]) -> tuple[TensorRule, ...]:
    emb = f"{prefix}.embeddings"
    return (
        TensorRule(f"{emb}.word_embeddings", Slot.EMBED, _G),
        TensorRule(f"{emb}.position_embeddings", Slot.POS_EMBED, _G),
        TensorRule(f"{emb}.token_type_embeddings", Slot.TYPE_EMBED, _G),
        TensorRule(f"{emb}.LayerNorm", Slot.EMBED_NORM, _G),
        TensorRule("attention.self.query", Slot.Q),
        TensorRule("attention.self.key", Slot.K),
        TensorRule("attention.self.value", Slot.V),
        TensorRule("attention.output.dense", Slot.O),
        TensorRule("attention.output.LayerNorm", Slot.ATTN_OUT_NORM),
        TensorRule("intermediate.dense", Slot.UP),
        TensorRule("output.dense", Slot.DOWN),
        TensorRule("output.LayerNorm", Slot.LAYER_OUT_NORM),
        TensorRule(f"{prefix}.pooler.dense", Slot.POOLER, _G),
        *classifier,
    )


BERT = _encoder("bert", (TensorRule("classifier", Slot.CLASSIFIER, _G),))
ROBERTA = _encoder(
    "roberta",
    (
        TensorRule("classifier.dense", Slot.CLASSIFIER, _G),
        TensorRule("classifier.out_proj", Slot.CLASSIFIER, _G),
    ),
)

ROLES: dict[Slot, TensorRole] = {
    Slot.EMBED: TensorRole.EMBEDDING,
    Slot.HEAD: TensorRole.OUTPUT,
    Slot.POS_EMBED: TensorRole.EMBEDDING,
    Slot.TYPE_EMBED: TensorRole.EMBEDDING,
    Slot.POOLER: TensorRole.OUTPUT,
    Slot.CLASSIFIER: TensorRole.OUTPUT,
    **{s: TensorRole.ATTENTION for s in (Slot.Q, Slot.K, Slot.V, Slot.QKV, Slot.O)},
    **{s: TensorRole.MLP for s in (Slot.GATE, Slot.UP, Slot.GATE_UP, Slot.DOWN)},
    **{
        s: TensorRole.NORM
        for s in (
            Slot.FINAL_NORM,
            Slot.ATTN_NORM,
            Slot.ATTN_POST_NORM,
            Slot.MLP_NORM,
            Slot.MLP_POST_NORM,
            Slot.Q_NORM,
            Slot.K_NORM,
            Slot.EMBED_NORM,
            Slot.ATTN_OUT_NORM,
            Slot.LAYER_OUT_NORM,
        )
    },
}
NORM_SLOTS = frozenset(s for s, r in ROLES.items() if r is TensorRole.NORM)

# gguf.MODEL_TENSOR member per slot (llama.cpp keeps Phi-3's fused gate/up in ffn_up); where gguf-py
# names one slot differently per architecture, the alternatives are tried in order
GGUF_TENSOR: dict[Slot, str | tuple[str, ...]] = {
    Slot.EMBED: "TOKEN_EMBD",
    Slot.HEAD: "OUTPUT",
    Slot.FINAL_NORM: "OUTPUT_NORM",
    Slot.ATTN_NORM: "ATTN_NORM",
    Slot.Q: "ATTN_Q",
    Slot.K: "ATTN_K",
    Slot.V: "ATTN_V",
    Slot.QKV: "ATTN_QKV",
    Slot.Q_NORM: "ATTN_Q_NORM",
    Slot.K_NORM: "ATTN_K_NORM",
    Slot.O: "ATTN_OUT",
    Slot.ATTN_POST_NORM: "ATTN_POST_NORM",
    Slot.MLP_NORM: ("FFN_NORM", "FFN_PRE_NORM"),
    Slot.GATE: "FFN_GATE",
    Slot.UP: "FFN_UP",
    Slot.GATE_UP: "FFN_UP",
    Slot.DOWN: "FFN_DOWN",
    Slot.MLP_POST_NORM: "FFN_POST_NORM",
    Slot.POS_EMBED: "POS_EMBD",
    Slot.TYPE_EMBED: "TOKEN_TYPES",
    Slot.EMBED_NORM: "TOKEN_EMBD_NORM",
    Slot.ATTN_OUT_NORM: "ATTN_OUT_NORM",
    Slot.LAYER_OUT_NORM: "LAYER_OUT_NORM",
    Slot.CLASSIFIER: "CLS",
}


@dataclass(frozen=True)
class TensorId:
    """Where a parameter sits: its slot, its layer (None outside the layers), weight or bias."""

    slot: Slot
    layer: int | None
    kind: str  # "weight" | "bias"

    @property
    def role(self) -> TensorRole:
        return TensorRole.BIAS if self.kind == "bias" else ROLES[self.slot]


def _pattern(spec: ArchSpec) -> tuple[re.Pattern[str], dict[str, Slot]]:
    layer = re.escape(spec.layers_path) + r"\.(\d+)\."
    by_module = {}
    alts: list[str] = []
    for r in spec.tensors:
        key = ("L:" if r.in_layer else "G:") + r.module
        by_module[key] = r.slot
        prefix = layer if r.in_layer else ""
        alts.append(f"(?P<g{len(alts)}>{prefix}{re.escape(r.module)})")
    return re.compile(r"^(?:" + "|".join(alts) + r")\.(weight|bias)$"), by_module


_CACHE: dict[str, tuple[re.Pattern[str], dict[str, Slot]]] = {}


def identify(spec: ArchSpec, name: str) -> TensorId | None:
    """The slot of parameter ``name`` (e.g. ``model.layers.3.mlp.down_proj.weight``), or None."""
    if spec.family not in _CACHE:
        _CACHE[spec.family] = _pattern(spec)
    pattern, _ = _CACHE[spec.family]
    m = pattern.match(name)
    if m is None:
        return None
    i = next(int(k[1:]) for k, v in m.groupdict().items() if v is not None)
    rule = spec.tensors[i]
    layer = None
    if rule.in_layer:
        layer = int(name[len(spec.layers_path) + 1 :].split(".", 1)[0])
    return TensorId(rule.slot, layer, name.rsplit(".", 1)[1])


def gguf_name(spec: ArchSpec, tid: TensorId) -> str:
    """The GGUF tensor name llama.cpp expects (``blk.3.ffn_down.weight``), from gguf-py's tables."""
    import gguf

    have = gguf.MODEL_TENSORS[gguf.MODEL_ARCH[spec.gguf_arch]]
    names = GGUF_TENSOR[tid.slot]
    for name in (names,) if isinstance(names, str) else names:
        tensor = gguf.MODEL_TENSOR[name]
        if tensor in have:
            return gguf.TENSOR_NAMES[tensor].format(bid=tid.layer) + "." + tid.kind
    raise KeyError(f"llama.cpp's {spec.gguf_arch.lower()} architecture has no {names} tensor")
