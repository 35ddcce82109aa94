"""compress with nothing pinned: the search, its report, recipe.toml and --recipe replays, plan."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from compressor.cli import main
from compressor.errors import ExitCode


def _compress(model: Path, profile: Path, out: Path, *extra: str) -> int:
    return main(["compress", str(model), "--device", str(profile), "--out", str(out), "--quiet", *extra])


def _plan(model: Path, profile: Path, capsys, *extra: str) -> list[dict]:
    assert main(["plan", str(model), "--device", str(profile), "--json", *extra]) in (0, 1)
    return json.loads(capsys.readouterr().out)["candidates"]


def test_plan_lists_candidates_with_projections(tiny_model_dir: Path, tiny_profile: Path, capsys) -> None:
    cands = _plan(tiny_model_dir, tiny_profile, capsys)
    labels = [c["candidate"] for c in cands]
    assert "gguf:Q4_0" in labels and "gguf:Q8_0" in labels
    assert any(lbl.startswith("gguf:mixed <=") for lbl in labels)
    for c in cands:
        assert c["projected"]["size_mib"] > 0 and c["projected"]["decode_ms"] > 0
    # a size budget below Q8_0's drops it, saying which budget it misses
    q8 = next(c for c in cands if c["candidate"] == "gguf:Q8_0")["projected"]["size_mib"]
    q4 = next(c for c in cands if c["candidate"] == "gguf:Q4_0")["projected"]["size_mib"]
    cands = _plan(tiny_model_dir, tiny_profile, capsys, "--max-size-mib", str((q4 + q8) / 2))
    q8c = next(c for c in cands if c["candidate"] == "gguf:Q8_0")
    assert q8c["status"] == "dropped" and "max_size_mib" in q8c["why"]


def test_search_chooses_a_fitting_mixed_plan_and_the_recipe_replays_it_byte_for_byte(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    cands = _plan(tiny_model_dir, tiny_profile, capsys)
    q4 = next(c for c in cands if c["candidate"] == "gguf:Q4_0")["projected"]["size_mib"]
    smallest = min(c["projected"]["size_mib"] for c in cands)
    budget = (smallest + q4) / 2  # below every uniform type: only mixed plans fit
    out = tmp_path / "out"
    assert _compress(tiny_model_dir, tiny_profile, out, "--max-size-mib", f"{budget:.6f}") == 0
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    chosen = [c for c in search["candidates"] if c["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["candidate"].startswith("gguf:mixed")
    assert chosen[0]["measured"]["fits"] and chosen[0]["measured"]["file_mib"] <= budget
    assert all(c["status"] == "dropped" for c in search["candidates"] if c["candidate"] == "gguf:Q4_0")
    finalists = [c for c in search["candidates"] if c["status"] in ("chosen", "finalist")]
    assert all(c["measured"]["kl"] >= chosen[0]["measured"]["kl"] for c in finalists if c["measured"]["fits"])
    assert (out / "candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "candidates.png" in (out / "report.md").read_text()
        and "| **chosen** |" in (out / "report.md").read_text()
    )

    recipe = tomllib.loads((out / "recipe.toml").read_text())
    assert recipe["settings"]["quant"] == "gguf:mixed" and recipe["settings"]["ptq"] == "gptq"
    plan = recipe["settings"]["plan"]["gguf"]
    assert len(plan) >= 7 and set(plan.values()) <= {"IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    assert recipe["data"][0]["path"].startswith("builtin:") and len(recipe["data"][0]["sha256"]) == 64

    replay = tmp_path / "replay"
    assert main(["compress", "--recipe", str(out / "recipe.toml"), "--out", str(replay), "--quiet"]) == 0
    assert (replay / "model.gguf").read_bytes() == (out / "model.gguf").read_bytes()
    assert json.loads((replay / "report.json").read_text())["search"] is None  # replayed, not searched


def test_recipe_is_a_closed_schema_and_pins_the_configuration(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert _compress(tiny_model_dir, tiny_profile, out, "--quant", "gguf:Q8_0") == 0
    text = (out / "recipe.toml").read_text()
    assert 'quant = "gguf:Q8_0"' in text and 'chosen_by = "flags"' in text
    capsys.readouterr()

    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[settings]\n", "[settings]\nquant_typo = 1\n"))
    code = main(["compress", "--recipe", str(bad), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "settings.quant_typo: unknown key" in err
    assert not (tmp_path / "x").exists()

    code = main(
        [
            "compress",
            "--recipe",
            str(out / "recipe.toml"),
            "--out",
            str(tmp_path / "y"),
            "--quant",
            "gguf:Q4_0",
        ]
    )
    assert code != 0 and "--quant" in capsys.readouterr().err

    other = tmp_path / "other.toml"
    other.write_text(text.replace('model_sha256 = "', 'model_sha256 = "0'))
    code = main(["compress", "--recipe", str(other), "--out", str(tmp_path / "z")])
    assert code == ExitCode.BAD_INPUT and "not the one the recipe was written for" in capsys.readouterr().err


def test_a_budget_no_quantization_meets_makes_the_search_prune(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    """Size here (latency projections are calibrated by a host measurement, which a tiny model makes
    noisy); SmolLM2 with --max-decode-ms is in docs/benchmarks.md."""
    cands = _plan(tiny_model_dir, tiny_profile, capsys)
    limit = 0.9 * min(c["projected"]["size_mib"] for c in cands)
    plan = ["plan", str(tiny_model_dir), "--device", str(tiny_profile), "--max-size-mib", str(limit)]
    assert main(plan) == 0
    assert "would prune to" in capsys.readouterr().err
    out = tmp_path / "out"
    code = _compress(tiny_model_dir, tiny_profile, out, "--max-size-mib", str(limit))
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["message"]
    assert "no quantization alone fits" in report["search"]["pruned"]
    assert any(s["stage"] == "prune" for s in report["stages"])
    size = [c for c in report["checks"] if c["budget"] == "max_size_mib"]
    assert size and all(c["passed"] and c["value"] <= limit for c in size)
    recipe = tomllib.loads((out / "recipe.toml").read_text())
    assert recipe["settings"]["prune"].startswith("heads=")


def test_nothing_fits_names_the_closest_candidate_and_the_budget(
    tiny_model_dir: Path, tiny_profile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert _compress(tiny_model_dir, tiny_profile, out, "--max-ram-mib", "1") == ExitCode.BUDGET_MISSED
    report = json.loads((out / "report.json").read_text())
    assert "closest candidate" in report["search"]["nothing_fits"]
    assert "max_ram_mib" in report["search"]["nothing_fits"]
    assert not (out / "model.gguf").exists()


def test_every_setting_is_a_flag_and_a_recipe_field() -> None:
    """config.Settings is the one definition: each field has a compress flag (or is recipe-only)."""
    from compressor.cli import build_parser, settings_flags
    from compressor.config import CompressRequest, Settings

    flags = settings_flags()
    parser = build_parser()
    compress = parser._subparsers._group_actions[0].choices["compress"]  # type: ignore[union-attr]
    dests = {a.dest for a in compress._actions}
    for name, field in CompressRequest.model_fields.items():
        if (field.json_schema_extra or {}).get("recipe_only"):
            assert name in Settings.model_fields
            continue
        assert name in dests, f"{name} has no flag"
        assert name in flags
    assert dests - {"help", "quiet"} == set(flags)
