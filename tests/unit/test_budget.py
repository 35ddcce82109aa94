import pytest

from compressor.artifact import weight_inventory
from compressor.budget import (
    calibrate,
    check_budgets,
    cost_from_plan,
    describe_failures,
    plan_tensors,
    project_footprint,
    roofline_ms,
)
from compressor.device_profile import load_profile
from compressor.quant import QuantScheme


def _cost(artifact, spec: str):
    inv = weight_inventory(artifact.model)
    scheme = QuantScheme.parse(spec)
    return cost_from_plan(artifact.facts, inv, plan_tensors(inv, scheme), scheme.name)


def test_kv_cache_formula(tiny_artifact) -> None:
    f = tiny_artifact.facts  # 2 layers, 2 kv heads, head_dim 16, F16
    assert f.kv_cache_bytes(100) == 2 * 2 * 100 * 2 * 16 * 2


def test_smaller_scheme_projects_smaller_and_faster(tiny_artifact) -> None:
    prof = load_profile("raspberry-pi-5")
    q8, q4 = (project_footprint(_cost(tiny_artifact, s), prof) for s in ("gguf:Q8_0", "gguf:Q4_0"))
    assert q4.size.value < q8.size.value and q4.decode.value < q8.decode.value
    assert q4.size.provenance.value == "estimated" and q4.decode.where == "device:raspberry-pi-5"


def test_checks_name_budget_limit_and_value(tiny_artifact) -> None:
    prof = load_profile("raspberry-pi-5").with_budgets(max_size_mib=0.001)
    fp = project_footprint(_cost(tiny_artifact, "gguf:Q4_0"), prof)
    checks = check_budgets(fp, prof.budgets)
    failed = [c for c in checks if not c.passed]
    assert [c.budget for c in failed] == ["max_size_mib"]
    (line,) = describe_failures(checks)
    assert "max_size_mib" in line and "0.001" in line and "over by" in line


def test_calibration_on_the_host_profile_reproduces_the_measurement(tiny_artifact) -> None:
    host = load_profile("host")
    cost = _cost(tiny_artifact, "gguf:Q8_0")
    cal = calibrate(cost, host, decode_ms=3.0, ttft_ms=40.0)
    fp = project_footprint(cost, host, cal)
    assert fp.decode.value == pytest.approx(3.0) and fp.ttft.value == pytest.approx(40.0)


def test_slower_memory_means_slower_decode(tiny_artifact) -> None:
    cost = _cost(tiny_artifact, "gguf:F32")
    fast, slow = load_profile("snapdragon-8-gen-3"), load_profile("android-2gb")
    assert roofline_ms(cost, slow)[0] > roofline_ms(cost, fast)[0]
