"""App bundles: ``compress --bundle``, ``compressor bundle``, ``compressor verify`` (llama.cpp bundles on
the tiny model; the ONNX/onnxruntime-genai bundle is in test_bundle_genai.py)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from compressor.bundle_manifest import BundleManifest
from compressor.cli import main
from compressor.errors import ExitCode
from tests.unit.catalogue import refuse

pytest.importorskip("llama_cpp")
NAME = "model-tiny-test.bundle"


@pytest.fixture(scope="module")
def out(tiny_model_dir: Path, tiny_profile: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "out"
    argv = ["compress", str(tiny_model_dir), "--device", str(tiny_profile), "--out", str(out)]
    assert main([*argv, "--quant", "gguf:Q8_0", "--bundle", "--quiet"]) == 0
    return out


@pytest.fixture()
def copy_of(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / NAME
    shutil.copytree(out / NAME, dst, symlinks=True)
    return dst


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root: Path, m: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def test_bundle_holds_what_an_app_needs(out: Path, tiny_profile: Path, capsys) -> None:
    root = out / NAME
    m = BundleManifest.model_validate(_manifest(root))  # the published schema, closed
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(
        [
            "README.md",
            "generation.json",
            "manifest.json",
            "model.gguf",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert {f.path for f in m.files} == set(names) - {"manifest.json"}
    assert m.runtime == "llama.cpp" and m.model_file == "model.gguf" and m.format == "gguf"
    gen = json.loads((root / "generation.json").read_text())
    assert gen["eos_token_ids"] and gen["context_length"] == 256 and gen["chat_template"]
    assert "chat_template" in json.loads((root / "tokenizer_config.json").read_text())
    assert m.quality.measured and m.quality.kl is not None and m.quality.tokens > 0
    card = (root / "README.md").read_text()
    for needle in ("Quality against the source model", "## Stages", "## Budgets", "## Data", "sha256"):
        assert needle in card
    # the GGUF carries its chat template and the sampling defaults
    from compressor.loading import read_gguf_fields

    fields, _ = read_gguf_fields(root / "model.gguf")
    assert fields["tokenizer.chat_template"] == gen["chat_template"]
    assert fields["general.sampling.top_k"] == gen["sampling"]["top_k"]
    assert abs(fields["general.sampling.temp"] - gen["sampling"]["temperature"]) < 1e-6
    # the output directory still checks clean: the bundle beside it is not an unlisted stranger
    assert main(["check", str(out), "--device", str(tiny_profile)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_zip_is_byte_identical_when_made_again(out: Path, tmp_path: Path) -> None:
    first = (out / f"{NAME}.zip").read_bytes()
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / NAME)
    (again / f"{NAME}.zip").unlink()
    assert main(["bundle", str(again)]) == 0
    assert (again / f"{NAME}.zip").read_bytes() == first
    with zipfile.ZipFile(out / f"{NAME}.zip") as z:
        names = z.namelist()
        assert names == sorted(names) and all(n.startswith(f"{NAME}/") for n in names)
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_verify_passes_an_untouched_bundle_and_its_zip(out: Path, tmp_path: Path, capsys) -> None:
    assert main(["verify", str(out / NAME), "--json", str(tmp_path / "v.json")]) == 0
    assert "ok:" in capsys.readouterr().out
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["ok"] and result["max_abs_logit_diff"] <= result["tolerance"]
    assert main(["verify", str(out / f"{NAME}.zip")]) == 0


def test_verify_fails_on_one_flipped_byte_in_the_model(copy_of: Path, capsys) -> None:
    data = bytearray((copy_of / "model.gguf").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy_of / "model.gguf").write_bytes(bytes(data))
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, "model.gguf", "sha256")


def test_verify_fails_on_a_deleted_tokenizer_file(copy_of: Path, capsys) -> None:
    (copy_of / "tokenizer.json").unlink()
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, "tokenizer.json", "missing")


@pytest.mark.parametrize("stray", ["notes.txt", "sub/extra.bin"])
def test_verify_fails_on_a_stray_file(copy_of: Path, capsys, stray: str) -> None:
    (copy_of / stray).parent.mkdir(exist_ok=True)
    (copy_of / stray).write_text("planted")
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, stray, "not listed")


def test_verify_fails_on_a_symlink_in_the_bundle(copy_of: Path, capsys) -> None:
    (copy_of / "vocab.txt").symlink_to("/etc/passwd")
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, "vocab.txt")


@pytest.mark.parametrize("path", ["../outside.gguf", "/etc/passwd", "a/../../b", "./model.gguf"])
def test_verify_fails_on_a_manifest_entry_outside_the_bundle(copy_of: Path, capsys, path: str) -> None:
    m = _manifest(copy_of)
    m["files"][0]["path"] = path
    _write_manifest(copy_of, m)
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, path)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m.update(runtime_hint="x"), "runtime_hint"),
        (lambda m: m["reference"].update(tolerance=100.0), "tolerance"),  # cannot be widened
        (lambda m: m.pop("reference"), "reference"),
        (lambda m: m.update(runtime="tflite"), "runtime"),
    ],
)
def test_verify_fails_on_a_manifest_that_breaks_its_schema(copy_of: Path, capsys, edit, needle: str) -> None:
    m = _manifest(copy_of)
    edit(m)
    _write_manifest(copy_of, m)
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.BAD_INPUT, "manifest.json", needle)


def _tensor_offset(path: Path, name: str) -> tuple[int, int]:
    import gguf

    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    return int(t.data_offset), int(t.n_bytes)


def test_verify_fails_when_the_manifest_is_edited_to_match_a_tampered_model(copy_of: Path, capsys) -> None:
    """The hashes agree again, but the model no longer gives the recorded logits."""
    import numpy as np

    from compressor.builtin_models import sha256_file

    model = copy_of / "model.gguf"
    start, n = _tensor_offset(model, "output_norm.weight")  # F32: every position's logits move
    data = bytearray(model.read_bytes())
    data[start : start + n] = (np.frombuffer(data[start : start + n], dtype=np.float32) * 3.0).tobytes()
    model.write_bytes(bytes(data))
    m = _manifest(copy_of)
    entry = next(f for f in m["files"] if f["path"] == "model.gguf")
    entry["sha256"], entry["bytes"] = sha256_file(model), model.stat().st_size
    _write_manifest(copy_of, m)
    refuse(["verify", str(copy_of)], copy_of, capsys, ExitCode.VALIDATION_FAILED, "model.gguf", "recorded")


def test_verify_refuses_a_zip_that_escapes(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.bundle/manifest.json", "{}")
        z.writestr("x.bundle/../../evil.txt", "planted")
    refuse(["verify", str(bad)], tmp_path, capsys, ExitCode.BAD_INPUT, "evil.txt")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_gguf_bundle_chats_through_llama_cpp_python_with_its_own_template(out: Path) -> None:
    from exporters import llama_runtime

    root = out / NAME
    gen = json.loads((root / "generation.json").read_text())
    for greedy in (True, False):  # greedy, then the sampling defaults the GGUF carries
        answer = llama_runtime.chat(root / "model.gguf", [{"role": "user", "content": "hello"}], 4, greedy)
        assert answer["chat_format"] == "chat_template.default"  # llama-cpp-python took the GGUF's template
        assert answer["template_in_gguf"] and "general.sampling.top_k" in answer["sampling_in_gguf"]
        assert answer["role"] == "assistant" and answer["completion_tokens"] >= 1
    assert answer["sampling"]["top_k"] == gen["sampling"]["top_k"]
    assert abs(answer["sampling"]["temperature"] - gen["sampling"]["temperature"]) < 1e-6


def test_manifest_schema_doc_is_in_sync(capsys) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"
    assert main(["schema", "manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == BundleManifest.model_json_schema() == json.loads(doc.read_text()), (
        "run: compressor schema manifest > docs/manifest.schema.json"
    )
