"""The architecture registry: one ArchSpec per supported family. Adding a family is one entry here
(plus its tensor table row set in ``tensors.py`` if it is new) and its tiny-model test."""

from __future__ import annotations

from typing import Any

from compressor.arch import tensors as t
from compressor.arch.config_keys import ConfigKeys, WindowRule
from compressor.arch.spec import ArchSpec, Objective
from compressor.errors import ModelLoadError

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        family="llama",  # Llama 2/3.x, SmolLM, TinyLlama
        model_types=("llama",),
        hf_class="LlamaForCausalLM",
        gguf_arch="LLAMA",
        tensors=t.LLAMA,
        keys=ConfigKeys(),
        permute_qk=True,
        rope_freqs_type="llama3",
    ),
    "mistral": ArchSpec(
        family="mistral",  # llama.cpp runs Mistral as its llama architecture
        model_types=("mistral",),
        hf_class="MistralForCausalLM",
        gguf_arch="LLAMA",
        tensors=t.LLAMA,
        keys=ConfigKeys(windows=WindowRule.ALL),
        permute_qk=True,
        gguf_ignores_window=True,
    ),
    "qwen2": ArchSpec(
        family="qwen2",  # Qwen2 / Qwen2.5: q/k/v biases
        model_types=("qwen2",),
        hf_class="Qwen2ForCausalLM",
        gguf_arch="QWEN2",
        tensors=t.LLAMA,
        keys=ConfigKeys(windows=WindowRule.LAYER_TYPES),
        gguf_pruned_arch="llama",
    ),
    "qwen3": ArchSpec(
        family="qwen3",  # q/k RMS norms
        model_types=("qwen3",),
        hf_class="Qwen3ForCausalLM",
        gguf_arch="QWEN3",
        tensors=t.QWEN3,
        keys=ConfigKeys(windows=WindowRule.LAYER_TYPES),
    ),
    "gemma3": ArchSpec(
        family="gemma3",  # sandwich norms, q/k norms, 5 sliding : 1 global layers, scaled embedding
        model_types=("gemma3_text",),
        hf_class="Gemma3ForCausalLM",
        gguf_arch="GEMMA3",
        tensors=t.GEMMA3,
        keys=ConfigKeys(
            windows=WindowRule.LAYER_TYPES,
            rope_theta_local="rope_local_base_freq",
            final_softcap="final_logit_softcapping",
            attn_softcap="attn_logit_softcapping",
            attn_scalar="query_pre_attn_scalar",
        ),
        norm_offset=1.0,
        gguf_swa_period=6,
    ),
    "phi3": ArchSpec(
        family="phi3",  # Phi-3 / 3.5 / 4-mini: fused qkv and gate_up
        model_types=("phi3",),
        hf_class="Phi3ForCausalLM",
        gguf_arch="PHI3",
        tensors=t.PHI3,
        keys=ConfigKeys(windows=WindowRule.ALL, partial_rotary="partial_rotary_factor"),
        gguf_ignores_window=True,
        gguf_pruned_arch="llama",
    ),
    "bert": ArchSpec(
        family="bert",  # BERT, MiniLM, sentence-transformers (all-MiniLM-L6-v2, bge-small, e5-small)
        model_types=("bert",),
        hf_class="BertModel",
        gguf_arch="BERT",
        tensors=t.BERT,
        keys=ConfigKeys(norm_eps="layer_norm_eps"),
        layers_path="bert.encoder.layer",
        per_layer_config=(),
        objective=Objective.ENCODER,
        base_prefix="bert",
        base_class="BertModel",
        classifier_class="BertForSequenceClassification",
    ),
    "roberta": ArchSpec(
        family="roberta",  # RoBERTa, XLM-RoBERTa (multilingual MiniLM/e5 variants)
        model_types=("roberta", "xlm-roberta"),
        hf_class="RobertaModel",
        gguf_arch="BERT",
        tensors=t.ROBERTA,
        keys=ConfigKeys(norm_eps="layer_norm_eps"),
        layers_path="roberta.encoder.layer",
        per_layer_config=(),
        objective=Objective.ENCODER,
        base_prefix="roberta",
        base_class="RobertaModel",
        classifier_class="RobertaForSequenceClassification",
        position_offset=2,  # positions count from padding_idx + 1
    ),
}
BY_MODEL_TYPE = {mt: spec for spec in ARCHITECTURES.values() for mt in spec.model_types}
# GGUF general.architecture -> spec used to read such a file (llama.cpp's "llama" also covers Mistral)
BY_GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3", "phi3": "phi3"}


def supported() -> str:
    return ", ".join(sorted(BY_MODEL_TYPE))


def spec_for_model_type(model_type: str, where: str) -> ArchSpec:
    """The spec for HF ``model_type``; ModelLoadError naming it and the supported ones otherwise."""
    spec = BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise ModelLoadError(
            f"{where}: model type '{model_type}' is not supported (supported: {supported()})"
        )
    return spec


def spec_for_gguf_arch(arch: str, where: str) -> ArchSpec:
    family = BY_GGUF_ARCH.get(arch)
    if family is None:
        raise ModelLoadError(
            f"{where}: GGUF architecture '{arch}' is not supported "
            f"(supported: {', '.join(sorted(BY_GGUF_ARCH))})"
        )
    return ARCHITECTURES[family]


def spec_for(model_or_config: Any) -> ArchSpec:
    """The spec of a loaded transformers model (or its config)."""
    config = getattr(model_or_config, "config", model_or_config)
    return spec_for_model_type(str(getattr(config, "model_type", "")), "model")
