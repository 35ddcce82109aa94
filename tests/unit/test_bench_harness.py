"""The benchmark harness measures what it says: a model scored against itself has KL 0, a known
perturbation raises it, perplexity is exp(cross-entropy), and the plot/table helpers are well formed."""

import copy
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import markdown_table
from bench.harness import evaluate, perplexity, reference_logits, score
from bench.plot import pareto_svg
from compressor.quant import QuantScheme
from stages.quantize import quantize_model
from tests.conftest import corpus

pytest.importorskip("llama_cpp")


def _ids(artifact) -> list[int]:
    return artifact.tokenizer(corpus()[:4000], add_special_tokens=False).input_ids[:96]


def test_scores_of_logits_against_themselves_and_a_perturbation() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 40)).astype(np.float32)
    ids = list(rng.integers(0, 40, size=50))
    same = score(ref, ref, ids)
    assert same["mean_kl"] == pytest.approx(0.0, abs=1e-12) and same["top1_agreement"] == 1.0
    small = score(ref + 0.1 * rng.normal(size=ref.shape).astype(np.float32), ref, ids)
    large = score(ref + 1.0 * rng.normal(size=ref.shape).astype(np.float32), ref, ids)
    assert 0 < small["mean_kl"] < large["mean_kl"]
    logp = torch.log_softmax(torch.tensor(ref[:-1], dtype=torch.float64), -1)
    ce = -logp[torch.arange(49), torch.tensor(ids[1:])].mean().item()
    assert perplexity(ref, ids) == pytest.approx(math.exp(ce), rel=1e-9)


def test_a_gguf_in_llama_cpp_scores_near_zero_and_q4_0_scores_higher(tiny_artifact, tmp_path: Path) -> None:
    from exporters.gguf import export_gguf

    ids = _ids(tiny_artifact)
    ref = reference_logits(tiny_artifact.model, ids)
    f32 = evaluate(export_gguf(tiny_artifact, tmp_path, "f32.gguf"), ref, ids)
    scheme = QuantScheme.parse("gguf:Q4_0")
    q4, packed, _ = quantize_model(copy.deepcopy(tiny_artifact.model), scheme)
    q4_art = tiny_artifact.evolve("quantize", model=q4, scheme=scheme, quantized=packed)
    q4_path = export_gguf(q4_art, tmp_path, "q4.gguf")
    q4_scores = evaluate(q4_path, ref, ids)
    assert f32["mean_kl"] < 1e-3 and f32["top1_agreement"] > 0.97
    assert q4_scores["mean_kl"] > 10 * max(f32["mean_kl"], 1e-6)
    assert q4_scores["file_mib"] < f32["file_mib"]


def test_pareto_plot_and_table_are_well_formed() -> None:
    points = [
        {"label": "a", "family": "ours", "x": 80.0, "y": 0.05},
        {"label": "b <&>", "family": "llama.cpp", "x": 100.0, "y": 0.3},
    ]
    svg = ET.fromstring(pareto_svg(points, "t"))
    circles = [e for e in svg.iter() if e.tag.endswith("circle")]
    assert len(circles) == 2 + 3  # two points, three legend entries
    table = markdown_table(["x", "y"], [[1.23456, "s"]]).splitlines()
    assert table[0] == "| x | y |" and table[2] == "| 1.235 | s |"
