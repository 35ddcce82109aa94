"""Distillation on the tiny model: it heals, it resumes exactly, its loss is zero at the teacher."""

import copy

import pytest
import torch

from compressor.quant import QuantScheme
from stages.distill import DistillConfig, distill
from stages.fake_quant import apply_fake_quant, remove_fake_quant
from stages.kd_loss import HeadLogSumExp, StudentTopK, kd_loss, teacher_topk
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
    ((t_logp, t_idx),) = teacher_topk(tiny_artifact.model, [ids], 16, 1.0)
    with torch.no_grad():
        s_topk, s_lse, _ = StudentTopK(tiny_artifact.model, None, full=False, tail=True)(ids, t_idx)
    for loss in ("forward_kl", "reverse_kl", "skew_kl"):
        cfg = CFG.model_copy(update={"loss": loss})
        assert kd_loss(s_topk, t_logp, cfg, s_lse).item() < 1e-6
        assert kd_loss(s_topk, t_logp, cfg).item() < 1e-6


def test_sparse_head_equals_the_full_head_at_the_teacher_ids(tiny_artifact) -> None:
    ids = torch.tensor([_data(tiny_artifact)[0][:64]])
    idx = torch.randint(0, tiny_artifact.model.config.vocab_size, (1, 64, 16))
    with torch.no_grad():
        sparse, sparse_lse, none = StudentTopK(tiny_artifact.model, None, full=False, tail=True)(ids, idx)
        full, full_lse, logits = StudentTopK(tiny_artifact.model, None, full=True, tail=True)(ids, idx)
        reference = tiny_artifact.model(ids).logits
    assert none is None and logits is not None
    assert torch.allclose(sparse, full, atol=1e-5)
    assert torch.allclose(full, torch.gather(reference, -1, idx))
    assert torch.allclose(sparse_lse, reference.logsumexp(-1), atol=1e-5)
    assert torch.allclose(full_lse, reference.logsumexp(-1), atol=1e-5)


def test_tail_bucket_loss_equals_the_full_kl_when_k_is_the_vocabulary(tiny_artifact) -> None:
    ids = torch.tensor([_data(tiny_artifact)[0][:64]])
    vocab = tiny_artifact.model.config.vocab_size
    ((t_logp, t_idx),) = teacher_topk(tiny_artifact.model, [ids], vocab - 1, 1.0)
    student = copy.deepcopy(tiny_artifact.model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
        s_topk, s_lse, _ = StudentTopK(student, None, full=False, tail=True)(ids, t_idx)
        t, s = tiny_artifact.model(ids).logits.log_softmax(-1), student(ids).logits.log_softmax(-1)
    full_kl = (t.exp() * (t - s)).sum(-1).mean()
    assert torch.allclose(kd_loss(s_topk, t_logp, CFG, s_lse), full_kl, rtol=1e-3)


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


def test_chunked_head_logsumexp_has_the_autograd_gradient() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    head = torch.randn(300, 16, dtype=torch.float64)
    weights = torch.randn(37, dtype=torch.float64)
    (HeadLogSumExp.apply(hidden, head, torch.float64, 8) * weights).sum().backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    ((hidden @ head.T).logsumexp(-1) * weights).sum().backward()
    assert torch.allclose(ours, hidden.grad, atol=1e-10)


def test_the_best_held_out_state_is_kept(tiny_artifact) -> None:
    """A learning rate that wrecks the student: the state with the lowest held-out KL comes back
    (here the start), and without keep_best the wrecked one stays."""
    train, heldout = _data(tiny_artifact)
    wild = CFG.model_copy(update={"lr": 5.0, "warmup_steps": 0, "max_tokens": 64 * 2 * 8, "eval_every": 4})
    _, stats = distill(copy.deepcopy(tiny_artifact.model), tiny_artifact.model, train, heldout, wild)
    assert stats.best_step is not None
    seen = [stats.before["mean_kl"], *(r["heldout_kl"] for r in stats.history if "heldout_kl" in r)]
    assert stats.after["mean_kl"] <= min(seen) + 1e-6
    plain = wild.model_copy(update={"keep_best": False})
    _, wrecked = distill(copy.deepcopy(tiny_artifact.model), tiny_artifact.model, train, heldout, plain)
    assert wrecked.best_step is None and wrecked.after["mean_kl"] > stats.after["mean_kl"]
