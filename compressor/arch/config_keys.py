"""Per-family config keys: which HF config attribute holds each model fact, and how layers are windowed.

Every family this project supports uses transformers' common names for the basic shape (heads, KV
heads, head_dim, widths, norm eps, rope theta); they differ in the extras (local rope base, soft-caps,
sliding windows, partial rotary). The defaults on ``ConfigKeys`` are the common names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class WindowRule(StrEnum):
    NONE = "none"  # every layer attends to the whole context
    LAYER_TYPES = "layer-types"  # config.layer_types says which layers slide over config.sliding_window
    ALL = "all"  # config.sliding_window (when set) applies to every layer


@dataclass(frozen=True)
class ConfigKeys:
    n_layers: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    n_heads: str = "num_attention_heads"
    n_kv_heads: str = "num_key_value_heads"
    head_dim: str = "head_dim"
    mlp: str = "intermediate_size"
    vocab: str = "vocab_size"
    norm_eps: str = "rms_norm_eps"
    rope_theta: str = "rope_theta"
    rope_scaling: str = "rope_scaling"
    max_context: str = "max_position_embeddings"
    tied: str = "tie_word_embeddings"
    windows: WindowRule = WindowRule.NONE
    sliding_window: str = "sliding_window"
    rope_theta_local: str | None = None  # rope base of the sliding-window layers (Gemma 3)
    final_softcap: str | None = None
    attn_softcap: str | None = None
    attn_scalar: str | None = None  # queries scaled by scalar**-0.5 instead of head_dim**-0.5
    partial_rotary: str | None = None


def get(config: Any, key: str | None, default: Any = None) -> Any:
    if key is None:
        return default
    value = getattr(config, key, None)
    return default if value is None else value


def layer_windows(keys: ConfigKeys, config: Any) -> tuple[int, ...]:
    """Per layer, the sliding-window size, or 0 where the layer attends to everything."""
    n = int(get(config, keys.n_layers))
    window = int(get(config, keys.sliding_window, 0) or 0)
    if keys.windows is WindowRule.NONE or window <= 0:
        return (0,) * n
    if keys.windows is WindowRule.ALL:
        return (window,) * n
    types = get(config, "layer_types") or ["full_attention"] * n
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def head_dim(keys: ConfigKeys, config: Any) -> int:
    return int(get(config, keys.head_dim) or get(config, keys.hidden) // get(config, keys.n_heads))
