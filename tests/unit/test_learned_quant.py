"""QAT with learned scales: exact with the exported blocks, LSQ gradients that train, and the trained
scales written into the GGUF as they are."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from compressor.ggml_search import weighted_quantize
from compressor.ggml_types import REFERENCE, dequantize, pack, unpack
from compressor.quant import QuantScheme
from stages.distill import DistillConfig
from stages.distill_stage import DistillStage
from stages.learned_quant import LEARNABLE, LearnedBlocks, apply_learned, export_learned
from stages.quantize import QuantizeStage
from tests.conftest import corpus


@pytest.fixture
def weights() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 96, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero block
    w[2, :32] = -w[2, :32].abs()  # an all-negative block
    return w


def _linear(w: torch.Tensor, kind: str, codes: str, rule: str = "weighted") -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    blocks = weighted_quantize(kind, w.numpy(), None) if rule == "weighted" else REFERENCE[kind](w.numpy())
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(dequantize(blocks)).reshape(w.shape))
    parametrize.register_parametrization(lin, "weight", LearnedBlocks(blocks, tuple(w.shape), codes))  # type: ignore[arg-type]
    return lin


def _train_randomly(lin: torch.nn.Linear, steps: int = 3) -> None:
    """Move scales, offsets and (when they train) weights the way an optimizer would."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        lb = lin.parametrizations.weight[0]
        for _ in range(steps):
            lb.gain.mul_(1 + 0.05 * torch.randn(lb.gain.shape, generator=g))
            if lb.offset is not None:
                lb.offset.add_(0.002 * torch.randn(lb.offset.shape, generator=g))
            w = lin.parametrizations.weight.original
            w.add_(0.01 * torch.randn(w.shape, generator=g))


@pytest.mark.parametrize("codes", ["follow", "frozen"])
@pytest.mark.parametrize("kind", LEARNABLE)
def test_forward_equals_the_dequantized_exported_blocks(weights, kind, codes) -> None:
    lin = _linear(weights, kind, codes)
    _train_randomly(lin)
    with torch.no_grad():
        trained = lin.weight.numpy().copy()
    blocks = lin.parametrizations.weight[0].export_blocks(lin.parametrizations.weight.original)
    again = unpack(kind, pack(blocks))  # through the file's byte layout
    exported = dequantize(again).reshape(weights.shape)
    assert np.array_equal(trained.view(np.uint32), exported.view(np.uint32))  # bit for bit


@pytest.mark.parametrize("kind", LEARNABLE)
def test_start_is_exactly_the_ptq_blocks(weights, kind) -> None:
    lin = _linear(weights, kind, "follow")
    start = weighted_quantize(kind, weights.numpy(), None)
    exported = lin.parametrizations.weight[0].export_blocks(lin.parametrizations.weight.original)
    assert np.array_equal(exported.d.view(np.uint16), start.d.view(np.uint16))
    live = start.d != 0  # a block with a zero scale is zero whatever its codes
    assert np.array_equal(exported.q[live], start.q[live])
    assert np.array_equal(dequantize(exported), dequantize(start))


@pytest.mark.parametrize("codes", ["follow", "frozen"])
@pytest.mark.parametrize("kind", ["Q4_0", "IQ4_NL", "Q4_1"])
def test_scale_gradients_fit_the_layer_output(weights, kind, codes) -> None:
    """Fitting x @ W'^T to the float layer's output lowers the error; scales get gradients."""
    lin = _linear(weights, kind, codes, rule="reference")
    x = torch.randn(256, weights.shape[1], generator=torch.Generator().manual_seed(3))
    target = x @ weights.T
    groups = [{"params": list(lin.parametrizations.weight[0].parameters()), "lr": 2e-3}]
    if codes == "frozen":
        lin.parametrizations.weight.original.requires_grad_(False)
    else:
        groups.append({"params": [lin.parametrizations.weight.original], "lr": 1e-5})
    opt = torch.optim.Adam(groups)

    def loss() -> torch.Tensor:
        return ((x @ lin.weight.T - target) ** 2).mean()

    first = float(loss().detach())
    for _ in range(60):
        opt.zero_grad()
        out = loss()
        out.backward()
        opt.step()
    gain = lin.parametrizations.weight[0].gain
    assert gain.grad is not None and gain.grad.abs().sum() > 0
    assert float(loss().detach()) < 0.99 * first


def test_clamped_values_pass_no_weight_gradient() -> None:
    w = torch.zeros(1, 32)
    w[0, 0] = 1.0  # the block's scale is set by this element
    lin = _linear(w, "Q4_0", "follow")
    with torch.no_grad():
        lin.parametrizations.weight[0].gain.fill_(0.5)  # halve the scale: element 0 clamps now
    lin.weight.sum().backward()
    grad = lin.parametrizations.weight.original.grad
    assert grad[0, 0] == 0 and torch.all(grad[0, 1:] == 1)


