"""The bad-input catalogue: hostile-but-realistic input through the real CLI entry point.

Every case asserts what a user sees: the documented exit code, an ``error:`` message naming the thing
that is wrong, no traceback, and nothing written or deleted (the whole sandbox is snapshotted before
and after). Cases from the 114-input probe (issue 10) and the ones handled before it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from compressor.errors import ExitCode
from tests.conftest import TINY_PROFILE, corpus
from tests.unit.catalogue import refuse

pytest.importorskip("llama_cpp")


@pytest.fixture()
def sandbox(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A directory holding a copy of the tiny model, a profile and calibration text."""
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "profile.toml").write_text(TINY_PROFILE, encoding="utf-8")
    (tmp_path / "calib.txt").write_text(corpus(), encoding="utf-8")
    return tmp_path


def compress(sandbox: Path, *extra: str, out: str = "out", model: str = "model") -> list[str]:
    return [
        "compress",
        str(sandbox / model),
        "--device",
        str(sandbox / "profile.toml"),
        "--out",
        str(sandbox / out),
        "--quiet",
        *extra,
    ]


def tiny_gguf(artifact, dest: Path) -> Path:
    """The tiny model as a GGUF file at ``dest`` (exported through a scratch folder beside it)."""
    from exporters.gguf import export_gguf

    scratch = dest.parent / f".{dest.name}.export"
    scratch.mkdir()
    export_gguf(artifact, scratch).rename(dest)
    shutil.rmtree(scratch)
    return dest


@pytest.fixture()
def no_load(monkeypatch):
    """Fail the test if the model gets loaded: the error must come before the (slow) load."""
    import compressor.loading

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the input was rejected")

    monkeypatch.setattr(compressor.loading, "load_model", boom)


# --- 1. code execution through a planted checkpoint ---------------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("kind", ["pickle", "garbage", "foreign-safetensors", "legacy-pt"])
def test_a_planted_checkpoint_never_runs_and_is_a_clear_error(
    sandbox: Path, capsys, monkeypatch, kind: str
) -> None:
    import pickle

    import torch
    from safetensors.torch import save_file

    monkeypatch.chdir(sandbox)
    ckpt = sandbox / ".out.distill-checkpoint.safetensors"
    if kind == "pickle":
        ckpt.write_bytes(pickle.dumps(_Payload()))
    elif kind == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif kind == "foreign-safetensors":
        save_file({"w": torch.zeros(3)}, str(ckpt), metadata={"format": "someone-else"})
    else:  # the old torch.save name: never read any more, so --resume finds no checkpoint
        (sandbox / ".out.distill-checkpoint.pt").write_bytes(pickle.dumps(_Payload()))
    args = compress(sandbox, "--distill", "--resume", "--calib-data", str(sandbox / "calib.txt"))
    needle = "no checkpoint" if kind == "legacy-pt" else "checkpoint"
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "--resume", needle)
    assert not (sandbox / "PWNED").exists()


def test_a_checkpoint_from_other_settings_is_refused(sandbox: Path, capsys) -> None:
    from compressor.checkpoint import save_checkpoint
    from compressor.config import CompressRequest
    from compressor.inputs import checkpoint_path, fingerprint

    other = CompressRequest(model=str(sandbox / "model"), out=sandbox / "out", distill_lr=1e-3)
    state = {"student": {}, "optimizer": {}, "step": 3, "tokens": 6144, "history": []}
    save_checkpoint(checkpoint_path(sandbox / "out"), state, fingerprint(other))
    args = compress(sandbox, "--distill", "--resume", "--calib-data", str(sandbox / "calib.txt"))
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "other settings", "distill_lr")


# --- 4. data loss: --out holding, equal to or inside an input -----------------------------------


