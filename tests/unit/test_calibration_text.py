"""Calibration text: the built-in general-text sample, its held-out split, and teacher-written text
(batched, answers cut at EOS, cached per model)."""

from __future__ import annotations

import functools
import random
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from compressor import calibration, textdata
from compressor.calibration import calibration_ids, token_stream
from compressor.textdata import builtin_docs, builtin_split, is_heldout, teacher_texts, tokenize_docs


def test_the_sample_is_varied_general_english_and_its_notice_matches_it() -> None:
    docs = builtin_docs()
    text = "\n".join(docs)
    assert len(docs) >= 200 and 300_000 <= len(text) <= 400_000
    assert all(d.strip() == d and "\n\n" not in d for d in docs)
    # the three works, each more than a token presence: encyclopedic, narrative, drama
    assert sum("independence" in d for d in docs) >= 20
    assert sum("said Alice" in d for d in docs) >= 30
    assert sum("ROSALIND:" in d for d in docs) >= 5
    kinds = [("ROSALIND:" in d or "ORLANDO:" in d, "Alice" in d) for d in docs[:12]]
    assert len(set(kinds)) >= 2  # the fixed shuffle mixes the kinds from the start
    notice = resources.files("compressor.data").joinpath("NOTICE.txt").read_text(encoding="utf-8")
    assert f"{len(text) - len(docs) + 1:,} characters in {len(docs)} documents" in notice


def test_the_split_is_fixed_by_content_and_disjoint() -> None:
    train, held = builtin_split()
    assert (train, held) == builtin_split()
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(builtin_docs())
    assert 0.05 <= len(held) / (len(train) + len(held)) <= 0.2
    shuffled = builtin_docs()
    random.Random(1).shuffle(shuffled)  # a document's side does not depend on where it stands
    assert {d for d in shuffled if is_heldout(d)} == set(held)


def test_without_files_the_stream_is_the_sample_and_never_trains_on_held_out_text(tiny_artifact) -> None:
    tok = tiny_artifact.tokenizer
    train, held, source = token_stream(tiny_artifact, [], 1000)
    assert source == textdata.GENERAL_TEXT_SOURCE
    assert len(train) == 1000 and len(held) == calibration.SAMPLE_HELDOUT_MIN_TOKENS
    train_docs, held_docs = builtin_split()
    assert train == tokenize_docs(train_docs[:20], tok)[:1000]
    assert held == tokenize_docs(held_docs[:20], tok)[: len(held)]
    batches, held2, _ = calibration_ids(tiny_artifact, [], 1000)
    assert [b.shape for b in batches] == [torch.Size([1, calibration.SEQ_LEN])] * 3
    assert held2 == held


def test_the_held_out_share_grows_with_the_request_within_bounds(tiny_artifact) -> None:
    _, held, _ = token_stream(tiny_artifact, [], 8 * 1500)
    assert len(held) == 1500
    _, held, _ = token_stream(tiny_artifact, [], 8 * 10_000)
    assert len(held) == calibration.SAMPLE_HELDOUT_MAX_TOKENS


def test_the_users_files_win_over_the_sample_and_the_teacher(tiny_artifact, tmp_path: Path) -> None:
    data = tmp_path / "mine.txt"
    data.write_text("Some text of my own about boats and harbours. " * 200, encoding="utf-8")
    for teacher in (False, True):
        _, _, source = token_stream(tiny_artifact, [data], 500, teacher=teacher)
        assert source == str(data)


def test_teacher_text_is_sampled_once_and_then_read_from_the_cache(
    tiny_artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "teacher_texts", functools.partial(teacher_texts, new_tokens=16))
    train, held, source = token_stream(tiny_artifact, [], 200, teacher=True)
    assert source == calibration.TEACHER_SOURCE
    assert len(train) == 200 and len(held) >= 128
    assert len(list((tmp_path / "cache" / "teacher-text").glob("*.json"))) == 1

    def refuse(*_: Any, **__: Any) -> list[str]:
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr(calibration, "teacher_texts", refuse)
    assert token_stream(tiny_artifact, [], 200, teacher=True) == (train, held, source)
    with pytest.raises(AssertionError, match="sampled again"):  # another amount is another entry
        token_stream(tiny_artifact, [], 300, teacher=True)
    with pytest.raises(AssertionError, match="sampled again"):  # and so is another seed
        token_stream(tiny_artifact, [], 200, teacher=True, seed=1)


