"""Pruning the real SmolLM2-135M: importance that beats chance, shapes that load, export and run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from compressor.metrics import compare
from exporters import llama_runtime, ort_runtime
from exporters.onnx import load_ort_causal_lm
from stages.prune import prune_model
from stages.prune_config import PruneConfig
from tests.conftest import LICENSE_TEXT
from tests.integration.conftest import chat_prompt, cli

pytestmark = pytest.mark.integration


def test_activation_importance_beats_random_on_heldout_text(smollm2) -> None:
    ids = smollm2.tokenizer(LICENSE_TEXT.read_text(encoding="utf-8")).input_ids
    calib = [torch.tensor([ids[i : i + 256]]) for i in range(0, 1536, 256)]  # tokens 0..1535
    heldout = ids[2048:2560]  # disjoint from the calibration text
    ppl = {}
    for method in ("activation", "random"):
        model, _ = prune_model(copy.deepcopy(smollm2.model), PruneConfig.parse("mlp=1024", method), calib)
        ppl[method] = compare(model, None, heldout)["perplexity"]
    print("held-out PPL after pruning MLP 1536->1024:", ppl)
    assert ppl["activation"] < ppl["random"] / 2


def test_pruned_to_6_heads_and_mlp_1024_exports_and_runs(smollm2, tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    proc = cli(
        "compress",
        "smollm2-135m",
        "--device",
        "host",
        "--prune",
        "heads=6,kv_heads=3,mlp=1024",
        "--quant",
        "gguf:Q4_0,onnx:int4",
        "--calib-tokens",
        "1024",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    prune = next(s for s in report["stages"] if s["stage"] == "prune")["summary"]
    assert prune["shape_after"] == {"layers": 30, "heads": 6, "kv_heads": 3, "head_dim": 64, "mlp": 1024}
    assert prune["heldout_kl_to_unpruned"] > 0 and prune["params_after"] < prune["params_before"]
    assert prune["heldout_kl_to_unpruned"] < 0.6 * prune["heldout_kl_before_refit"]  # the refit pays
    assert report["measured"]["model.gguf"]["heads"] == 6
    prompt = chat_prompt(smollm2.tokenizer)
    assert len(llama_runtime.greedy(out / "model.gguf", prompt, 8)) == 8
    assert len(ort_runtime.greedy(out / "onnx" / "model.onnx", prompt, 8)) == 8
    generated = load_ort_causal_lm(out / "onnx").generate(
        torch.tensor([prompt]),
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,  # not stopped by EOS
    )
    assert generated.shape[1] == len(prompt) + 4


def test_pruned_to_24_layers_reloads_and_generates(smollm2, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    ids = smollm2.tokenizer(LICENSE_TEXT.read_text(encoding="utf-8")).input_ids
    calib = [torch.tensor([ids[i : i + 256]]) for i in range(0, 1024, 256)]
    model, stats = prune_model(copy.deepcopy(smollm2.model), PruneConfig.parse("layers=24"), calib)
    assert stats.shape_after["layers"] == 24 and len(stats.kept_layers) == 24
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    smollm2.tokenizer.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    prompt = torch.tensor([chat_prompt(smollm2.tokenizer)])
    assert again.generate(prompt, max_new_tokens=6, do_sample=False).shape[1] == prompt.shape[1] + 6
    out = tmp_path / "OUT"
    proc = cli("compress", str(tmp_path / "m"), "--device", "host", "--quant", "gguf:Q4_0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["measured"]["model.gguf"]["layers"] == 24
