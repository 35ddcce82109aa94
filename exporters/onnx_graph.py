"""Write a decoder's ONNX graph directly, in the layout onnxruntime-genai runs fastest: one
``GroupQueryAttention`` per layer (rotary inside it, KV cache in a buffer the generator shares between
steps), ``SimplifiedLayerNormalization``/``SkipSimplifiedLayerNormalization`` for RMSNorm with the
residual add fused, ``MatMulNBits`` for every quantized weight with *our* blocks, and
``GatherBlockQuantized`` reading the same bytes for a quantized embedding (the tied head shares them).

Why our own writer: optimum-onnx's torch export decomposes attention, rotary and the dynamic shape
logic into 7,427 nodes for SmolLM2 (401 here); on a CPU decode step their dispatch costs more
than the weights' memory traffic (profiled on SmolLM2: MatMulNBits was a third of node time), and
its concatenated KV cache cannot use onnxruntime-genai's shared buffer. onnxruntime-genai's model
builder writes this layout but quantizes with its own rounding and needs transformers 5; the op set and
wiring here follow what its builder emits (GroupQueryAttention's inputs: ``seqlens_k`` = mask sum - 1,
``total_sequence_length`` = mask width; cos/sin caches of half the rotary width), written from the
torch model we hold, so any pruned shape, rope scaling (the caches come from the model's own rotary
module) and quantization plan goes through.

Families: the Llama layout (separate q/k/v/o, gate/up/down, SiLU, RMSNorm) with optional biases
(Qwen2's q/k/v) and per-head q/k RMS norms (Qwen3), and Gemma 3 (norms as 1 + w, sandwich norms,
scaled embedding, tanh-GELU, sliding-window layers through GroupQueryAttention's ``local_window_size``
with their own rotary base, ``query_pre_attn_scalar``), and Phi-3 (its fused qkv goes to
GroupQueryAttention packed, its gate_up is split). Partial rotary, length-dependent rope scaling
(longrope, dynamic NTK) and soft-capping keep optimum's graph (``supports`` says which).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compressor.artifact import ModelArtifact, facts_from_config
from compressor.onnx_blocks import BlockQuant, matmul_nbits_tensors

MS = "com.microsoft"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
STATIC_ROPE = (None, "default", "linear", "llama3", "yarn")  # caches computed once hold for every length
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
ROPE_CACHE_MAX = 16384  # cos/sin rows: 2 x 4 bytes x head_dim/2 each; longer contexts are capped


def supports(artifact: ModelArtifact) -> bool:
    cfg = artifact.model.config
    partial = float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0)
    gemma = artifact.facts.family == "gemma3"
    return (
        artifact.facts.family in FAMILIES
        and _activation(cfg) in ACTIVATIONS
        and not artifact.facts.is_encoder
        and partial == 1.0
        and (gemma or not any(artifact.facts.layer_windows))  # windows: Gemma 3's local layers only
        and _rope_type(cfg) in STATIC_ROPE
        and not getattr(cfg, "attn_logit_softcapping", None)
        and not getattr(cfg, "final_logit_softcapping", None)
    )


def _rope_type(cfg: Any) -> str | None:
    """Dynamic scalings (longrope, dynamic NTK) change the frequencies with the sequence length; one
    cache cannot hold them."""
    rs = getattr(cfg, "rope_scaling", None) or {}
    return rs.get("rope_type") or rs.get("type")


def _activation(cfg: Any) -> str:
    return str(getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu"))


def cache_length(artifact: ModelArtifact) -> int:
    return min(artifact.facts.max_context, ROPE_CACHE_MAX)


class _Writer:
    def __init__(self, artifact: ModelArtifact, level: int) -> None:
        from onnx import helper, numpy_helper

        self.h, self.np_helper = helper, numpy_helper
        self.art, self.level = artifact, level
        self.params = dict(artifact.model.named_parameters(remove_duplicate=False))
        self.stored: dict[int, str] = {}  # tensor -> the first name it has (weight_inventory's rule)
        for name, t in self.params.items():
            self.stored.setdefault(id(t), name)
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.gemma = artifact.facts.family == "gemma3"

    def const(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.np_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def node(
        self, op: str, inputs: list[str], outputs: list[str] | None = None, domain: str = "", **attrs: Any
    ):
        name = f"n{len(self.nodes)}_{op}"
        outs = outputs or [f"{name}_out"]
        self.nodes.append(self.h.make_node(op, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def _weight_name(self, param: str) -> str:
        """The stored name of ``param`` (a tied head is stored once, under the embedding's name)."""
        return self.stored[id(self.params[param])]

    def quant(self, param: str) -> BlockQuant | None:
        q = self.art.quantized.get(self._weight_name(param))
        return q.data if q is not None and isinstance(q.data, BlockQuant) else None

    def nbits(self, key: str, bq: BlockQuant) -> list[str]:
        t = matmul_nbits_tensors(bq)
        names = [self.const(f"{key}.qB", t["B"]), self.const(f"{key}.qscales", t["scales"])]
        if "zero_points" in t:
            names.append(self.const(f"{key}.qzeros", t["zero_points"]))
        return names

    def linear(self, x: str, param: str, bias: str | None = None) -> str:
        bq = self.quant(param)
        if bq is not None:
            n, k = bq.shape
            key = self._weight_name(param)
            y = self.node(
                "MatMulNBits",
                [x, *self.nbits(key, bq)],
                domain=MS,
                K=k,
                N=n,
                bits=bq.bits,
                block_size=bq.block,
                accuracy_level=self.level,
            )
        else:
            w = self.params[param].detach().float().numpy()
            y = self.node("MatMul", [x, self.const(f"{self._weight_name(param)}.T", w.T)])
        if bias is not None and bias in self.params:
            y = self.node("Add", [y, self.const(bias, self.params[bias].detach().float().numpy())])
        return y

    def embed(self, ids: str, param: str) -> str:
        bq = self.quant(param)
        if bq is None:
            return self.node("Gather", [self.const(param, self.params[param].detach().float().numpy()), ids])
        n, _ = bq.shape
        shape2d = self.const(f"{param}.qshape2d", np.array([n, -1], dtype=np.int64))
        flat = [self.node("Reshape", [src, shape2d]) for src in self.nbits(param, bq)]
        data, scales, *zp = flat
        return self.node(
            "GatherBlockQuantized",
            [data, ids, scales, *zp],
            domain=MS,
            bits=bq.bits,
            block_size=bq.block,
            gather_axis=0,
            quantize_axis=1,
        )

    def gamma(self, param: str) -> str:
        """An RMSNorm's scale; Gemma stores it as an offset from 1 (``x_norm * (1 + w)``)."""
        w = self.params[param].detach().float().numpy()
        return self.const(param, w + 1.0 if self.gemma else w)

    def rms(self, x: str, param: str, eps: float) -> str:
        w = self.gamma(param)
        return self.node("SimplifiedLayerNormalization", [x, w], epsilon=eps, axis=-1, stash_type=1)

    def skip_rms(self, x: str, skip: str, param: str, eps: float) -> tuple[str, str]:
        """(normed, x + skip)."""
        w = self.gamma(param)
        base = f"n{len(self.nodes)}_skip"
        outs = [f"{base}_norm", "", "", f"{base}_sum"]
        self.node("SkipSimplifiedLayerNormalization", [x, skip, w], outs, domain=MS, epsilon=eps)
        return outs[0], outs[3]

    def head_norm(self, x: str, param: str, heads: int, head_dim: int, eps: float) -> str:
        """Per-head RMS norm (Qwen3's q_norm/k_norm): over the last axis of (B, S, heads, head_dim)."""
        shape = self.const(
            f"shape.heads{heads}x{head_dim}", np.array([0, 0, heads, head_dim], dtype=np.int64)
        )
        flat = self.const("shape.flat3", np.array([0, 0, -1], dtype=np.int64))
        y = self.rms(self.node("Reshape", [x, shape]), param, eps)
        return self.node("Reshape", [y, flat])


def _rope_caches(artifact: ModelArtifact, length: int, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (length, head_dim/2) from the model's own rotary module (any rope scaling it applies;
    Gemma 3's sliding layers have their own, with the local base)."""
    import torch

    inner = artifact.model.model
    rotary = inner.rotary_emb_local if local else inner.rotary_emb
    pos = torch.arange(length).unsqueeze(0)
    x = torch.zeros(1, 1, 1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(x, pos)
    half = cos.shape[-1] // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def inner_scale(artifact: ModelArtifact) -> float:
    """Gemma's embedding scale as its module applies it (sqrt(hidden) in the weights' dtype)."""
    emb = artifact.model.model.embed_tokens
    return float(getattr(emb, "embed_scale", 1.0))


def build_decoder(artifact: ModelArtifact, accuracy_level: int) -> Any:
    """The ONNX ModelProto (inputs ``input_ids``, ``attention_mask``, ``past_key_values.N.key/value``;
    outputs ``logits``, ``present.N.key/value``, KV as (batch, kv_heads, seq, head_dim))."""
    from onnx import TensorProto, helper

    cfg = artifact.model.config
    f = facts_from_config(cfg, 0)  # the model's own shape (pruning rewrites its config)
    eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
    w = _Writer(artifact, accuracy_level)
    h = helper
    kv_shape: list[str | int | None] = ["batch", f.n_kv_heads, "past_seq", f.head_dim]
    inputs = [
        h.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        h.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
    ]
    outputs = [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", f.vocab_size])]
    one = w.const("const.one", np.array([1], dtype=np.int64))
    axis1 = w.const("const.axis1", np.array([1], dtype=np.int64))
    summed = w.node("ReduceSum", ["attention_mask", axis1], keepdims=0)
    seqlens = w.node("Cast", [w.node("Sub", [summed, one])], to=TensorProto.INT32)
    width = w.node(
        "Gather",
        [w.node("Shape", ["attention_mask"]), w.const("const.idx1", np.array(1, dtype=np.int64))],
        axis=0,
    )
    total = w.node("Cast", [width], to=TensorProto.INT32)
    caches = {False: _rope_caches(artifact, cache_length(artifact))}
    if any(f.layer_windows):
        caches[True] = _rope_caches(artifact, cache_length(artifact), local=True)
    names = {
        local: (w.const(f"cos_cache{'_local' * local}", c), w.const(f"sin_cache{'_local' * local}", si))
        for local, (c, si) in caches.items()
    }
    x = w.embed("input_ids", "model.embed_tokens.weight")
    if w.gemma:  # Gemma scales the embedding by sqrt(hidden) (in the weights' dtype)
        scale = np.asarray(inner_scale(artifact), dtype=np.float32)
        x = w.node("Mul", [x, w.const("embed_scale", scale)])
    scalar = getattr(cfg, "query_pre_attn_scalar", None)
    attn_scale = float(scalar) ** -0.5 if w.gemma and scalar else float(f.head_dim**-0.5)
    act = ACTIVATIONS[_activation(cfg)]
    windows = f.layer_windows or (0,) * f.n_layers
    residual: str | None = None
    for i in range(f.n_layers):
        p = f"model.layers.{i}."
        if residual is None:
            normed, residual = w.rms(x, p + "input_layernorm.weight", eps), x
        else:
            normed, residual = w.skip_rms(x, residual, p + "input_layernorm.weight", eps)
        a = p + "self_attn."
        if a + "qkv_proj.weight" in w.params:  # Phi-3: one fused matrix; GQA takes the packed rows
            q, k, v = w.linear(normed, a + "qkv_proj.weight", a + "qkv_proj.bias"), "", ""
        else:
            q = w.linear(normed, a + "q_proj.weight", a + "q_proj.bias")
            k = w.linear(normed, a + "k_proj.weight", a + "k_proj.bias")
            v = w.linear(normed, a + "v_proj.weight", a + "v_proj.bias")
        if a + "q_norm.weight" in w.params:
            q = w.head_norm(q, a + "q_norm.weight", f.n_heads, f.head_dim, eps)
            k = w.head_norm(k, a + "k_norm.weight", f.n_kv_heads, f.head_dim, eps)
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        pres_k, pres_v = f"present.{i}.key", f"present.{i}.value"
        inputs += [h.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in (past_k, past_v)]
        outputs += [
            h.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", f.n_kv_heads, "total_seq", f.head_dim])
            for n in (pres_k, pres_v)
        ]
        attn_out = f"layer{i}.attn"
        cos_name, sin_name = names[windows[i] > 0]
        w.node(
            "GroupQueryAttention",
            [q, k, v, past_k, past_v, seqlens, total, cos_name, sin_name],
            [attn_out, pres_k, pres_v],
            domain=MS,
            num_heads=f.n_heads,
            kv_num_heads=f.n_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=attn_scale,
            local_window_size=windows[i] if windows[i] > 0 else -1,
        )
        o = w.linear(attn_out, a + "o_proj.weight", a + "o_proj.bias")
        if w.gemma:  # sandwich norms: the attention output is normed before the residual add
            o = w.rms(o, p + "post_attention_layernorm.weight", eps)
            normed, residual = w.skip_rms(o, residual, p + "pre_feedforward_layernorm.weight", eps)
        else:
            normed, residual = w.skip_rms(o, residual, p + "post_attention_layernorm.weight", eps)
        m = p + "mlp."
        if m + "gate_up_proj.weight" in w.params:  # Phi-3: gate rows then up rows
            fused = w.linear(normed, m + "gate_up_proj.weight", m + "gate_up_proj.bias")
            halves = [f"{fused}_gate", f"{fused}_up"]
            w.node("Split", [fused], halves, axis=-1)  # opset 17: equal parts, one per output
            gate, up = halves
        else:
            gate = w.linear(normed, m + "gate_proj.weight", m + "gate_proj.bias")  # biases: mlp_bias
            up = w.linear(normed, m + "up_proj.weight", m + "up_proj.bias")
        if act == "gelu_tanh":
            hidden = w.node("Mul", [w.node("FastGelu", [gate], domain=MS), up])
        else:
            hidden = w.node("Mul", [w.node("Mul", [gate, w.node("Sigmoid", [gate])]), up])
        x = w.linear(hidden, m + "down_proj.weight", m + "down_proj.bias")
        if w.gemma:
            x = w.rms(x, p + "post_feedforward_layernorm.weight", eps)
    assert residual is not None  # at least one layer
    final, _ = w.skip_rms(x, residual, "model.norm.weight", eps)
    head = "lm_head.weight"
    w.linear(final, head)
    w.nodes[-1].output[0] = "logits"
    graph = h.make_graph(w.nodes, "decoder", inputs, outputs, initializer=list(w.inits.values()))
    model = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", 17), h.make_opsetid(MS, 1)],
        producer_name="compressor",
    )
    model.ir_version = 9
    return model
