"""Pruning every supported family (tests/families.py): dead structure goes without changing the
function, live pruning keeps GQA grouping and reloads with equal logits, refit brings it back.

Every tiny model has 4 query heads over 2 KV heads, head_dim 16, hidden 64 and MLP 128. Where a part
sits in a fused matrix is stated here on its own (Q, K, V rows stacked in QKV; GATE, UP in GATE_UP),
not asked of the code under test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compressor.arch import Slot, spec_for
from compressor.artifact import facts_from_config, weight_inventory
from compressor.metrics import compare
from stages import prune_auto
from stages.importance import Importance, score
from stages.prune import prune_model
from stages.prune_config import PruneConfig
from stages.prune_refit import _layer_inputs, _out, refit_outputs
from tests.families import FAMILIES, build_family_model

HD, HEADS, KV, MLP, HIDDEN = 16, 4, 2, 128, 64
ROWS = {Slot.Q: HEADS * HD, Slot.K: KV * HD, Slot.V: KV * HD, Slot.GATE: MLP, Slot.UP: MLP}
FUSED = {Slot.Q: Slot.QKV, Slot.K: Slot.QKV, Slot.V: Slot.QKV, Slot.GATE: Slot.GATE_UP, Slot.UP: Slot.GATE_UP}
ORDER = {Slot.QKV: (Slot.Q, Slot.K, Slot.V), Slot.GATE_UP: (Slot.GATE, Slot.UP)}


@pytest.fixture(scope="module", params=FAMILIES)
def teacher(request, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoModelForCausalLM

    root = build_family_model(request.param, tmp_path_factory.mktemp(request.param))
    return AutoModelForCausalLM.from_pretrained(root).eval()


def _ids(model: Any, n: int, seed: int, length: int = 40) -> list[torch.Tensor]:
    """Random token batches (1, length); longer than Gemma 3's test window of 8."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (1, length), generator=g) for _ in range(n)]


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _layers(model: Any) -> nn.ModuleList:
    return model.get_submodule(spec_for(model).layers_path)


def _module(layer: nn.Module, model: Any, slot: Slot) -> nn.Linear:
    return layer.get_submodule(spec_for(model).module_path(slot))


def _rows(layer: nn.Module, model: Any, slot: Slot, idx: range) -> tuple[nn.Linear, list[int]]:
    """The Linear holding rows ``idx`` of ``slot`` and their row numbers in it."""
    spec = spec_for(model)
    if spec.has(slot):
        return _module(layer, model, slot), list(idx)
    fused = FUSED[slot]
    start = sum(ROWS[p] for p in ORDER[fused][: ORDER[fused].index(slot)])
    return _module(layer, model, fused), [start + i for i in idx]


def _zero_rows(layer: nn.Module, model: Any, slot: Slot, idx: range) -> None:
    linear, rows = _rows(layer, model, slot, idx)
    linear.weight[rows] = 0
    if linear.bias is not None:
        linear.bias[rows] = 0


def _kill(model: Any) -> None:
    """KV group 0 (via its V rows) and head 3 (via its O columns) add nothing, nor do MLP channels
    0..63 (via their UP rows); layer 0 adds nothing at all."""
    with torch.no_grad():
        for layer in _layers(model):
            _zero_rows(layer, model, Slot.V, range(0, HD))
            _module(layer, model, Slot.O).weight[:, 3 * HD :] = 0
            _zero_rows(layer, model, Slot.UP, range(0, 64))
        for slot in (Slot.O, Slot.DOWN):
            linear = _module(_layers(model)[0], model, slot)
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()


def _expected_shapes(model: Any) -> dict[Slot, tuple[int, int]]:
    """1 head over 1 KV head, MLP 64."""
    spec = spec_for(model)
    attn = (
        {Slot.QKV: (3 * HD, HIDDEN)}
        if spec.has(Slot.QKV)
        else {s: (HD, HIDDEN) for s in (Slot.Q, Slot.K, Slot.V)}
    )
    mlp = (
        {Slot.GATE_UP: (128, HIDDEN)}
        if spec.has(Slot.GATE_UP)
        else {Slot.GATE: (64, HIDDEN), Slot.UP: (64, HIDDEN)}
    )
    return {**attn, **mlp, Slot.O: (HIDDEN, HD), Slot.DOWN: (HIDDEN, 64)}


def _reloads_equal(model: Any, tmp_path: Path, ids: torch.Tensor) -> Any:
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(again, ids), _logits(model, ids), atol=1e-5)
    return again


def _prune_dead(teacher: Any) -> tuple[Any, Any, Any, list]:
    """(the teacher with dead structure, it pruned of exactly that structure, PruneStats, the dead
    model's weight inventory)."""
    dead, n = copy.deepcopy(teacher), len(_layers(teacher))
    _kill(dead)
    config = PruneConfig.parse(f"heads=1,kv_heads=1,mlp=64,layers={n - 1}")
    pruned, stats = prune_model(copy.deepcopy(dead), config, _ids(dead, 2, seed=0))
    return dead, pruned, stats, weight_inventory(dead)


