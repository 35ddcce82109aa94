"""Property tests for the readers of untrusted files: device profiles, bundle manifests, GGUF headers.

Whatever the bytes, a reader either accepts them or raises one of our own error types (which the CLI
turns into a message and an exit code); never another exception, a crash or a hang. Examples are
derandomized with a fixed budget so CI time stays low and failures reproduce.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.device_profile import DeviceProfile, parse_profile
from compressor.errors import InputError, ModelLoadError, ProfileError
from tests.conftest import TINY_PROFILE

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- device profiles ------------------------------------------------------------------------------

PROFILE_LINES = [line for line in TINY_PROFILE.splitlines() if " = " in line and not line.startswith("name")]


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))  # a TOML basic string for printable text


values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
)


@FUZZ
@given(line=st.sampled_from(PROFILE_LINES), value=values)
def test_any_field_value_is_a_profile_or_a_profile_error(line: str, value: object) -> None:
    key = line.split(" = ")[0]
    text = TINY_PROFILE.replace(line, f"{key} = {_toml_value(value)}")
    try:
        prof = parse_profile(text, "fuzz.toml")
    except ProfileError as exc:
        assert "fuzz.toml" in str(exc)
        return
    assert isinstance(prof, DeviceProfile)
    for f in (prof.hardware.memory_bandwidth_gbps, prof.hardware.peak.fp32_gflops):
        assert math.isfinite(f) and f > 0


@FUZZ
@given(text=st.text(max_size=400))
def test_any_text_is_a_profile_or_a_profile_error(text: str) -> None:
    with contextlib.suppress(ProfileError):
        parse_profile(text, "fuzz.toml")


# --- manifests ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entry = st.fixed_dictionaries(
    {
        "path": st.one_of(
            st.text(max_size=30),
            st.sampled_from(["model.gguf", "../x", "/etc/passwd", "a/../../b", "tokenizer/t.json", "a//b"]),
        ),
        "role": st.sampled_from(["model", "tokenizer", "config", "other"]),
        "bytes": st.integers(min_value=-5, max_value=10**6),
        "sha256": st.sampled_from(["0" * 64, "x", ""]),
    }
)


def _find(manifest: object, hashed: list[Path]) -> None:
    import compressor.check as check

    hashed.clear()  # the spy is shared by every example
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        (root / "model.gguf").write_bytes(b"GGUF")
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        with contextlib.suppress(InputError):
            check.find_models(root)
        assert all(p.resolve().is_relative_to(root.resolve()) for p in hashed), hashed


@pytest.fixture()
def hashed(monkeypatch) -> list[Path]:
    import compressor.check as check

    seen: list[Path] = []
    real = check.sha256_file
    monkeypatch.setattr(check, "sha256_file", lambda p: seen.append(Path(p)) or real(p))
    return seen


@FUZZ
@given(manifest=json_values)
def test_any_json_manifest_is_rejected_cleanly(hashed: list[Path], manifest: object) -> None:
    _find(manifest, hashed)


@FUZZ
@given(files=st.lists(entry, max_size=4), version=st.sampled_from([1, 2, "1"]))
def test_any_file_list_is_checked_without_reading_outside(hashed: list[Path], files: list, version) -> None:
    _find({"manifest_version": version, "created_by": "compressor 0.1.0", "files": files}, hashed)


# --- GGUF headers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_bytes(tiny_artifact, tmp_path_factory) -> bytes:
    from exporters.gguf import export_gguf

    return export_gguf(tiny_artifact, tmp_path_factory.mktemp("fuzz")).read_bytes()


def _read(data: bytes) -> None:
    from compressor.loading import read_gguf_fields

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        path.write_bytes(data)
        with contextlib.suppress(ModelLoadError):
            read_gguf_fields(path)


@FUZZ
@given(data=st.data())
def test_any_damaged_gguf_is_a_model_load_error(gguf_bytes: bytes, data) -> None:
    blob = bytearray(gguf_bytes)
    header_end = min(len(blob), 16_384)  # the header and vocabulary: where damage matters most
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        pos = data.draw(st.integers(min_value=0, max_value=header_end - 1))
        blob[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(blob))))
    _read(bytes(blob if cut is None else blob[:cut]))


@FUZZ
@given(head=st.binary(max_size=64), counts=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))
def test_any_header_counts_are_bounded(head: bytes, counts: tuple[int, int]) -> None:
    import struct

    _read(b"GGUF" + struct.pack("<IQQ", 3, *counts) + head)
