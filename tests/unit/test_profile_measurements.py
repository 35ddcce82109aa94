"""Every shipped profile's latency figures reproduce the published runs they cite.

A profile's ``[[measurements]]`` are llama-bench runs on its hardware; each is replayed through the
latency model (``published_cost`` + ``roofline_ms``, pure arithmetic) and must land within 20% of the
published tokens/s. A profile without measurements must say in its file that its figures are
assumptions, so nobody mistakes them for fitted ones.
"""

from importlib import resources
from pathlib import Path

import pytest

from compressor.budget import ModelCost, project_footprint, published_cost, roofline_ms
from compressor.device_profile import DeviceProfile, Measurement, load_profile, profile_names
from compressor.errors import ProfileError

TOLERANCE = 0.20
NO_MEASUREMENT = "no published measurement found"


def _replay(profile: DeviceProfile, m: Measurement) -> tuple[float, float]:
    """(tg tokens/s, pp tokens/s) the latency model predicts for the published run ``m``."""
    at_pp = profile.model_copy(
        update={"budgets": profile.budgets.model_copy(update={"ttft_prompt_tokens": m.pp_tokens})}
    )
    decode_ms, ttft_ms = roofline_ms(published_cost(m), at_pp)
    # TTFT = prompt x per-token prompt cost + one decode; llama-bench's ppN times the prompt alone
    return 1000.0 / decode_ms, m.pp_tokens * 1000.0 / (ttft_ms - decode_ms)


PUBLISHED = [(name, i, m) for name in profile_names() for i, m in enumerate(load_profile(name).measurements)]
CASES = [
    pytest.param(name, i, id=f"{name}-{i}-{m.model}-{m.quant}".replace(" ", "_")) for name, i, m in PUBLISHED
]
PP_CASES = [c for c, (_, _, m) in zip(CASES, PUBLISHED, strict=True) if m.pp_tokens_per_s is not None]


def test_some_profiles_are_fitted_to_published_runs() -> None:
    assert len(CASES) >= 5 and len(PP_CASES) >= 5  # the replays below are not vacuous
    assert {name for name, _, _ in PUBLISHED} >= {"raspberry-pi-5", "jetson-orin-nano"}


@pytest.mark.parametrize(("name", "index"), CASES)
def test_published_generation_rate_is_reproduced(name: str, index: int) -> None:
    prof = load_profile(name)
    m = prof.measurements[index]
    tg, _ = _replay(prof, m)
    assert tg == pytest.approx(m.tg_tokens_per_s, rel=TOLERANCE), (
        f"{name}: {m.model} {m.quant}: model {tg:.2f} tok/s vs published {m.tg_tokens_per_s} ({m.source})"
    )


@pytest.mark.parametrize(("name", "index"), PP_CASES)
def test_published_prompt_rate_is_reproduced(name: str, index: int) -> None:
    prof = load_profile(name)
    m = prof.measurements[index]
    _, pp = _replay(prof, m)
    assert pp == pytest.approx(m.pp_tokens_per_s, rel=TOLERANCE), (
        f"{name}: {m.model} {m.quant}: model pp{m.pp_tokens} {pp:.1f} tok/s vs published {m.pp_tokens_per_s}"
    )


@pytest.mark.parametrize("name", profile_names())
def test_unmeasured_profiles_say_their_figures_are_assumptions(name: str) -> None:
    text = resources.files("device_profiles").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    assert load_profile(name).measurements or NO_MEASUREMENT in text.lower(), (
        f"{name}.toml has no [[measurements]] and does not say '{NO_MEASUREMENT}'"
    )


def test_a_slower_fixed_cost_or_bus_slows_the_replay() -> None:
    prof = load_profile("raspberry-pi-5")
    m = prof.measurements[0]
    base, _ = _replay(prof, m)
    slower = prof.model_copy(
        update={"runtime": prof.runtime.model_copy(update={"per_token_overhead_ms": 50.0})}
    )
    assert _replay(slower, m)[0] < base / 1.2  # the fixed per-token cost is part of every token


# SmolLM2-135M-Instruct at Q4_0 as the compressor plans it: 87.6 MiB file, 85.8 MiB of weights read
# per token (the tied embedding once, as the head), 134.5 M multiplied weights, 30 layers x 3 KV heads x 64.
SMOLLM2_Q4_0 = ModelCost(
    stored_bytes=87.6 * 1024**2,
    streamed_bytes=85.8 * 1024**2,
    matmul_params=134_515_008,
    kv_bytes_per_token=30 * 2 * 3 * 64 * 2,
    vocab_size=49152,
    quantized=True,
    basis="estimated: Q4_0",
)


@pytest.mark.parametrize("name", ["raspberry-pi-5", "android-2gb"])
def test_the_reference_small_model_still_meets_the_latency_budgets(name: str) -> None:
    prof = load_profile(name)
    fp = project_footprint(SMOLLM2_Q4_0, prof)
    assert fp.decode is not None and fp.ttft is not None
    assert fp.decode.value <= (prof.budgets.max_decode_ms_per_token or 0)
    assert fp.ttft.value <= (prof.budgets.max_ttft_ms or 0)


BASE = resources.files("device_profiles").joinpath("raspberry-pi-5.toml").read_text(encoding="utf-8")


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "p.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_an_unknown_key_in_a_measurement_names_its_path(tmp_path: Path) -> None:
    text = BASE.replace("tg_tokens_per_s = 12.40", "tg_tokens_per_s = 12.40\ntokens_per_sec = 12.4")
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, text))
    assert "measurements.0.tokens_per_sec" in err.value.render()


def test_a_measurement_must_cite_a_url(tmp_path: Path) -> None:
    text = BASE.replace('source = "https://', 'source = "see https://', 1)
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, text))
    assert "measurements.0.source" in err.value.render()


def test_a_measurement_on_more_threads_than_cores_is_rejected(tmp_path: Path) -> None:
    text = BASE.replace("threads = 4\ntg_tokens_per_s = 10.81", "threads = 64\ntg_tokens_per_s = 10.81")
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, text))
    assert "measurements.1.threads (64) exceeds hardware.cores (4)" in err.value.render()
