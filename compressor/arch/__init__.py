"""The model-family registry (see registry.py): everything that differs between families."""

from compressor.arch.config_keys import ConfigKeys, WindowRule
from compressor.arch.registry import (
    ARCHITECTURES,
    spec_for,
    spec_for_gguf_arch,
    spec_for_model_type,
    supported,
)
from compressor.arch.spec import ArchSpec, Slot, TensorRule
from compressor.arch.tensors import TensorId, gguf_name, identify

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "ConfigKeys",
    "Slot",
    "TensorId",
    "TensorRule",
    "WindowRule",
    "gguf_name",
    "identify",
    "spec_for",
    "spec_for_gguf_arch",
    "spec_for_model_type",
    "supported",
]
