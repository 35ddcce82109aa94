"""QAT with learned block scales on ggml's grids (LSQ), exact with the GGUF blocks the exporter writes.

Every quantized weight gets a ``LearnedBlocks`` parametrization, initialised from the PTQ result
(the scales of the importance-weighted search, the codes GPTQ chose; the float weight is set to their
dequantized values, so training starts from exactly the PTQ model). Per 32-element block it holds a
trained scale ``d = d0 * gain`` (and, for Q4_1/Q5_1, an offset ``m``); the forward pass computes

    d_s = fp16(d)               (what the file stores)
    x   = w * (1 / d_s)         (in grid units)
    v   = grid value nearest x  (clamped to the grid; IQ4_NL: the nearest of its 16 table values)
    w'  = v * d_s               (Q4_1/Q5_1: (v * d_s) + fp16(m), two roundings, as ggml dequantizes)

in float32, so ``w'`` is bit for bit what llama.cpp dequantizes from the blocks ``export_blocks``
builds with the same function (tested). Gradients: d w'/d w = 1 inside the grid's range and 0 where
clamped (straight through the rounding); d w'/d d = v and d w'/d m = 1, the exact gradient with the
codes held, which is the true gradient between code changes. LSQ (Esser et al. 2019) adds -x inside
the range (the rounding treated as the identity); starting from PTQ's scales that term made the
layer-output error *rise* in our tests (tests/unit/test_learned_quant.py), so it is not used. The
fp16 rounding of ``d`` passes gradients straight through. Codes follow the weights, and the export
writes the trained scales as they are: nothing is recomputed from the weights, which is what makes
other tools' "QAT -> GGUF" lose the gain.

``codes="frozen"``: the codes stay those of the PTQ init (a buffer) and only scales, offsets and norms
train (no weight gradients, no optimizer state for the weights; cheap). ``codes="follow"``: weights
and scales train together.
Written for this project after the LSQ/LSQ+ papers; the rounding rules are our own grids (ggml_types).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.ggml_types import IQ4NL_VALUES, Blocks, dequantize

# Symmetric integer grids: code range and the offset the stored (unsigned) code carries.
_SYM = {"Q4_0": (-8, 7, 8), "Q5_0": (-16, 15, 16), "Q8_0": (-128, 127, 0)}
_AFFINE = {"Q4_1": 15, "Q5_1": 31}
LEARNABLE = (*_SYM, *_AFFINE, "IQ4_NL")
_TABLE = torch.from_numpy(IQ4NL_VALUES.copy())
_MIDS = (_TABLE[:-1] + _TABLE[1:]) / 2
Codes = Literal["follow", "frozen"]


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def grid(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(value in grid units, stored code) nearest to ``x`` (grid units) for one ggml type."""
    if kind == "IQ4_NL":
        idx = torch.bucketize(x, _MIDS, right=True)
        return _TABLE[idx], idx
    # + 0.0: a code is an integer, and an integer has no -0 (ggml dequantizes code 0 to +0 * d)
    if kind in _AFFINE:
        v = torch.clamp(torch.round(x), 0.0, float(_AFFINE[kind])) + 0.0
        return v, v
    lo, hi, offset = _SYM[kind]
    v = torch.clamp(torch.round(x), float(lo), float(hi)) + 0.0
    return v, v + offset


def _range(kind: str) -> tuple[float, float]:
    if kind == "IQ4_NL":
        return float(IQ4NL_VALUES[0]), float(IQ4NL_VALUES[-1])
    if kind in _AFFINE:
        return 0.0, float(_AFFINE[kind])
    lo, hi, _ = _SYM[kind]
    return float(lo), float(hi)


def _stored_value(kind: str, code: torch.Tensor) -> torch.Tensor:
    if kind == "IQ4_NL":
        return _TABLE[code.long()]
    return code.float() - (_SYM[kind][2] if kind in _SYM else 0)


class _Lsq(torch.autograd.Function):
    """Forward: the exact dequantized blocks; backward: LSQ gradients for weight, scale and offset."""

    @staticmethod
    def forward(
        ctx: Any, w: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, kind: str
    ) -> torch.Tensor:
        d_s = d.detach().half().float()[:, None]
        if m is not None:
            m_s = m.detach().half().float()[:, None]
            x = (w - m_s) * _inverse(d_s)
        else:
            x = w * _inverse(d_s)
        v, _ = grid(kind, x)
        out = v * d_s
        if m is not None:
            out = out + m_s
        lo, hi = _range(kind)
        inside = (x >= lo) & (x <= hi)
        ctx.save_for_backward(v, inside)
        ctx.affine = m is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        v, inside = ctx.saved_tensors
        g_w = grad * inside
        g_d = (grad * v).sum(-1)
        g_m = grad.sum(-1) if ctx.affine else None
        return g_w, g_d, g_m, None


