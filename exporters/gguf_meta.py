"""GGUF metadata for a model of any registered family: shape, rope, norms, sliding windows, soft-caps.

What the registry's spec says and llama.cpp needs: the architecture name, ``key_length``/
``value_length`` (head_dim need not be hidden/heads once heads are pruned), the rope dimension
(partial rotary), rope scaling (frequency factors travel as a ``rope_freqs`` tensor, as
llama.cpp's converter writes them; linear scaling as a factor), Gemma 3's sliding-window size and
per-layer pattern (written as an array, so pruned layer lists stay right) and local rope base.
``export_problems`` tells before any work starts what llama.cpp could not run as the torch model does.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from compressor.arch import ArchSpec, spec_for
from compressor.arch.config_keys import get
from compressor.artifact import ModelArtifact

log = logging.getLogger(__name__)


def arch_name(spec: ArchSpec) -> str:
    import gguf

    return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]]


def _rope_scaling(spec: ArchSpec, config: Any) -> dict[str, Any] | None:
    rs = get(config, spec.keys.rope_scaling)
    if not rs:
        return None
    kind = rs.get("rope_type") or rs.get("type")
    return None if kind == "default" else dict(rs, rope_type=kind)


def _has_rope_freqs(spec: ArchSpec) -> bool:
    import gguf

    return gguf.MODEL_TENSOR.ROPE_FREQS in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[spec.gguf_arch]]


def export_problems(config: Any) -> list[str]:
    """What keeps a GGUF of this model from running in llama.cpp as it does in torch ([] = none)."""
    spec, k, problems = spec_for(config), spec_for(config).keys, []
    rs = _rope_scaling(spec, config)
    written = tuple(t for t in (spec.rope_freqs_type, "linear") if t)
    if rs and rs["rope_type"] not in written:
        problems.append(
            f"{spec.family} rope scaling '{rs['rope_type']}' has no GGUF form here yet "
            f"(written: {', '.join(written)})"
        )
    elif rs and rs["rope_type"] == spec.rope_freqs_type and not _has_rope_freqs(spec):
        problems.append(f"llama.cpp's {spec.gguf_arch.lower()} architecture takes no rope_freqs tensor")
    if get(config, k.attn_softcap):
        problems.append("attention logit soft-capping is not run by llama.cpp for this architecture")
    scalar = get(config, k.attn_scalar)
    hd = get(config, k.head_dim) or get(config, k.hidden) // get(config, k.n_heads)
    if scalar and int(scalar) != int(hd):
        problems.append(f"queries scaled by {scalar}**-0.5 (llama.cpp scales by head_dim {hd}**-0.5)")
    return problems


def rope_freqs(config: Any, head_dim: int) -> np.ndarray | None:
    """Rope frequency factors (one per rotary pair) for the rope scaling the family's spec says travels
    as a ``rope_freqs`` tensor, or None for other scalings."""
    spec = spec_for(config)
    rs = _rope_scaling(spec, config)
    if not rs or rs["rope_type"] != spec.rope_freqs_type:
        return None
    base = float(get(config, spec.keys.rope_theta, 10000.0))
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_ctx = float(rs["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _file_name(artifact: ModelArtifact) -> str:
    """general.name: the source's file or folder name, not its path. llama.cpp strips whitespace after
    special tokens (Phi-3's tokenizer does) exactly when this name contains "phi3" or "phi-3", so the
    name says so when, and only when, the tokenizer does."""
    name = Path(artifact.source.name).name.removesuffix(".gguf") or "model"
    rstrip = bool(artifact.vocab and artifact.vocab.rstrip_special)
    marked = re.search(r"phi-?3", name, re.IGNORECASE) is not None
    if rstrip and not marked:
        return f"phi3-{name}"
    if marked and not rstrip:
        return re.sub(r"(?i)phi(-?)3", r"phi\1_3", name)
    return name


def add_metadata(writer: Any, artifact: ModelArtifact, file_type: int) -> None:
    import gguf

    cfg, f = artifact.model.config, artifact.facts
    spec, k = spec_for(cfg), spec_for(cfg).keys
    writer.add_name(_file_name(artifact))
    writer.add_context_length(f.max_context)
    writer.add_embedding_length(f.hidden_size)
    writer.add_block_count(f.n_layers)
    writer.add_feed_forward_length(f.intermediate_size)
    writer.add_head_count(f.n_heads)
    writer.add_head_count_kv(f.n_kv_heads)
    writer.add_key_length(f.head_dim)
    writer.add_value_length(f.head_dim)
    writer.add_rope_dimension_count(int(f.head_dim * float(get(cfg, k.partial_rotary, 1.0))))
    writer.add_rope_freq_base(float(get(cfg, k.rope_theta, 10000.0)))
    writer.add_layer_norm_rms_eps(float(get(cfg, k.norm_eps)))
    writer.add_vocab_size(f.vocab_size)
    rs = _rope_scaling(spec, cfg)
    if rs and rs["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rs["factor"]))
    windows = f.layer_windows
    if any(windows) and spec.gguf_ignores_window:
        log.warning("llama.cpp runs %s with full attention; the sliding window is not written", spec.family)
    elif any(windows):
        writer.add_sliding_window(max(windows))
        writer.add_sliding_window_pattern([w > 0 for w in windows])
    if k.rope_theta_local and get(cfg, k.rope_theta_local):
        writer.add_rope_freq_base_swa(float(get(cfg, k.rope_theta_local)))
    if get(cfg, k.final_softcap):
        writer.add_final_logit_softcapping(float(get(cfg, k.final_softcap)))
    if artifact.sampling is not None:  # llama.cpp's common sampler reads these as its defaults
        for key, value in artifact.sampling.gguf_fields().items():
            getattr(writer, f"add_sampling_{key}")(value)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)
