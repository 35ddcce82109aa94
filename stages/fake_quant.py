"""Fake quantization in torch, bit-exact with the codecs the exporters write (QAT's forward pass).

``fake_quant(w, scheme, kind)`` returns dequant(quant(w)) computed with the same float32 arithmetic as
``compressor.ggml_blocks`` (GGUF Q8_0/Q4_0, scales rounded to fp16) and ``compressor.onnx_blocks``
(ONNX int4 symmetric/asymmetric and int8, fp32 scales), so a student trained through it exports to
exactly the weights it was trained with. Gradients pass straight through (STE).
``apply_fake_quant`` registers it as a parametrization on every weight the scheme quantizes, using the
same per-tensor plan as the quantize stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.artifact import weight_inventory
from compressor.budget import plan_tensors
from compressor.quant import ExportFormat, QuantScheme


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _signed_max(x: torch.Tensor) -> torch.Tensor:
    """Signed value of the first element of largest magnitude per block; +0.0 for all-zero blocks."""
    mag = x.abs()
    picked = torch.gather(x, -1, mag.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(mag.amax(-1) > 0, picked, torch.zeros_like(picked))


def _q4_sym(x: torch.Tensor, fp16_scale: bool) -> torch.Tensor:
    d = _signed_max(x) / -8.0
    q = torch.mul(x, _inverse(d)[..., None]).add_(8.5).trunc_().clamp_(max=15.0)  # in place: one buffer
    if fp16_scale:
        d = d.half().float()
    return q.sub_(8.0).mul_(d[..., None])


def _q8_gguf(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(-1) / 127.0
    v = (x * _inverse(d)[..., None]).double()
    q = torch.sign(v) * torch.floor(v.abs() + 0.5) + 0.0  # roundf; + 0.0: an integer code has no -0
    return q.float() * d.half().float()[..., None]


def _int8_onnx(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(-1) / 127.0
    q = torch.clamp(torch.round(x * _inverse(s)[..., None]), -127.0, 127.0) + 0.0  # no -0 code
    return q * s[..., None]


def _int4_asym(x: torch.Tensor) -> torch.Tensor:
    lo = torch.clamp(x.amin(-1), max=0.0)
    hi = torch.clamp(x.amax(-1), min=0.0)
    s = (hi - lo) / 15.0
    inv = _inverse(s)
    z = torch.clamp(torch.round(-lo * inv), 0.0, 15.0)
    q = torch.clamp(torch.round(x * inv[..., None]) + z[..., None], 0.0, 15.0)
    return (q - z[..., None]) * s[..., None]


def fake_quant(w: torch.Tensor, scheme: QuantScheme, kind: str) -> torch.Tensor:
    """dequant(quant(w)) for one (rows, row_len) weight stored as ``kind``; float weights pass through."""
    if kind in ("F32", "fp32"):
        return w
    if kind == "F16":
        return w.half().float()
    block = scheme.block_for(kind, w.shape[-1]) if scheme.format is ExportFormat.ONNX else 32
    x = w.float().reshape(*w.shape[:-1], w.shape[-1] // block, block)
    if kind == "Q8_0":
        out = _q8_gguf(x)
    elif kind == "Q4_0":
        out = _q4_sym(x, fp16_scale=True)
    elif kind == "int8":
        out = _int8_onnx(x)
    elif kind == "int4":
        out = _q4_sym(x, fp16_scale=False) if scheme.symmetric else _int4_asym(x)
    else:
        raise ValueError(f"no fake quantizer for {kind} (llama.cpp quantizes K-quants itself)")
    return out.reshape(w.shape)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized weight; backward: the gradient unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return grad, None


class FakeQuant(nn.Module):
    """Parametrization: the forward pass sees the quantized weight, the gradient reaches the float one.

    A weight that is not being trained (e.g. the frozen embedding) is quantized once and reused
    until it changes (its version counter moves on any in-place update)."""

    def __init__(self, scheme: QuantScheme, kind: str) -> None:
        super().__init__()
        self.scheme, self.kind = scheme, kind
        self._frozen: tuple[int, int, torch.Tensor] | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not w.requires_grad:
            key = (w.data_ptr(), w._version)
            if self._frozen is None or self._frozen[:2] != key:
                with torch.no_grad():
                    self._frozen = (*key, fake_quant(w, self.scheme, self.kind))
            return self._frozen[2]
        self._frozen = None
        with torch.no_grad():
            q = fake_quant(w, self.scheme, self.kind)
        return _StraightThrough.apply(w, q)


def apply_fake_quant(model: Any, scheme: QuantScheme) -> Any:
    """Register FakeQuant on every 2-D weight the scheme quantizes (as the quantize stage plans it)."""
    inventory = weight_inventory(model)
    plans = plan_tensors(inventory, scheme)
    modules = dict(model.named_modules())
    for name, param_owner in _owners(model, inventory, modules):
        kind = plans[name].effective
        if len(modules[param_owner].weight.shape) == 2 and kind not in ("F32", "fp32"):
            parametrize.register_parametrization(modules[param_owner], "weight", FakeQuant(scheme, kind))
    return model


def _owners(model: Any, inventory: list, modules: dict) -> list[tuple[str, str]]:
    """(inventory name, module name) for every module holding an inventoried weight, tied ones too."""
    by_id = {id(p): n for n, p in model.named_parameters() if n in {w.name for w in inventory}}
    out = []
    for mod_name, mod in modules.items():
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter) and id(w) in by_id:
            out.append((by_id[id(w)], mod_name))
    return out


def remove_fake_quant(model: Any) -> Any:
    """Drop the parametrizations, keeping the float (trained) weights the quantize stage then packs."""
    for mod in list(model.modules()):
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
    return model