@pytest.mark.parametrize(
    ("model", "out"),
    [
        ("model", "model"),  # --out is the model directory
        ("model", "."),  # --out holds the model directory
        ("model", "model/sub"),  # --out inside the model directory
        ("tiny.gguf", "."),  # the probe: compress DIR/model.gguf --out DIR --force
    ],
)
def test_force_never_replaces_a_directory_holding_the_input(
    sandbox: Path, capsys, tiny_artifact, model: str, out: str
) -> None:
    (sandbox / "keep.txt").write_text("unrelated work")
    if model.endswith(".gguf"):
        tiny_gguf(tiny_artifact, sandbox / model)
    args = compress(sandbox, "--force", model=model, out=out)
    refuse(args, sandbox, capsys, ExitCode.OUTPUT_NOT_WRITABLE, "refusing", "input")


def test_force_never_replaces_a_directory_it_did_not_write(sandbox: Path, capsys) -> None:
    (sandbox / "out").mkdir()
    (sandbox / "out" / "thesis.tex").write_text("years of work")
    refuse(
        compress(sandbox, "--force"),
        sandbox,
        capsys,
        ExitCode.OUTPUT_NOT_WRITABLE,
        "not written by compressor",
    )


def test_calibration_data_inside_out_is_protected(sandbox: Path, capsys) -> None:
    (sandbox / "out").mkdir()
    (sandbox / "out" / "report.json").write_text(json.dumps({"command": "compress", "tool_version": "0"}))
    shutil.copy(sandbox / "calib.txt", sandbox / "out" / "data.txt")
    args = compress(
        sandbox, "--force", "--prune", "mlp=64", "--calib-data", str(sandbox / "out" / "data.txt")
    )
    refuse(args, sandbox, capsys, ExitCode.OUTPUT_NOT_WRITABLE, "data.txt")


# --- 5. what used to be exit 70 -------------------------------------------------------------------


def test_qat_with_a_scheme_without_a_fake_quantizer(sandbox: Path, capsys, no_load) -> None:
    args = compress(sandbox, "--qat", "--quant", "gguf:Q4_K_M")
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "gguf:Q4_K_M", "gguf:Q4_0")


def test_distill_tokens_below_one_batch(sandbox: Path, capsys, no_load) -> None:
    refuse(
        compress(sandbox, "--distill", "--distill-tokens", "1024"),
        sandbox,
        capsys,
        ExitCode.BAD_INPUT,
        "--distill-tokens 1024",
        "2048",
    )


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_profile_not_utf8(sandbox: Path, capsys, no_load, encoding: str) -> None:
    text = TINY_PROFILE.replace("generous", "généreux")
    (sandbox / "profile.toml").write_bytes(text.encode(encoding))
    refuse(compress(sandbox), sandbox, capsys, ExitCode.BAD_INPUT, "profile.toml", "UTF-8")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bin.jsonl", b"\x00\x01\x02\xff" * 64, "binary"),
        ("latin.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), "UTF-8"),
        ("nomsg.jsonl", b'{"messages": [{"role": "user"}]}\n', "messages"),
        ("msgstr.jsonl", b'{"messages": "hello"}\n', "messages"),
        ("notext.jsonl", b'{"content": "no text field"}\n', '"text"'),
        ("notjson.jsonl", b"just words\n", "not JSON"),
        ("empty.txt", b"", "empty"),
        ("blank.txt", b"\n\n   \n", "empty"),
    ],
)
def test_bad_calibration_data_is_rejected_before_anything(
    sandbox: Path, capsys, no_load, name: str, content: bytes, needle: str
) -> None:
    (sandbox / name).write_bytes(content)
    args = compress(sandbox, "--prune", "mlp=64", "--calib-data", str(sandbox / name))
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, name, needle)


def test_chat_rows_the_template_rejects(sandbox: Path, capsys) -> None:
    """A template that raises (like many real ones on a bad role order) is bad input, not a crash."""
    template = "{{ raise_exception('roles must alternate user/assistant') }}"
    (sandbox / "model" / "chat_template.jinja").write_text(template)
    rows = sandbox / "chat.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    args = compress(sandbox, "--prune", "mlp=64", "--calib-data", str(rows))
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "chat template", "alternate")


