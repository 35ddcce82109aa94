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


def test_profiles_ship_inside_the_wheel(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ into the source tree
    for name in ("compressor", "stages", "exporters", "device_profiles"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    wheels = tmp_path / "wheels"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(src),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = wheels.glob("compressor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"device_profiles/{n}.toml" for n in REQUIRED} <= names
    assert "compressor/data/validation.txt" in names


def test_profiles_cli_lists_and_shows(capsys) -> None:
    from compressor.cli import main

    assert main(["profiles", "list"]) == 0
    assert "raspberry-pi-5" in capsys.readouterr().out
    assert main(["profiles", "show", "raspberry-pi-5"]) == 0
    assert '"memory_bandwidth_gbps": 17.1' in capsys.readouterr().out