def test_dead_structure_goes_and_the_function_stays(teacher, tmp_path: Path) -> None:
    dead, pruned, stats, inventory = _prune_dead(teacher)
    n, ids = len(_layers(teacher)), _ids(teacher, 1, seed=1)[0]
    assert stats.kept_layers == list(range(1, n)) and stats.kept_heads == [[2]] * (n - 1)
    assert stats.shape_after == {"layers": n - 1, "heads": 1, "kv_heads": 1, "head_dim": HD, "mlp": 64}
    assert torch.allclose(_logits(pruned, ids), _logits(dead, ids), atol=1e-5)
    for layer in _layers(pruned):
        for slot, shape in _expected_shapes(pruned).items():
            assert tuple(_module(layer, pruned, slot).weight.shape) == shape, slot
    types = list(getattr(teacher.config, "layer_types", None) or [])
    if types:  # a kept layer keeps its sliding/full attention (Gemma 3: the global layer stays global)
        assert pruned.config.layer_types == types[1:]
    # --prune auto's projection lists what weight_inventory now lists (the table alone: no biases)
    after = sorted((w.name, w.shape, w.role) for w in weight_inventory(pruned))
    facts = facts_from_config(teacher.config, 0)
    exact = prune_auto.shape_inventory(facts, 1, 1, 64, n - 1, inventory)
    table = prune_auto.shape_inventory(facts, 1, 1, 64, n - 1)
    assert sorted((w.name, w.shape, w.role) for w in exact) == after
    assert sorted((w.name, w.shape, w.role) for w in table) == [
        w for w in after if not w[0].endswith(".bias")
    ]
    again = _reloads_equal(pruned, tmp_path, ids)
    greedy: dict[str, Any] = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(again.generate(ids, **greedy), pruned.generate(ids, **greedy))


def test_refit_after_an_exact_prune_changes_nothing(teacher) -> None:
    """Student layer i is fitted to teacher layer i + 1 (layer 0 was dropped): an exact fixed point."""
    dead, pruned, stats, _ = _prune_dead(teacher)
    ids = _ids(teacher, 1, seed=1)[0]
    report = refit_outputs(pruned, dead, _ids(teacher, 4, seed=0), teacher_layers=stats.kept_layers)
    assert [r["teacher_layer"] for r in report["layers"]] == stats.kept_layers
    assert all(
        r["o_proj_error_before"] < 1e-9 and r["down_proj_error_before"] < 1e-9 for r in report["layers"]
    )
    assert torch.allclose(_logits(pruned, ids), _logits(dead, ids), atol=1e-4)


def test_cached_layer_inputs_reproduce_the_forward(teacher) -> None:
    """The refit runs layers on cached inputs; each layer's own keyword arguments (its sliding or full
    attention mask) must give what the model's forward gives."""
    ids = _ids(teacher, 2, seed=3)
    states, kwargs = _layer_inputs(teacher, ids)
    last: list[torch.Tensor] = []
    handle = _layers(teacher)[-1].register_forward_hook(lambda _m, _a, y: last.append(_out(y)))
    try:
        for b in ids:
            _logits(teacher, b)
    finally:
        handle.remove()
    with torch.no_grad():
        for i, layer in enumerate(_layers(teacher)):
            states = [_out(layer(h, **kw)) for h, kw in zip(states, kwargs[i], strict=True)]
    for got, want in zip(states, last, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_live_pruning_keeps_gqa_reloads_and_refit_recovers(teacher, tmp_path: Path) -> None:
    calib, heldout = _ids(teacher, 16, seed=0, length=64), _ids(teacher, 1, seed=7, length=256)[0]
    student, stats = prune_model(copy.deepcopy(teacher), PruneConfig.parse("heads=2,mlp=64"), calib)
    assert all(h[0] < 2 <= h[1] for h in stats.kept_heads)  # one head from each KV group
    cfg = student.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, HD)
    _reloads_equal(student, tmp_path, heldout[:, :64])
    kl_before = compare(student, teacher, heldout[0].tolist())["mean_kl"]
    report = refit_outputs(student, teacher, calib)
    kl_after = compare(student, teacher, heldout[0].tolist())["mean_kl"]
    sandwich = spec_for(teacher).sandwich_norms  # Gemma 3: fits the projection outputs instead
    assert report["target"] == ("projection" if sandwich else "residual")
    assert ("target_fallback" in report) == sandwich
    for proj in ("o_proj", "down_proj"):
        assert report[f"mean_{proj}_error_after"] < report[f"mean_{proj}_error_before"]
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)  # measured ratios 0.47-0.84


@pytest.mark.parametrize("method", [Importance.ACTIVATION, Importance.TAYLOR, Importance.MAGNITUDE])
def test_every_importance_scores_dead_structure_zero(teacher, method: Importance) -> None:
    model = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer in _layers(model):
            _module(layer, model, Slot.O).weight[:, HD : 2 * HD] = 0  # head 1 adds nothing
            _zero_rows(layer, model, Slot.UP, range(0, 32))  # nor do channels 0..31
    scores = score(model, _ids(model, 2, seed=0), method)
    dead_heads, dead_channels = scores.heads[:, 1], scores.channels[:, :32]
    assert scores.heads.shape == (len(_layers(model)), HEADS) and scores.channels.shape[1] == MLP
    assert dead_heads.abs().max() < 1e-12 and dead_channels.abs().max() < 1e-12
    assert scores.heads[:, [0, 2, 3]].min() > 0 and scores.channels[:, 32:].min() > 0