def test_too_little_data_for_one_training_batch(sandbox: Path, capsys) -> None:
    (sandbox / "short.txt").write_text("A short text. " * 200)
    args = compress(sandbox, "--distill", "--calib-data", str(sandbox / "short.txt"))
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "short.txt", "one batch")


# --- 8. silently ignored or accepted --------------------------------------------------------------


def test_unknown_embedding_type(sandbox: Path, capsys, no_load) -> None:
    refuse(compress(sandbox, "--embedding-type", "FOO"), sandbox, capsys, ExitCode.BAD_INPUT, "FOO", "Q8_0")


@pytest.mark.parametrize("spec", [",,,", "", " , "])
def test_empty_prune_spec(sandbox: Path, capsys, no_load, spec: str) -> None:
    refuse(compress(sandbox, "--prune", spec), sandbox, capsys, ExitCode.BAD_INPUT, "nothing to prune")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("context_length = 256", "context_length = 1000000000000000000", "context_length"),
        ("memory_bandwidth_gbps = 10.0", "memory_bandwidth_gbps = inf", "memory_bandwidth_gbps"),
        ("memory_bandwidth_gbps = 10.0", "memory_bandwidth_gbps = 1e308", "memory_bandwidth_gbps"),
        ("memory_bandwidth_gbps = 10.0", "memory_bandwidth_gbps = nan", "memory_bandwidth_gbps"),
        ("fp32_gflops = 50.0", "fp32_gflops = 1e300", "fp32_gflops"),
        ("ram_mib = 1024", "ram_mib = 0", "ram_mib"),
        ("cores = 2", "cores = 100000", "cores"),
        ("max_ttft_ms = 10000", "max_ttft_ms = inf", "max_ttft_ms"),
        ("ttft_prompt_tokens = 32", "ttft_prompt_tokens = 100000", "ttft_prompt_tokens"),
    ],
)
def test_profile_values_outside_physical_sense(
    sandbox: Path, capsys, no_load, old: str, new: str, field: str
) -> None:
    text = TINY_PROFILE
    assert old in text
    (sandbox / "profile.toml").write_text(text.replace(old, new))
    refuse(compress(sandbox), sandbox, capsys, ExitCode.BAD_INPUT, field, "profile.toml")


def test_profile_context_longer_than_the_model_can_hold(sandbox: Path, capsys) -> None:
    (sandbox / "profile.toml").write_text(
        TINY_PROFILE.replace("context_length = 256", "context_length = 65536")
    )
    refuse(compress(sandbox), sandbox, capsys, ExitCode.BAD_INPUT, "context_length 65536", "4096")


def test_budget_flag_inf(sandbox: Path, capsys, no_load) -> None:
    refuse(compress(sandbox, "--max-decode-ms", "inf"), sandbox, capsys, ExitCode.BAD_INPUT, "decode")


# --- 9. late or misleading messages --------------------------------------------------------------


@pytest.mark.parametrize("spec", ["heads=0", "mlp=-64", "layers=1.5", "kv_heads=nan", "heads=2,heads=3"])
def test_prune_values_rejected_before_loading(sandbox: Path, capsys, no_load, spec: str) -> None:
    refuse(
        compress(sandbox, "--prune", spec),
        sandbox,
        capsys,
        ExitCode.BAD_INPUT,
        spec.split(",")[0].split("=")[0],
    )


def test_unknown_model_type_says_unsupported(sandbox: Path, capsys) -> None:
    cfg = sandbox / "model" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "model_type": "zorblax"}))
    err = refuse(compress(sandbox), sandbox, capsys, ExitCode.BAD_INPUT, "zorblax", "not supported")
    assert "upgrade" not in err


