"""Encoders (BERT family) on tiny random models built in code: loading with sentence-transformers
pooling, pruning (layers, heads, FFN channels), each kind of distillation knowledge, the footprint
model, the agreement metrics, and the whole CLI chain to ONNX and GGUF with quality in the report."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compressor.cli import main
from compressor.encoder import PoolingMode, Task, encode, encoder_facts
from compressor.encoder_metrics import embedding_agreement, label_agreement, recall_at
from compressor.errors import ConfigError, ExitCode, ModelLoadError
from compressor.loading import load_model
from compressor.report import RunReport
from compressor.sentences import builtin_sentences, sentence_split
from stages.encoder_distill import EncoderDistillConfig, EncoderKD, Knowledge, distill_encoder, parse_losses
from stages.encoder_prune import EncoderPrune, kept_layers, prune_encoder, resolve_encoder
from stages.prune_config import PruneConfig
from tests.encoders import SENTENCES, build_encoder_model


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {k: build_encoder_model(k, root) for k in ("st-bert", "bert-cls", "roberta")}


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    train, held, _ = sentence_split([])
    return train[:400], held[:200]


def test_loading_reads_pooling_and_task(encoders: dict[str, Path]) -> None:
    st = load_model(str(encoders["st-bert"]))
    assert st.facts.task == "embedding" and st.facts.family == "bert"
    assert st.model.pooling.mode is PoolingMode.MEAN and st.model.pooling.normalize
    e = encode(st.model, st.tokenizer, SENTENCES)
    assert torch.allclose(e.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    cls = load_model(str(encoders["bert-cls"]))
    assert cls.facts.task == "classification" and cls.facts.n_labels == 3
    assert encode(cls.model, cls.tokenizer, SENTENCES).shape == (len(SENTENCES), 3)
    rob = load_model(str(encoders["roberta"]))
    assert rob.facts.family == "roberta" and rob.model.pooling.mode is PoolingMode.CLS
    assert rob.facts.max_context == 128  # positions after RoBERTa's offset of 2


def test_pooling_matches_a_hand_computation(encoders: dict[str, Path]) -> None:
    a = load_model(str(encoders["st-bert"]))
    enc = a.tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    hidden = a.model.base(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1)
    expect = mean / mean.norm(dim=-1, keepdim=True)
    assert torch.allclose(encode(a.model, a.tokenizer, SENTENCES[:2]), expect, atol=1e-5)


def test_unsupported_sentence_transformers_modules_are_refused(
    encoders: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(encoders["st-bert"], bad)
    pooling = json.loads((bad / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_tokens"], pooling["pooling_mode_mean_sqrt_len_tokens"] = False, True
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelLoadError, match="mean_sqrt_len"):
        load_model(str(bad))
    modules = json.loads((bad / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (bad / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"models\.Dense"):
        load_model(str(bad))


def test_kept_layers_are_spread_and_end_at_the_last() -> None:
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert kept_layers(4, 1) == [3]
    assert kept_layers(4, 4) == [0, 1, 2, 3]


def test_resolve_refuses_illegal_widths() -> None:
    facts = type("F", (), {"n_heads": 4, "head_dim": 16, "intermediate_size": 128, "n_layers": 4})()
    assert resolve_encoder(PruneConfig.parse("heads=2,mlp=64,layers=2"), facts, 32) == EncoderPrune(
        heads=2, mlp=64, layers=2
    )
    with pytest.raises(ConfigError) as err:
        resolve_encoder(PruneConfig.parse("heads=3,mlp=48,kv_heads=1"), facts, 32)
    text = err.value.render()
    assert "attention width of 48" in text and "mlp=48" in text and "kv_heads" in text


@pytest.mark.parametrize("kind", ["st-bert", "bert-cls", "roberta"])
def test_prune_shapes_and_reload(kind: str, encoders: dict[str, Path], tmp_path: Path, texts: Any) -> None:
    a = load_model(str(encoders[kind]))
    model = copy.deepcopy(a.model)
    summary = prune_encoder(model, EncoderPrune(heads=2, mlp=64, layers=2), a.tokenizer, texts[0][:64])
    assert summary["kept_layers"] == [1, 3]
    facts = encoder_facts(model)
    assert (facts.n_layers, facts.n_heads, facts.intermediate_size) == (2, 2, 64)
    out = encode(model, a.tokenizer, SENTENCES)
    model.save_pretrained(tmp_path)  # transformers rebuilds the same shapes from pruned_heads
    for extra in ("modules.json", "1_Pooling", "sentence_bert_config.json"):
        src = encoders[kind] / extra
        if src.is_dir():
            import shutil

            shutil.copytree(src, tmp_path / extra)
        elif src.exists():
            (tmp_path / extra).write_bytes(src.read_bytes())
    a.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert torch.allclose(encode(again.model, again.tokenizer, SENTENCES), out, atol=1e-5)


def test_head_importance_keeps_the_heads_that_matter(encoders: dict[str, Path], texts: Any) -> None:
    """Zero three heads' output columns: those must be the ones pruning removes."""
    a = load_model(str(encoders["st-bert"]))
    model = copy.deepcopy(a.model)
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.output.dense.weight[:, 16:64] = 0.0  # heads 1, 2, 3 contribute nothing
    summary = prune_encoder(model, EncoderPrune(heads=1, mlp=128, layers=4), a.tokenizer, texts[0][:32])
    assert all(v == [1, 2, 3] for v in summary["removed_heads"].values())


