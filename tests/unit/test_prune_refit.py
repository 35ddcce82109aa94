"""Least-squares refit of o_proj/down_proj after pruning, on the tiny model."""

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from compressor.device_profile import load_profile
from compressor.metrics import compare
from compressor.quant import QuantScheme
from compressor.stage import StageContext
from stages.prune import prune_model
from stages.prune_config import PruneConfig
from stages.prune_refit import refit_outputs
from stages.prune_stage import PruneStage
from tests.conftest import corpus


@pytest.fixture(scope="module")
def ids(tiny_artifact) -> list[int]:
    return tiny_artifact.tokenizer(corpus(), add_special_tokens=False).input_ids


def _calibration(ids: list[int], n: int = 8) -> list[torch.Tensor]:
    return [torch.tensor([ids[i * 128 : (i + 1) * 128]]) for i in range(n)]


def _heldout(ids: list[int]) -> list[int]:
    return ids[-1024:]  # the end of the text; calibration is its start


def _pruned(teacher, spec: str, calib: list[torch.Tensor]):
    return prune_model(copy.deepcopy(teacher), PruneConfig.parse(spec), calib)


@torch.no_grad()
def _layer_outputs(model, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each decoder layer's output hidden states on ``batches``, concatenated over tokens."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    handles = [
        layer.register_forward_hook(
            lambda _m, _a, y, i=i: seen[i].append(y[0] if isinstance(y, tuple) else y)
        )
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        for b in batches:
            model(b)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat([s.reshape(-1, s.shape[-1]) for s in outs]) for outs in seen]


def _kl(student, teacher, ids: list[int]) -> float:
    return compare(student, teacher, _heldout(ids))["mean_kl"]


def test_refit_brings_every_layer_output_closer_to_the_teacher(tiny_artifact, ids) -> None:
    teacher, calib = tiny_artifact.model, _calibration(ids)
    student, stats = _pruned(teacher, "heads=2,mlp=64", calib)
    want = _layer_outputs(teacher, calib)
    before = [(s - t).norm() / t.norm() for s, t in zip(_layer_outputs(student, calib), want, strict=True)]
    report = refit_outputs(student, teacher, calib, teacher_layers=stats.kept_layers)
    after = [(s - t).norm() / t.norm() for s, t in zip(_layer_outputs(student, calib), want, strict=True)]
    assert all(a < 0.8 * b for a, b in zip(after, before, strict=True)), (
        before,
        after,
    )  # 0.83->0.49, 0.96->0.47
    for proj in ("o_proj", "down_proj"):  # the report's own figures agree in direction
        assert report[f"mean_{proj}_error_after"] < report[f"mean_{proj}_error_before"]
    assert report["tokens"] == 8 * 128 and len(report["layers"]) == 2


@pytest.mark.parametrize("target", ["projection", "residual"])
def test_refit_lowers_heldout_kl_where_pruning_hurts(tiny_artifact, ids, target: str) -> None:
    teacher, calib = tiny_artifact.model, _calibration(ids)
    student, stats = _pruned(teacher, "heads=1,kv_heads=1", calib)
    before = _kl(student, teacher, ids)
    refit_outputs(student, teacher, calib, teacher_layers=stats.kept_layers, target=target)  # type: ignore[arg-type]
    after = _kl(student, teacher, ids)
    assert before > 0.2  # pruning this hard does hurt ...
    assert after < 0.6 * before  # ... and the refit gives back more than 40% of it (0.43 -> 0.18)


def test_an_unpruned_model_is_left_as_it_was(tiny_artifact, ids) -> None:
    teacher, calib = tiny_artifact.model, _calibration(ids, 4)
    student = copy.deepcopy(teacher)
    report = refit_outputs(student, teacher, calib)
    for name, p in student.named_parameters():
        assert torch.allclose(p, dict(teacher.named_parameters())[name], atol=1e-5), name
    assert all(
        r["o_proj_error_before"] < 1e-9 and r["down_proj_error_before"] < 1e-9 for r in report["layers"]
    )


def test_dropped_layers_map_to_the_teacher_layer_they_came_from(tiny_artifact, ids) -> None:
    teacher, calib = copy.deepcopy(tiny_artifact.model), _calibration(ids)
    with torch.no_grad():  # a weak first layer, so that layer pruning keeps the second one
        first = teacher.model.layers[0]
        first.self_attn.o_proj.weight.mul_(0.2)
        first.mlp.down_proj.weight.mul_(0.2)
    pruned, stats = _pruned(teacher, "layers=1,heads=2,mlp=64", calib)
    assert stats.kept_layers == [1]
    right, wrong = copy.deepcopy(pruned), copy.deepcopy(pruned)
    report = refit_outputs(right, teacher, calib, teacher_layers=stats.kept_layers)
    refit_outputs(wrong, teacher, calib, teacher_layers=[0])
    before = _kl(pruned, teacher, ids)
    assert report["layers"][0]["teacher_layer"] == 1
    assert _kl(right, teacher, ids) < 0.7 * before < _kl(wrong, teacher, ids)  # 0.50 -> 0.24; wrong: 0.72
    with pytest.raises(ValueError, match="kept_layers"):
        refit_outputs(copy.deepcopy(pruned), teacher, calib)  # 1 layer vs 2 and no map


def _biased_model(config, seed: int = 0) -> LlamaForCausalLM:
    cfg = copy.deepcopy(config)
    cfg.attention_bias, cfg.mlp_bias = True, True
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


def test_biases_are_fitted_and_kept_exact_when_nothing_was_cut(tiny_artifact, ids) -> None:
    teacher, calib = _biased_model(tiny_artifact.model.config), _calibration(ids)
    same = copy.deepcopy(teacher)
    refit_outputs(same, teacher, calib)
    assert torch.allclose(same.model.layers[0].mlp.down_proj.bias, teacher.model.layers[0].mlp.down_proj.bias)
    student, stats = _pruned(teacher, "heads=2,mlp=64", calib)
    bias_before = student.model.layers[1].self_attn.o_proj.bias.clone()
    before = _kl(student, teacher, ids)
    refit_outputs(student, teacher, calib, teacher_layers=stats.kept_layers)
    assert not torch.allclose(student.model.layers[1].self_attn.o_proj.bias, bias_before, atol=1e-4)
    assert _kl(student, teacher, ids) < 0.5 * before  # 0.31 -> 0.08


def test_stage_reports_kl_before_and_after_the_refit(tiny_artifact, ids) -> None:
    ctx = StageContext(profile=load_profile("host"), scheme=QuantScheme.parse("gguf:Q8_0"))
    config, calib, heldout = PruneConfig.parse("heads=2,mlp=64"), _calibration(ids), _heldout(ids)
    on = PruneStage(config, calib, heldout).run(tiny_artifact, ctx).report.summary
    off = PruneStage(config, calib, heldout, refit=False).run(tiny_artifact, ctx).report.summary
    assert on["heldout_kl_before_refit"] == off["heldout_kl_to_unpruned"]  # same pruning, same text
    assert on["heldout_kl_to_unpruned"] < 0.7 * on["heldout_kl_before_refit"]
    assert on["refit_seconds"] >= 0 and on["refit"]["target"] == "residual"
    assert off["refit"] is None and "heldout_kl_before_refit" not in off
