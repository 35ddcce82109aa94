import re
from importlib import resources
from pathlib import Path

import pytest

from compressor.device_profile import load_profile, profile_names
from compressor.errors import ProfileError

REQUIRED = {
    "raspberry-pi-5",
    "snapdragon-8-gen-3",
    "iphone-15-pro",
    "jetson-orin-nano",
    "android-2gb",
    "host",
}


def test_required_profiles_ship_with_the_package() -> None:
    assert set(profile_names()) >= REQUIRED


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_is_valid_and_sourced(name: str) -> None:
    prof = load_profile(name)
    assert prof.name == name
    assert prof.hardware.memory_bandwidth_gbps > 0 and prof.runtime.threads <= prof.hardware.cores
    text = resources.files("device_profiles").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    section, lines = "", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip()
        elif section.startswith("[hardware") and re.match(r"^\w+\s*=\s*[\d.]+", line):
            sourced = "#" in line or lines[i - 1].lstrip().startswith("#")
            assert sourced, f"{name}.toml: hardware figure without a source comment: {line!r}"


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "p.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


BASE = resources.files("device_profiles").joinpath("host.toml").read_text(encoding="utf-8")


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, BASE.replace("[budgets]", "[budgets]\nmax_sise_mib = 3")))
    assert "budgets.max_sise_mib" in err.value.render()


def test_negative_budget_and_bad_ratio_are_both_reported(tmp_path: Path) -> None:
    text = BASE.replace("max_size_mib = 300", "max_size_mib = -1").replace(
        "bandwidth_efficiency_ratio = 0.5", "bandwidth_efficiency_ratio = 1.5"
    )
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, text))
    msg = err.value.render()
    assert "budgets.max_size_mib" in msg and "-1" in msg
    assert "hardware.bandwidth_efficiency_ratio" in msg


def test_unknown_name_lists_the_known_profiles() -> None:
    with pytest.raises(ProfileError) as err:
        load_profile("raspberry-pi-9")
    assert "raspberry-pi-5" in str(err.value) and "host" in str(err.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"p\.toml is not valid TOML"):
        load_profile(_write(tmp_path, "name = [unclosed"))


def test_budget_overrides_are_validated() -> None:
    prof = load_profile("host").with_budgets(max_size_mib=10)
    assert prof.budgets.max_size_mib == 10
    with pytest.raises(ProfileError, match="max_size_mib"):
        load_profile("host").with_budgets(max_size_mib=-5)
