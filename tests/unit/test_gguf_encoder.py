"""GGUF export of the tiny BERT-family encoders, run through llama.cpp's embedding path."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compressor.errors import ConfigError
from compressor.quant import QuantScheme
from stages.quantize import quantize_model
from tests.encoders import SENTENCES, build_encoder_model

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from exporters.gguf_encoder import (  # noqa: E402  (after the skips)
    encoder_gguf_problems,
    export_encoder_gguf,
    gguf_embed,
    validate_encoder_gguf,
)

TEXTS = [
    *SENTENCES,
    "Héllo Wörld, CAFÉ naïve: accents and CAPITALS",
    "中文 测试 mixed with text",
    "[CLS] special tokens [SEP] written in the text",
    "tabs\tand\nnew lines,   spaces  ",
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {kind: build_encoder_model(kind, root) for kind in ("st-bert", "bert-cls", "roberta")}


def _load(path: Path):
    from compressor.loading import load_model

    return load_model(str(path))


def _quantized(artifact, spec: str):
    scheme = QuantScheme.parse(spec)
    model, packed, _ = quantize_model(copy.deepcopy(artifact.model), scheme)
    return artifact.evolve("quantize", model=model, scheme=scheme, quantized=packed)


@pytest.mark.parametrize("kind", ["st-bert", "bert-cls", "roberta"])
def test_f32_matches_torch_in_llama_cpp(encoders: dict[str, Path], tmp_path: Path, kind: str) -> None:
    artifact = _load(encoders[kind])
    assert encoder_gguf_problems(artifact) == []
    paths, summary = export_encoder_gguf(artifact, tmp_path)
    assert paths == [tmp_path / "model.gguf"]
    assert summary["pooling"] == {"st-bert": "mean", "bert-cls": "rank", "roberta": "cls"}[kind]
    stats = validate_encoder_gguf(paths[0], artifact, TEXTS)
    assert stats["token_ids_equal"] == len(TEXTS)
    assert stats["min_cosine"] > 0.9999
    if kind == "bert-cls":
        assert stats["argmax_agreement"] == 1.0


@pytest.mark.parametrize(("kind", "scheme"), [("st-bert", "Q8_0"), ("st-bert", "Q4_0"), ("roberta", "Q4_0")])
def test_quantized_file_matches_torch_with_the_same_weights(
    encoders: dict[str, Path], tmp_path: Path, kind: str, scheme: str
) -> None:
    artifact = _quantized(_load(encoders[kind]), f"gguf:{scheme}")
    paths, summary = export_encoder_gguf(artifact, tmp_path)
    assert summary["tensor_types"].get(scheme, 0) >= 24  # every layer matrix in the packed type
    stats = validate_encoder_gguf(paths[0], artifact, TEXTS)
    assert stats["compared_with"] == "torch model with the same weights"
    assert stats["token_ids_equal"] == len(TEXTS)
    assert stats["min_cosine"] > 0.999  # what remains: llama.cpp's 8-bit activations in quantized dots


def test_classifier_logits_quantized(encoders: dict[str, Path], tmp_path: Path) -> None:
    artifact = _quantized(_load(encoders["bert-cls"]), "gguf:Q8_0")
    paths, _ = export_encoder_gguf(artifact, tmp_path)
    stats = validate_encoder_gguf(paths[0], artifact, TEXTS)
    assert stats["argmax_agreement"] == 1.0 and stats["min_cosine"] > 0.999
    logits = gguf_embed(paths[0], TEXTS[:2])
    assert logits.shape == (2, 3)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(paths[0]).tensors}
    assert types["cls.output.weight"] == "Q8_0"
    assert types["token_types.weight"] == "F32"  # llama.cpp adds this row as it is: a packed one aborts


def test_file_layout(encoders: dict[str, Path], tmp_path: Path) -> None:
    cls_dir, rob_dir = tmp_path / "cls", tmp_path / "rob"
    cls_dir.mkdir(), rob_dir.mkdir()
    reader = gguf.GGUFReader(export_encoder_gguf(_load(encoders["bert-cls"]), cls_dir)[0][0])
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "bert"
    assert fields["bert.attention.causal"] is False
    assert fields["bert.pooling_type"] == int(gguf.PoolingType.RANK)
    assert fields["bert.classifier.output_labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert fields["tokenizer.ggml.model"] == "bert"
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[fields["tokenizer.ggml.cls_token_id"]] == "[CLS]"  # special tokens as they are
    assert any(t.startswith("\u2581") for t in tokens) and not any(t.startswith("##") for t in tokens)
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert shapes["cls.weight"] == (64, 64) and shapes["cls.output.weight"] == (64, 3)

    rob = gguf.GGUFReader(export_encoder_gguf(_load(encoders["roberta"]), rob_dir)[0][0])
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in rob.tensors}
    assert shapes["position_embd.weight"] == (64, 128)  # RoBERTa's first two position rows dropped
    assert not any(n.startswith("cls") for n in shapes)
    assert rob.fields["bert.context_length"].contents() == 128
    assert rob.fields["tokenizer.ggml.model"].contents() == "gpt2"


def test_gguf_embed_normalises_on_request(encoders: dict[str, Path], tmp_path: Path) -> None:
    paths, summary = export_encoder_gguf(_load(encoders["st-bert"]), tmp_path)
    assert summary["normalize"] is True
    raw = gguf_embed(paths[0], TEXTS[:3])
    unit = gguf_embed(paths[0], TEXTS[:3], normalize=True)
    assert unit.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # llama.cpp itself does not normalise


def _with_pooling(src: Path, dst: Path, mode: str) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "1_Pooling" / "config.json").read_text())
    cfg |= {k: False for k in cfg if k.startswith("pooling_mode_")} | {f"pooling_mode_{mode}_tokens": True}
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return dst


def test_problems_reported_before_any_work(encoders: dict[str, Path], tmp_path: Path) -> None:
    from compressor.encoder import encoder_facts

    out = tmp_path / "out"
    out.mkdir()
    maxed = _load(_with_pooling(encoders["st-bert"], tmp_path / "max", "max"))
    assert any("max pooling" in p for p in encoder_gguf_problems(maxed))
    with pytest.raises(ConfigError) as err:
        export_encoder_gguf(maxed, out)
    assert any("max pooling" in p for p in err.value.problems)
    assert list(out.iterdir()) == []

    pruned = _load(encoders["st-bert"])
    pruned.model.base.prune_heads({i: [0] for i in range(len(pruned.model.layers))})
    pruned = dataclasses.replace(pruned, facts=encoder_facts(pruned.model))
    assert any("pruned attention" in p for p in encoder_gguf_problems(pruned))

    relu = _load(encoders["roberta"])
    relu.model.config.hidden_act = "relu"
    assert any("activation 'relu'" in p for p in encoder_gguf_problems(relu))
