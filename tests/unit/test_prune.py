"""Structured pruning on the tiny model: exactness when only dead structure goes, legal configs."""

import copy
from pathlib import Path

import pytest
import torch

from compressor.artifact import weight_inventory
from compressor.budget import check_budgets, cost_from_plan, plan_tensors, project_footprint
from compressor.cli import main
from compressor.device_profile import load_profile
from compressor.errors import BudgetExceeded, ConfigError, ExitCode
from compressor.quant import QuantScheme
from stages import prune_auto
from stages.prune import prune_model
from stages.prune_config import PruneConfig, resolve
from tests.conftest import corpus


def _batches(artifact, n: int = 2) -> list[torch.Tensor]:
    ids = artifact.tokenizer(corpus()[:6000], add_special_tokens=False).input_ids
    return [torch.tensor([ids[i * 128 : (i + 1) * 128]]) for i in range(n)]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_removing_only_dead_structure_preserves_the_function(tiny_artifact) -> None:
    model = copy.deepcopy(tiny_artifact.model)
    hd = 16
    with torch.no_grad():
        for layer in model.model.layers:
            for head in (1, 3):  # one head in each KV group adds nothing to the residual stream
                layer.self_attn.o_proj.weight[:, head * hd : (head + 1) * hd] = 0
            layer.mlp.down_proj.weight[:, 64:] = 0  # half the MLP channels add nothing
        last = model.model.layers[1]  # and the last layer changes nothing at all
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    ids = _batches(tiny_artifact, 1)[0]
    before = _logits(model, ids)
    pruned, stats = prune_model(model, PruneConfig.parse("heads=2,mlp=64,layers=1"), _batches(tiny_artifact))
    assert stats.kept_layers == [0] and stats.kept_heads == [[0, 2]]
    assert stats.shape_after == {"layers": 1, "heads": 2, "kv_heads": 2, "head_dim": 16, "mlp": 64}
    assert (
        stats.params_after < stats.params_before and stats.macs_per_token_after < stats.macs_per_token_before
    )
    assert torch.allclose(_logits(pruned, ids), before, atol=1e-5)


def test_pruning_live_structure_changes_the_function(tiny_artifact) -> None:
    model = copy.deepcopy(tiny_artifact.model)
    ids = _batches(tiny_artifact, 1)[0]
    pruned, _ = prune_model(model, PruneConfig.parse("heads=2,mlp=64"), _batches(tiny_artifact))
    assert not torch.allclose(_logits(pruned, ids), _logits(tiny_artifact.model, ids), atol=1e-3)


def test_kv_group_pruning_keeps_gqa_consistent_and_reloads(tiny_artifact, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, _ = prune_model(
        copy.deepcopy(tiny_artifact.model), PruneConfig.parse("kv_heads=1,heads=1"), _batches(tiny_artifact)
    )
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (1, 1, 16)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = _batches(tiny_artifact, 1)[0]
    assert torch.allclose(_logits(again, ids), _logits(model, ids), atol=1e-6)
    out = again.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("mlp=1.5", "ratio"),
        ("heads=0", "removing all"),
        ("heads=3", "multiple of kv_heads"),
        ("mlp=100", "use 96 or 128"),
        ("layers=7", "only 2"),
        ("heads=4,kv_heads=1", "per group"),
    ],
)
def test_bad_configs_fail_with_the_reason(tiny_artifact, spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(PruneConfig.parse(spec), tiny_artifact.facts, 32)
    assert needle in err.value.render()


def test_unknown_key_and_unsupported_model(tiny_artifact) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        PruneConfig.parse("neurons=3")
    t5 = tiny_artifact.facts.model_copy(update={"architecture": "T5Model"})  # no registry entry
    with pytest.raises(ConfigError, match="T5Model"):
        resolve(PruneConfig.parse("mlp=64"), t5, 32)


def test_ratios_round_down_to_legal_widths(tiny_artifact) -> None:
    r = resolve(PruneConfig.parse("mlp=0.7,heads=0.5"), tiny_artifact.facts, 32)
    assert r.mlp == 64 and r.heads == 2  # 0.7 * 128 = 89 -> 64; 4 heads * 0.5 -> 1 per group


def test_cli_rejects_an_illegal_width_before_writing(
    tiny_model_dir, tiny_profile, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compress",
            str(tiny_model_dir),
            "--device",
            str(tiny_profile),
            "--out",
            str(out),
            "--prune",
            "mlp=100",
            "--quiet",
        ]
    )
    assert code == ExitCode.BAD_INPUT and "multiple of 32" in capsys.readouterr().err
    assert not out.exists()


def _projected_size(artifact, scheme, profile):
    inv = weight_inventory(artifact.model)
    return project_footprint(
        cost_from_plan(artifact.facts, inv, plan_tensors(inv, scheme), scheme.name), profile
    )


def test_auto_picks_the_largest_shape_that_fits(tiny_artifact) -> None:
    scheme = QuantScheme.parse("gguf:Q8_0")
    full = _projected_size(tiny_artifact, scheme, load_profile("host")).size.value
    profile = load_profile("host").with_budgets(max_size_mib=full * 0.85)
    config, why = prune_auto.choose(tiny_artifact.facts, [scheme], profile, 32)
    assert why["params"] < why["params_unpruned"] and why["unpruned_misses"]
    pruned, _ = prune_model(copy.deepcopy(tiny_artifact.model), config, _batches(tiny_artifact))
    art = tiny_artifact.evolve("prune", model=pruned)
    fp = _projected_size(art, scheme, profile)
    assert all(c.passed for c in check_budgets(fp, profile.budgets))
    with pytest.raises(BudgetExceeded, match="no uniform pruning"):
        prune_auto.choose(
            tiny_artifact.facts, [scheme], load_profile("host").with_budgets(max_size_mib=0.001), 32
        )


def test_auto_end_to_end_reports_its_choice(tiny_model_dir, tiny_profile, tmp_path: Path) -> None:
    from compressor.report import RunReport

    out = tmp_path / "out"
    args = ["--quant", "gguf:Q8_0", "--prune", "auto", "--max-size-mib", "0.085", "--calib-tokens", "256"]
    code = main(
        ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out), *args, "--quiet"]
    )
    assert code == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    prune = next(s for s in report.stages if s.stage == "prune")
    assert prune.summary["auto"]["chosen"].startswith("heads=") and "heldout_kl_to_unpruned" in prune.summary
    assert report.measured["model.gguf"]["file_bytes"] <= 0.085 * 2**20