def _student(a: Any, texts: Any) -> Any:
    student = copy.deepcopy(a.model)
    prune_encoder(student, EncoderPrune(heads=4, mlp=128, layers=2), a.tokenizer, texts[0][:32])
    return student


@pytest.mark.parametrize(
    "losses",
    [
        {Knowledge.EMBEDDING: 1.0},
        {Knowledge.HIDDEN: 1.0},
        {Knowledge.ATTENTION: 1.0},
        {Knowledge.SIMILARITY: 1.0},
    ],
    ids=lambda d: next(iter(d)).value,
)
def test_each_knowledge_kind_alone_brings_the_student_closer(
    losses: dict[Knowledge, float], encoders: dict[str, Path], texts: Any
) -> None:
    a = load_model(str(encoders["st-bert"]))
    student = _student(a, texts)
    cfg = EncoderDistillConfig(
        losses=losses, max_minutes=5, max_tokens=80_000, lr=2e-3, eval_every=10**6, keep_best=False
    )
    kd = EncoderKD(a.model, student, cfg)
    from compressor.encoder import tokenize

    batches = [tokenize(a.tokenizer, texts[1][i : i + 32], 64) for i in range(0, 128, 32)]
    key = next(iter(losses)).value

    def held_out_loss(kd: EncoderKD) -> float:
        return sum(kd(b)[1][key] for b in batches) / len(batches)

    before = held_out_loss(kd)
    stats = distill_encoder(a.model, student, a.tokenizer, texts[0], texts[1], cfg)
    after = held_out_loss(EncoderKD(a.model, student, cfg))
    assert after < before * 0.9, (before, after)
    assert stats["steps"] > 10 and stats["knowledge"] == [
        {"embedding": "response", "hidden": "feature", "attention": "relation", "similarity": "relation"}[
            next(iter(losses)).value
        ]
    ]