class LearnedBlocks(nn.Module):
    """Parametrization of one (rows, cols) weight stored as ggml ``kind`` with trained block scales.

    ``gain`` (one per block, init 1) multiplies the PTQ scale ``d0``; Adam then moves every scale by
    a relative step, whatever its magnitude. ``offset`` (Q4_1/Q5_1) is trained directly.
    """

    def __init__(self, blocks: Blocks, shape: tuple[int, int], codes: Codes) -> None:
        super().__init__()
        if blocks.kind not in LEARNABLE:
            raise ValueError(f"no learned quantizer for {blocks.kind}")
        self.kind, self.shape, self.codes_mode = blocks.kind, shape, codes
        self.d0: torch.Tensor
        self.frozen_codes: torch.Tensor
        self.register_buffer("d0", torch.from_numpy(blocks.d.astype(np.float32)))
        self.gain = nn.Parameter(torch.ones_like(self.d0))
        self.offset = (
            nn.Parameter(torch.from_numpy(blocks.m.astype(np.float32))) if blocks.m is not None else None
        )
        frozen = torch.from_numpy(blocks.q.astype(np.int16)) if codes == "frozen" else torch.empty(0)
        self.register_buffer("frozen_codes", frozen)

    def scale(self) -> torch.Tensor:
        return self.d0 * self.gain

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        d = self.scale()
        if self.codes_mode == "frozen":
            v = _stored_value(self.kind, self.frozen_codes)
            d_s = d + (d.half().float() - d).detach()  # fp16 as stored; gradient straight through
            out = v * d_s[:, None]
            if self.offset is not None:
                m = self.offset
                out = out + (m + (m.half().float() - m).detach())[:, None]
            return out.reshape(self.shape)
        wb = w.reshape(-1, 32)
        return _Lsq.apply(wb, d, self.offset, self.kind).reshape(self.shape)

    @torch.no_grad()
    def export_blocks(self, w: torch.Tensor) -> Blocks:
        """The blocks the forward pass computed: trained fp16 scales as they are, codes from them."""
        d_s = self.scale().half()
        m_s = self.offset.half() if self.offset is not None else None
        if self.codes_mode == "frozen":
            q = self.frozen_codes
        else:
            wb = w.detach().float().reshape(-1, 32)
            x = (wb - m_s.float()[:, None]) if m_s is not None else wb
            _, q = grid(self.kind, x * _inverse(d_s.float()[:, None]))
        dtype = np.int8 if self.kind == "Q8_0" else np.uint8
        return Blocks(
            self.kind,
            d_s.numpy(),
            q.numpy().astype(dtype),
            m_s.numpy() if m_s is not None else None,
        )


def apply_learned(model: Any, blocks: dict[str, Blocks], codes: Codes, frozen: set[str]) -> list[str]:
    """Set each named weight to its PTQ blocks' values and parametrize it with a LearnedBlocks.

    ``frozen`` weights (e.g. the embedding when it does not train) only get their dequantized
    values: they are exported with their PTQ blocks unchanged. Returns the parametrized names."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    done = []
    for name, b in blocks.items():
        p = params[name]
        with torch.no_grad():
            p.copy_(torch.from_numpy(dequantize(b)).reshape(p.shape))
        if name in frozen or b.kind not in LEARNABLE:
            continue
        owner = modules[name.removesuffix(".weight")]
        parametrize.register_parametrization(owner, "weight", LearnedBlocks(b, tuple(p.shape), codes))
        if codes == "frozen":
            owner.parametrizations.weight.original.requires_grad_(False)
        done.append(name)
    return done


def export_learned(model: Any) -> dict[str, Blocks]:
    """Every parametrized weight's blocks; then drop the parametrizations, leaving each weight at
    exactly its blocks' dequantized values (what the quantize stage packs and checks)."""
    out: dict[str, Blocks] = {}
    for mod_name, mod in list(model.named_modules()):
        if not parametrize.is_parametrized(mod, "weight"):
            continue
        lb = mod.parametrizations.weight[0]
        if not isinstance(lb, LearnedBlocks):
            continue
        b = lb.export_blocks(mod.parametrizations.weight.original)
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(dequantize(b)).reshape(mod.weight.shape))
        mod.weight.requires_grad_(False)
        out[f"{mod_name}.weight"] = b
    return out


def scale_parameters(model: Any) -> list[nn.Parameter]:
    """The learned quantizers' parameters (their own learning rate in the optimizer)."""
    return [p for m in model.modules() if isinstance(m, LearnedBlocks) for p in m.parameters()]


def frozen_code_weights(model: Any) -> set[int]:
    """ids of the float weights behind learned quantizers whose codes are frozen (never trained)."""
    out = set()
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight"):
            lb = mod.parametrizations.weight[0]
            if isinstance(lb, LearnedBlocks) and lb.codes_mode == "frozen":
                out.add(id(mod.parametrizations.weight.original))
    return out
