"""Distillation on the tiny model: it heals, it resumes exactly, its loss is zero at the teacher."""

import copy

import pytest
import torch

from compressor.quant import QuantScheme
from stages.distill import DistillConfig, distill, kd_loss, teacher_topk
from stages.fake_quant import apply_fake_quant, remove_fake_quant
from stages.prune import prune_model
from stages.prune_config import PruneConfig
from stages.quantize import quantize_model
from tests.conftest import corpus

CFG = DistillConfig(
    batch_size=2,
    seq_len=64,
    max_tokens=64 * 2 * 16,
    lr=3e-3,
    warmup_steps=2,
    eval_every=8,
    checkpoint_every=4,
    top_k=16,
)


def _data(artifact) -> tuple[list[int], list[int]]:
    ids = artifact.tokenizer(corpus()[:20000], add_special_tokens=False).input_ids
    return ids[:1024], ids[1024:1280]


def test_loss_is_zero_when_the_student_is_the_teacher(tiny_artifact) -> None:
    ids = torch.tensor([_data(tiny_artifact)[0][:64]])
    (cached,) = teacher_topk(tiny_artifact.model, [ids], 16, 1.0)
    with torch.no_grad():
        logits = tiny_artifact.model(ids).logits
    for loss in ("forward_kl", "reverse_kl", "skew_kl"):
        assert kd_loss(logits, *cached, CFG.model_copy(update={"loss": loss})).item() < 1e-6


def test_distillation_heals_a_pruned_student(tiny_artifact) -> None:
    train, heldout = _data(tiny_artifact)
    calib = [torch.tensor([train[:128]])]
    student, _ = prune_model(copy.deepcopy(tiny_artifact.model), PruneConfig.parse("mlp=64,heads=2"), calib)
    student, stats = distill(
        student, tiny_artifact.model, train, heldout, CFG.model_copy(update={"train": "all"})
    )
    assert stats.after["mean_kl"] < 0.7 * stats.before["mean_kl"]
    assert stats.tokens == CFG.max_tokens and stats.steps == 16
    assert any("heldout_kl" in row for row in stats.history)


def test_a_killed_run_resumes_to_the_same_weights(tiny_artifact) -> None:
    train, heldout = _data(tiny_artifact)
    base = copy.deepcopy(tiny_artifact.model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    full, _ = distill(copy.deepcopy(base), tiny_artifact.model, train, heldout, CFG)
    saved = []

    def save_then_die(state):
        saved.append(state)
        if state["step"] == 8:
            raise KeyboardInterrupt  # killed right after the checkpoint at step 8

    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(base), tiny_artifact.model, train, heldout, CFG, checkpoint=save_then_die)
    assert [s["step"] for s in saved] == [4, 8]
    resumed, stats = distill(copy.deepcopy(base), tiny_artifact.model, train, heldout, CFG, resume=saved[-1])
    assert stats.steps == 16
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_qat_student_exports_what_it_trained(tiny_artifact) -> None:
    train, heldout = _data(tiny_artifact)
    scheme = QuantScheme.parse("gguf:Q4_0")
    student = apply_fake_quant(copy.deepcopy(tiny_artifact.model), scheme)
    student, stats = distill(
        student, tiny_artifact.model, train, heldout, CFG.model_copy(update={"lr": 3e-4})
    )
    ids = torch.tensor([heldout[:64]])
    with torch.no_grad():
        trained = student(ids).logits
    exported, _, _ = quantize_model(remove_fake_quant(student), scheme)
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained)
    assert stats.after["mean_kl"] < stats.before["mean_kl"]