def test_all_knowledge_with_qat_raises_heldout_cosine(encoders: dict[str, Path], texts: Any) -> None:
    from compressor.quant import QuantScheme
    from stages.fake_quant import fake_quant

    a = load_model(str(encoders["st-bert"]))
    student = _student(a, texts)
    cfg = EncoderDistillConfig(
        losses=parse_losses(None, Task.EMBEDDING), max_minutes=5, max_tokens=40_000, lr=1e-3
    )
    scheme = QuantScheme.parse("onnx:int8")
    stats = distill_encoder(a.model, student, a.tokenizer, texts[0], texts[1], cfg, qat=scheme)
    assert stats["heldout_cosine"] > stats["heldout_cosine_before"] + 0.01
    assert stats["qat"] == "onnx:int8"
    w = student.layers[0].attention.self.query.weight  # plain again: parametrizations removed
    assert type(w) is torch.nn.Parameter
    assert torch.equal(
        fake_quant(fake_quant(w, scheme, "int8"), scheme, "int8"), fake_quant(w, scheme, "int8")
    )


def test_feature_loss_learns_a_projection_when_widths_differ(tmp_path: Path, texts: Any) -> None:
    import transformers as tf

    from compressor.arch import spec_for
    from compressor.encoder import EncoderModel, Pooling

    teacher = load_model(str(build_encoder_model("st-bert", tmp_path)))
    cfg = tf.BertConfig(
        vocab_size=teacher.facts.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
    )
    narrow = EncoderModel(
        tf.BertModel(cfg, add_pooling_layer=False),
        spec_for(cfg),
        Task.EMBEDDING,
        Pooling(PoolingMode.MEAN, True),
    )
    kd = EncoderKD(
        teacher.model, narrow, EncoderDistillConfig(losses={Knowledge.HIDDEN: 1.0, Knowledge.ATTENTION: 1.0})
    )
    assert all(
        isinstance(p, torch.nn.Linear) and p.in_features == 32 and p.out_features == 64 for p in kd.proj
    )
    assert kd.rel_heads == 2  # relation heads: the student's head count divides both widths
    from compressor.encoder import tokenize

    loss, parts = kd(tokenize(teacher.tokenizer, texts[1][:8], 64))
    loss.backward()
    assert kd.proj[1].weight.grad is not None and set(parts) == {"hidden", "attention"}


def test_classifier_distils_logits(encoders: dict[str, Path], texts: Any) -> None:
    a = load_model(str(encoders["bert-cls"]))
    assert set(parse_losses(None, Task.CLASSIFICATION)) == {
        Knowledge.LOGITS,
        Knowledge.HIDDEN,
        Knowledge.ATTENTION,
    }
    with pytest.raises(ConfigError, match="classifier"):
        parse_losses("embedding", Task.CLASSIFICATION)
    with pytest.raises(ConfigError, match="unknown knowledge"):
        parse_losses("logits,vibes", Task.CLASSIFICATION)
    student = _student(a, texts)
    cfg = EncoderDistillConfig(losses={Knowledge.LOGITS: 1.0}, max_minutes=5, max_tokens=8000, lr=1e-3)
    t = encode(a.model, a.tokenizer, texts[1]).numpy()
    before = label_agreement(t, encode(student, a.tokenizer, texts[1]).numpy())["label_agreement"]
    distill_encoder(a.model, student, a.tokenizer, texts[0], texts[1], cfg)
    after = label_agreement(t, encode(student, a.tokenizer, texts[1]).numpy())["label_agreement"]
    assert after >= before and after > 0.6


def test_agreement_metrics() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(300, 16))
    assert recall_at(t, t, 10) == 1.0
    q = embedding_agreement(t, t + rng.normal(scale=0.05, size=t.shape))
    assert q["cosine_mean"] > 0.99 and q["recall@1"] > 0.8 and q["sentences"] == 300
    noise = embedding_agreement(t, rng.normal(size=t.shape))
    assert noise["recall@10"] < 0.2 and abs(noise["cosine_mean"]) < 0.1
    assert q["cosine_p5"] <= q["cosine_mean"]


def test_builtin_sentences_split_is_fixed_and_disjoint() -> None:
    train, held, source = sentence_split([])
    assert len(held) > 2500 and len(train) > 6000 and "PSF" in source
    assert not set(train) & set(held)
    assert len(builtin_sentences()) == len(train) + len(held)