def _blocks_for(model, scheme) -> tuple[QuantScheme, dict]:
    return QuantizeStage().ptq_blocks(model, scheme)


def test_export_learned_restores_plain_weights_at_the_blocks_values(tiny_artifact) -> None:
    model = copy.deepcopy(tiny_artifact.model)
    blocks = _blocks_for(model, QuantScheme.parse("gguf:Q4_0"))[1]
    names = apply_learned(model, blocks, "follow", frozen=set())
    assert names and all(n in blocks for n in names)
    out = export_learned(model)
    assert set(out) == set(names)
    params = dict(model.named_parameters())
    for n, b in out.items():
        assert not parametrize.is_parametrized(model.get_submodule(n.removesuffix(".weight")))
        assert np.array_equal(params[n].detach().numpy().reshape(-1, 32), dequantize(b))


def test_qat_trains_the_scales_and_the_file_holds_them_unchanged(tiny_artifact, tmp_path: Path) -> None:
    """DistillStage with learned scales -> quantize stage -> GGUF: every tensor's scales and codes in
    the file are the trained ones (and differ from the PTQ start), and llama.cpp runs it like torch."""
    gguf = pytest.importorskip("gguf")
    from compressor.stage import StageContext
    from exporters import llama_runtime
    from exporters.gguf import export_gguf
    from exporters.workers import compare_logits

    teacher = tiny_artifact.model
    student = tiny_artifact.evolve("copy", model=copy.deepcopy(teacher))
    scheme, start, _ = _blocks_for(student.model, QuantScheme.parse("gguf:Q4_0"))
    ids = tiny_artifact.tokenizer(corpus() * 4, add_special_tokens=False).input_ids
    cfg = DistillConfig(
        max_tokens=8 * 64 * 6, seq_len=64, batch_size=8, lr=1e-3, scale_lr=1e-2, eval_every=100
    )
    stage = DistillStage(cfg, teacher, ids[:4000], ids[4000:4400], scheme, qat_blocks=start)
    ctx = StageContext(profile=None, scheme=scheme)  # type: ignore[arg-type]
    result = stage.run(student, ctx)
    learned = result.artifact.learned
    assert learned is not None
    assert result.report.summary["scales_changed"] > 0.1
    q = QuantizeStage(learned=learned.blocks, learned_scheme=learned.scheme).run(result.artifact, ctx)
    path = export_gguf(q.artifact, tmp_path)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    checked = 0
    for t in tensors.values():
        if t.tensor_type.name != "Q4_0":
            continue
        name = _torch_name(t.name)
        b = learned.blocks[name]
        back = unpack("Q4_0", np.asarray(t.data).view(np.uint8))
        if not name.endswith("embed_tokens.weight"):
            assert not np.array_equal(back.d, start[name].d), name  # the scales did train
        checked += 1
        if "attn_q" in t.name or "attn_k" in t.name:
            continue  # rows permuted for llama.cpp's rope layout: compared through the logits below
        assert np.array_equal(back.d.view(np.uint16), b.d.view(np.uint16)), name
        assert np.array_equal(back.q, b.q), name
    assert checked == 2 * 7  # every layer matrix (the embedding stays Q8_0)
    ids_eval = ids[:96]
    with torch.no_grad():
        ours = q.artifact.model(torch.tensor([ids_eval])).logits[0].numpy()
    stats = compare_logits(ours, llama_runtime.logits(path, ids_eval))
    assert stats["mean_kl"] < 1e-3


def _torch_name(gguf_name: str) -> str:
    layer, rest = gguf_name.split(".", 2)[1:3] if gguf_name.startswith("blk.") else ("", gguf_name)
    names = {
        "attn_q.weight": "self_attn.q_proj",
        "attn_k.weight": "self_attn.k_proj",
        "attn_v.weight": "self_attn.v_proj",
        "attn_output.weight": "self_attn.o_proj",
        "ffn_gate.weight": "mlp.gate_proj",
        "ffn_up.weight": "mlp.up_proj",
        "ffn_down.weight": "mlp.down_proj",
    }
    if not layer:
        return "model.embed_tokens.weight"
    return f"model.layers.{layer}.{names[rest]}.weight"


@pytest.mark.parametrize("kind", ["Q4_0", "IQ4_NL", "Q5_0"])
def test_reference_rule_is_among_learnable_starts(weights, kind) -> None:
    """A learned quantizer can start from the reference rule's blocks too (exact from step 0)."""
    blocks = REFERENCE[kind](weights.numpy())
    lin = torch.nn.Linear(96, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(dequantize(blocks)).reshape(weights.shape))
    parametrize.register_parametrization(lin, "weight", LearnedBlocks(blocks, (24, 96), "follow"))
    with torch.no_grad():
        assert np.array_equal(lin.weight.numpy().reshape(-1, 32), dequantize(blocks))