def test_config_that_is_not_json(sandbox: Path, capsys) -> None:
    (sandbox / "model" / "config.json").write_text("{ not json")
    refuse(compress(sandbox), sandbox, capsys, ExitCode.BAD_INPUT, "config.json", "JSON")


def test_symlink_loop(sandbox: Path, capsys) -> None:
    (sandbox / "loop").symlink_to(sandbox / "loop")
    refuse(compress(sandbox, model="loop"), sandbox, capsys, ExitCode.BAD_INPUT, "symlink loop")
    refuse(
        compress(sandbox, "--prune", "mlp=64", "--calib-data", str(sandbox / "loop")),
        sandbox,
        capsys,
        ExitCode.BAD_INPUT,
        "symlink loop",
    )


def test_directory_as_calibration_data(sandbox: Path, capsys, no_load) -> None:
    (sandbox / "texts").mkdir()
    (sandbox / "texts" / "a.txt").write_text("hello")
    args = compress(sandbox, "--prune", "mlp=64", "--calib-data", str(sandbox / "texts"))
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "is a directory", "a.txt")


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.99])
def test_truncated_gguf_says_truncated(sandbox: Path, capsys, tiny_artifact, fraction: float) -> None:
    good = tiny_gguf(tiny_artifact, sandbox / "good.gguf").read_bytes()
    (sandbox / "cut.gguf").write_bytes(good[: int(len(good) * fraction)])
    refuse(compress(sandbox, model="cut.gguf"), sandbox, capsys, ExitCode.BAD_INPUT, "cut.gguf", "truncated")


# --- 6. leftovers ---------------------------------------------------------------------------------


def test_report_path_that_is_a_directory_leaves_no_temp(sandbox: Path, capsys, tiny_artifact) -> None:
    model = tiny_gguf(tiny_artifact, sandbox / "m.gguf")
    (sandbox / "reports").mkdir()
    args = [
        "check",
        str(model),
        "--device",
        str(sandbox / "profile.toml"),
        "--junit",
        str(sandbox / "reports"),
    ]
    refuse(args, sandbox, capsys, ExitCode.OUTPUT_NOT_WRITABLE, "reports", "directory")


def test_a_failing_run_with_a_deep_out_leaves_no_empty_parents(sandbox: Path, capsys) -> None:
    """heads=3 is checked against the model after loading, once --out's parents exist."""
    args = compress(sandbox, "--prune", "heads=3", out="a/b/c/out")
    refuse(args, sandbox, capsys, ExitCode.BAD_INPUT, "heads=3")


def test_stale_scratch_of_a_killed_run_is_cleaned_and_others_are_kept(sandbox: Path) -> None:
    from compressor.outdir import OWNER_FILE, OutputDir

    dead = sandbox / ".out.partial-dead"
    dead.mkdir()
    (dead / "model.gguf").write_bytes(b"x" * 1000)
    (dead / OWNER_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    alive = sandbox / ".out.partial-alive"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    foreign = sandbox / ".out.partial-notours"
    foreign.mkdir()
    other_target = sandbox / ".other.partial-dead"
    shutil.copytree(dead, other_target)
    out = OutputDir(sandbox / "out")
    out.prepare()
    out.abandon()
    assert not dead.exists()
    assert alive.exists() and foreign.exists() and other_target.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--distill-lr", "inf"), ("--distill-lr", "5"), ("--distill-minutes", "nan"), ("--max-ram-mib", "-inf")],
)
def test_numeric_flags_outside_sense(sandbox: Path, capsys, no_load, flag: str, value: str) -> None:
    refuse(compress(sandbox, "--distill", f"{flag}={value}"), sandbox, capsys, ExitCode.BAD_INPUT, flag)


def test_a_pipe_as_the_model(sandbox: Path, capsys) -> None:
    os.mkfifo(sandbox / "pipe")
    refuse(compress(sandbox, model="pipe"), sandbox, capsys, ExitCode.BAD_INPUT, "pipe", "neither")
