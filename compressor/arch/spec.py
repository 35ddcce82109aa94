"""ArchSpec: what the rest of the code needs to know about one model family, and nothing else.

A spec is data: the HF ``model_type`` values and class it covers, its GGUF architecture (a
``gguf.MODEL_ARCH`` member name), where the layer list is, the tensor table (``tensors.py``), the
config keys (``config_keys.py``) and the export quirks. Stages, the budget model and the exporters ask
the spec; none of them names a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from compressor.arch.config_keys import ConfigKeys


class Slot(StrEnum):
    """The part a tensor plays in a decoder. Fused slots (QKV, GATE_UP) hold their parts' rows
    stacked in this order: Q, K, V and GATE, UP."""

    EMBED = "embed"
    HEAD = "head"
    FINAL_NORM = "final_norm"
    ATTN_NORM = "attn_norm"  # before attention
    Q = "q"
    K = "k"
    V = "v"
    QKV = "qkv"
    Q_NORM = "q_norm"  # per-head RMS norm of queries/keys (over head_dim)
    K_NORM = "k_norm"
    O = "o"  # noqa: E741  (the attention output projection, as the literature names it)
    ATTN_POST_NORM = "attn_post_norm"  # on attention's output, before the residual add (sandwich norms)
    MLP_NORM = "mlp_norm"  # before the MLP
    GATE = "gate"
    UP = "up"
    GATE_UP = "gate_up"
    DOWN = "down"
    MLP_POST_NORM = "mlp_post_norm"
    # encoders (BERT family): absolute positions, token types, post-LN after each residual add
    POS_EMBED = "pos_embed"
    TYPE_EMBED = "type_embed"
    EMBED_NORM = "embed_norm"
    ATTN_OUT_NORM = "attn_out_norm"  # LayerNorm(x + attention(x))
    LAYER_OUT_NORM = "layer_out_norm"  # LayerNorm(h + mlp(h))
    POOLER = "pooler"  # dense + tanh on the first token (BERT's next-sentence pooler)
    CLASSIFIER = "classifier"  # a sequence-classification head's matrices


# What a fused slot holds, rows stacked in this order
FUSED: dict[Slot, tuple[Slot, ...]] = {Slot.QKV: (Slot.Q, Slot.K, Slot.V), Slot.GATE_UP: (Slot.GATE, Slot.UP)}


@dataclass(frozen=True)
class TensorRule:
    """One row of a family's tensor table: the module holding a weight (and its bias, if any).
    ``module`` is a path inside one layer (``in_layer``) or from the model root."""

    module: str
    slot: Slot
    in_layer: bool = True


class Objective(StrEnum):
    CAUSAL_LM = "causal-lm"  # decoder: next-token logits, KV cache, decode latency
    ENCODER = "encoder"  # bidirectional encoder: a pooled embedding or a classifier's logits per input


@dataclass(frozen=True)
class ArchSpec:
    family: str  # our name, used in messages and reports
    model_types: tuple[str, ...]  # HF config.model_type values this spec covers
    hf_class: str  # transformers class that loads it
    gguf_arch: str  # gguf.MODEL_ARCH member name
    tensors: tuple[TensorRule, ...]
    keys: ConfigKeys
    layers_path: str = "model.layers"
    # config attributes holding one entry per layer (kept in step when layers are dropped)
    per_layer_config: tuple[str, ...] = ("layer_types",)
    objective: Objective = Objective.CAUSAL_LM
    # llama.cpp's non-NeoX rope for this arch: q/k rows go from HF's rotate-half order to interleaved
    permute_qk: bool = False
    # HF rope_type whose frequency factors llama.cpp reads from a rope_freqs tensor
    rope_freqs_type: str | None = None
    # HF stores RMS norm weights as w with y = x * (1 + w); GGUF stores 1 + w
    norm_offset: float = 0.0
    # llama.cpp names a sliding-window size for this arch but ignores it (full attention in every layer)
    gguf_ignores_window: bool = False
    # llama.cpp's layer pattern when a file names a window but no per-layer pattern: every n-th
    # layer attends globally (0 = every layer slides)
    gguf_swa_period: int = 0
    # llama.cpp's architecture assumes heads x head_dim == hidden (Qwen2, Phi-3); when pruning breaks
    # that, the file is written as this architecture instead (the same computation: q/k rows permuted
    # to its rope layout, biases kept, fused parts split)
    gguf_pruned_arch: str | None = None
    onnx_exporter: str = "optimum"  # "optimum" (optimum-onnx knows the family) or "" (no ONNX export)
    # encoders: the attribute of the HF task model holding the base model ("bert", "roberta"), the
    # base class, the classification class, and the position-id offset (RoBERTa counts from pad + 1)
    base_prefix: str = ""
    base_class: str = ""
    classifier_class: str = ""
    position_offset: int = 0

    def rule(self, slot: Slot) -> TensorRule | None:
        return next((r for r in self.tensors if r.slot is slot), None)

    def has(self, slot: Slot) -> bool:
        return self.rule(slot) is not None

    def module_path(self, slot: Slot) -> str:
        rule = self.rule(slot)
        if rule is None:
            raise KeyError(f"{self.family} has no {slot} tensor")
        return rule.module

    @property
    def is_encoder(self) -> bool:
        return self.objective is Objective.ENCODER

    @property
    def sandwich_norms(self) -> bool:
        """Norms after attention/MLP outputs too (the residual is not linear in o_proj/down_proj)."""
        return self.has(Slot.ATTN_POST_NORM) or self.has(Slot.MLP_POST_NORM)
