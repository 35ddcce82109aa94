"""ONNX export of the tiny encoders (BERT embedding, BERT classifier, RoBERTa), run in onnxruntime."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.artifact import QuantizedTensor
from compressor.encoder import Task, max_length, tokenize
from compressor.loading import load_model
from compressor.onnx_blocks import quantize_int8_sym
from compressor.quant import QuantScheme
from stages.quantize import quantize_model
from tests.encoders import ENCODER_KINDS, SENTENCES, build_encoder_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from exporters.onnx_encoder import (  # noqa: E402
    export_encoder_onnx,
    feeds,
    ort_session,
    time_batch,
    validate_encoder_onnx,
)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("encoders")
    return {kind: load_model(str(build_encoder_model(kind, root))) for kind in ENCODER_KINDS}


def _quantized(artifact, spec: str):
    scheme = QuantScheme.parse(spec)
    model, packed, _ = quantize_model(copy.deepcopy(artifact.model), scheme)
    return artifact.evolve("quantize", model=model, scheme=scheme, quantized=packed)


def _per_row_int8(artifact):
    """Every 2-D weight in our int8 codec with one block per row (a scale per output channel)."""
    model, packed = copy.deepcopy(artifact.model), {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            bq = quantize_int8_sym(p.detach().numpy(), p.shape[1])
            packed[name] = QuantizedTensor(kind="int8", shape=tuple(p.shape), data=bq)
            with torch.no_grad():
                p.copy_(torch.from_numpy(bq.dequantize()))
    return artifact.evolve("quantize", model=model, scheme=QuantScheme.parse("onnx:int8"), quantized=packed)


def _check(stats: dict, task: Task, cos: float, logit: float) -> None:
    if task is Task.CLASSIFICATION:
        assert stats["max_abs_logit_diff"] < logit and stats["label_agreement"] == 1.0, stats
    else:
        assert stats["min_cosine"] > cos, stats


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_fp32_graph_matches_torch_with_pooling_inside(encoders, tmp_path: Path, kind: str) -> None:
    art = encoders[kind]
    files, facts = export_encoder_onnx(art, tmp_path)
    path = files[0]
    assert path == tmp_path / "onnx" / "model.onnx" and (path.parent / "tokenizer.json").is_file()
    want_out = "logits" if art.model.task is Task.CLASSIFICATION else "sentence_embedding"
    assert facts["outputs"] == [want_out] and facts["file_bytes"] == path.stat().st_size
    types = ["token_type_ids"] if kind != "roberta" else []  # RoBERTa: type vocabulary of one
    assert facts["inputs"] == ["input_ids", "attention_mask", *types]
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in model.graph.output] == [want_out]
    _check(validate_encoder_onnx(path, art, SENTENCES), art.model.task, cos=0.9999, logit=1e-4)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("spec", ["onnx:int8", "onnx:int4"])
def test_quantized_file_runs_like_the_fake_quantized_torch_model(
    encoders, tmp_path: Path, kind: str, spec: str
) -> None:
    art = _quantized(encoders[kind], spec)
    # accuracy level 0 (fp32 activations): the file computes what the torch model holds
    files, facts = export_encoder_onnx(art, tmp_path / "l0", accuracy_level=0)
    n_linear = sum(1 for n in art.quantized if "embeddings" not in n)
    assert facts["rewritten"]["MatMulNBits"] == n_linear
    assert facts["rewritten"]["GatherBlockQuantized"] == 3  # word, position, token type
    assert facts["ops"]["MatMulNBits"] == n_linear
    graph = onnx.load(str(files[0])).graph
    weights = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    _check(validate_encoder_onnx(files[0], art, SENTENCES), art.model.task, cos=0.99999, logit=1e-3)
    # the default, accuracy level 4 (int8 activations), with the transformer fusions: close, not exact
    files, facts = export_encoder_onnx(art, tmp_path / "l4", fuse=True)
    assert facts["accuracy_level"] == 4 and "MultiHeadAttention" in facts["ops"]
    _check(validate_encoder_onnx(files[0], art, SENTENCES), art.model.task, cos=0.999, logit=0.05)


@pytest.mark.parametrize("kind", ["st-bert", "bert-cls"])
def test_per_row_int8_uses_the_integer_gemm(encoders, tmp_path: Path, kind: str) -> None:
    art = _per_row_int8(encoders[kind])
    files, facts = export_encoder_onnx(art, tmp_path)
    n_linear = sum(1 for n in art.quantized if "embeddings" not in n)
    assert facts["rewritten"]["MatMulIntegerToFloat"] == n_linear
    assert "MatMulNBits" not in facts["ops"] and "fusions" not in facts  # unfused by default
    # Q, K and V share one quantization of their input
    assert facts["ops"]["DynamicQuantizeLinear"] < facts["ops"]["MatMulIntegerToFloat"]
    _check(validate_encoder_onnx(files[0], art, SENTENCES), art.model.task, cos=0.999, logit=0.05)


@pytest.mark.parametrize("kind", ["st-bert", "roberta"])
def test_dynamic_batch_and_sequence_axes(encoders, tmp_path: Path, kind: str) -> None:
    art = _quantized(encoders[kind], "onnx:int8")
    files, _ = export_encoder_onnx(art, tmp_path, accuracy_level=0)
    session = ort_session(files[0], threads=1)
    n = max_length(art.model, art.tokenizer)
    for texts in (SENTENCES[:2], SENTENCES[:7]):  # different batch sizes and padded lengths
        batch = tokenize(art.tokenizer, texts, n)
        got = session.run(None, feeds(session, batch))[0]
        with torch.no_grad():
            ref = art.model(**batch).numpy()
        assert got.shape == ref.shape == (len(texts), 64)
        assert np.allclose(got, ref, atol=1e-4)
    timing = time_batch(session, tokenize(art.tokenizer, SENTENCES, n), runs=3, warmup=1)
    assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["p90_ms"]