def test_cli_chain_onnx_and_gguf_with_quality(encoders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compress", str(encoders["st-bert"]), "--device", "raspberry-pi-5", "--out", str(out), "--quiet"]
    args += ["--quant", "onnx:int8,gguf:Q8_0", "--prune", "layers=2,mlp=64", "--distill"]
    args += [
        "--distill-tokens",
        "6000",
        "--distill-lr",
        "1e-3",
        "--knowledge",
        "embedding,hidden=0.5,attention",
    ]
    assert main(args) == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    stages = {s.stage: s for s in report.stages}
    assert list(stages)[:3] == ["load", "prune", "distill"]
    assert stages["distill"].summary["knowledge"] == ["feature", "relation", "response"]
    assert stages["distill"].summary["heldout_cosine"] > stages["distill"].summary["heldout_cosine_before"]
    for label in ("onnx/model.onnx", "model.gguf"):
        m = report.measured[label]
        assert (
            m["vs_teacher_sentences"] >= 2500 and 0 < m["vs_teacher_cosine_p5"] <= m["vs_teacher_cosine_mean"]
        )
        assert 0 <= m["vs_teacher_recall@10"] <= 1
    assert {c.budget for c in report.checks} == {"max_size_mib", "max_ram_mib", "max_encode_ms"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"onnx/model.onnx", "model.gguf"} <= {f["path"] for f in manifest["files"]}


def test_cli_encoder_budget_missed_and_bad_requests(
    encoders: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    base = [
        "compress",
        str(encoders["st-bert"]),
        "--device",
        "raspberry-pi-5",
        "--quiet",
        "--quant",
        "onnx:int8",
    ]
    assert main([*base, "--out", str(tmp_path / "a"), "--max-encode-ms", "0.001"]) == ExitCode.BUDGET_MISSED
    report = RunReport.model_validate_json((tmp_path / "a" / "report.json").read_text())
    assert any(c.budget == "max_encode_ms" and not c.passed for c in report.checks)
    assert not (tmp_path / "a" / "onnx").exists()
    assert main([*base, "--out", str(tmp_path / "b"), "--prune", "heads=3"]) == ExitCode.BAD_INPUT
    assert "attention width" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--knowledge", "embedding"]) == ExitCode.BAD_INPUT
    assert main([*base, "--out", str(tmp_path / "d"), "--quant", "gguf:Q4_K_M"]) == ExitCode.BAD_INPUT
    assert main([*base, "--out", str(tmp_path / "e"), "--bundle"]) == ExitCode.BAD_INPUT
    assert "--bundle makes app bundles for text generators" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "bcde")


def test_gguf_that_llama_cpp_cannot_run_is_skipped_before_work(
    encoders: dict[str, Path], tmp_path: Path
) -> None:
    """Pruned heads: llama.cpp's BERT cannot load the file, so GGUF is skipped (said in the report) and
    the ONNX is still written; QAT on the per-channel scheme trains the smoothed weights it writes."""
    out = tmp_path / "out"
    args = ["compress", str(encoders["st-bert"]), "--device", "raspberry-pi-5", "--out", str(out), "--quiet"]
    args += [
        "--quant",
        "onnx:int8-channel,gguf:Q8_0",
        "--prune",
        "heads=2",
        "--qat",
        "--distill-tokens",
        "3000",
    ]
    assert main(args) == 0
    report = RunReport.model_validate_json((out / "report.json").read_text())
    stages = {s.stage: s.summary for s in report.stages}
    assert report.scheme == "onnx:int8-channel" and not (out / "model.gguf").exists()
    assert any("pruned" in why for why in stages["load"]["skipped"])
    assert stages["distill"]["qat"] == "onnx:int8-channel" and stages["distill"]["smoothing"]["groups"] == 12
    assert "smoothing" not in stages["quantize[onnx:int8-channel]"]  # already smoothed before QAT
    assert report.measured["onnx/model.onnx"]["vs_teacher_cosine_mean"] > 0.5