def test_teacher_text_reaches_the_amount_and_leaves_the_global_rng_alone(tiny_artifact) -> None:
    model, tok = tiny_artifact.model, tiny_artifact.tokenizer
    state = torch.get_rng_state()
    docs = teacher_texts(model, tok, 300, batch=4, new_tokens=16)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(tokenize_docs(docs, tok)) >= 300
    assert docs == teacher_texts(model, tok, 300, batch=4, new_tokens=16)  # seeded
    assert docs[0].startswith("<|im_start|>user\n" + textdata.PROMPTS[0])
    assert docs[1].startswith("<|im_start|>user\n" + textdata.PROMPTS[1])


class _ScriptedModel:
    """Stands in for a causal LM: every row answers [7, 8, EOS] and then pads, as generate() does when a
    row stops before the others; records the batches it was given."""

    def __init__(self, eos: int, pad: int) -> None:
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        self.eos, self.pad = eos, pad
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
        self.threads: list[int] = []

    def parameters(self) -> Any:
        return iter([torch.zeros(1)])

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls.append((input_ids.clone(), attention_mask.clone(), kw))
        self.threads.append(torch.get_num_threads())
        rows = input_ids.shape[0]
        tail = torch.tensor([[7, 8, self.eos] + [self.pad] * 5] * rows)
        return torch.cat([input_ids, tail], dim=1)


def test_answers_end_at_the_first_eos_and_rows_are_left_padded(tiny_artifact) -> None:
    tok = tiny_artifact.tokenizer
    model = _ScriptedModel(tok.eos_token_id, tok.pad_token_id)
    docs = teacher_texts(model, tok, 300, batch=3, new_tokens=8)
    answer = tok.decode([7, 8])
    assert docs and all(d.endswith("assistant\n" + answer) for d in docs)
    assert len(model.calls) >= 2 and all(ids.shape[0] <= 3 for ids, _, _ in model.calls)
    ids, mask, kw = model.calls[0]
    assert kw["max_new_tokens"] == 8 and kw["do_sample"]
    assert bool((mask[:, -1] == 1).all())  # left padding: every prompt ends at the last column
    assert bool((ids[mask == 0] == kw["pad_token_id"]).all())


class _QuietProbe:
    """A load probe that has seen a long stretch with nobody else on the CPU."""

    t0, foreign_cores = float("-inf"), 0.0

    def __enter__(self) -> _QuietProbe:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def test_sampling_uses_only_the_cores_other_processes_leave_free(
    tiny_artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporters.hostload

    tok = tiny_artifact.tokenizer
    monkeypatch.setattr(exporters.hostload, "foreign_load", lambda seconds=0.3: 1.0)  # one core busy
    monkeypatch.setattr(textdata.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = _ScriptedModel(tok.eos_token_id, tok.pad_token_id)
        teacher_texts(model, tok, 100, batch=2, new_tokens=4)
        assert model.threads and set(model.threads) == {1}
        assert torch.get_num_threads() == 2  # given back afterwards
        governor = textdata._ThreadGovernor(2)
        assert torch.get_num_threads() == 1
        governor.probe, governor.probe_type = _QuietProbe(), _QuietProbe  # the other process ended
        done = governor(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 7))
        assert torch.get_num_threads() == 2 and done.tolist() == [False] * 3
    finally:
        torch.set_num_threads(before)


def test_the_cache_key_follows_a_rewritten_model_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"x" * 10)
    before = calibration._model_identity(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"y" * 11)
    assert calibration._model_identity(model_dir) != before
