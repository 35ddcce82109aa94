"""The final, measured verdict on an exported GGUF: run it in llama.cpp here, project it to the device.

Used by the pipeline's last stage and by ``compressor check`` (the CI gate), so both judge alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from compressor.budget import BudgetCheck, calibrate, check_budgets, project_footprint
from compressor.device_profile import DeviceProfile, load_profile
from compressor.inspect_gguf import gguf_summary
from compressor.report import StageReport

HOST_PROFILE = "host"


def measure_gguf(
    path: Path, profile: DeviceProfile, repeats: int = 3
) -> tuple[StageReport, list[BudgetCheck]]:
    """Measure ``path`` in llama.cpp on this host and check it against ``profile``'s budgets.

    Host figures are measured with the host profile's thread count at the *target* profile's context
    length (so the RSS includes the KV cache the device will allocate); decode and TTFT on the device
    are the device roofline scaled by how far the host measurement sits from the host roofline.
    """
    from exporters import llama_runtime

    start = time.perf_counter()
    cost, summary = gguf_summary(path)
    host = load_profile(HOST_PROFILE)
    threads = min(host.runtime.threads, os.cpu_count() or 1)
    m = llama_runtime.measure(
        path.resolve(),
        threads=threads,
        n_ctx=profile.runtime.context_length,
        prompt_tokens=profile.budgets.ttft_prompt_tokens,
        gen_tokens=32,
        repeats=repeats,
    )
    cal = calibrate(cost, host, m["decode_ms_per_token"], m["ttft_ms"])
    footprint = project_footprint(
        cost, profile, cal, measured_size=True, measured_ram_mib=m["runtime_rss_mib"]
    )
    checks = check_budgets(footprint, profile.budgets)
    measured: dict[str, Any] = {
        "file_bytes": int(cost.stored_bytes),
        "host_decode_ms_per_token": round(m["decode_ms_per_token"], 3),
        "host_decode_tokens_per_s": round(1e3 / m["decode_ms_per_token"], 1),
        "host_ttft_ms": round(m["ttft_ms"], 2),
        "host_peak_rss_mib": round(m["peak_rss_mib"], 1),
        "host_runtime_rss_mib": round(m["runtime_rss_mib"], 1),
        "host_load_ms": round(m["load_ms"], 1),
        "host_threads": threads,
        "context_length": m["n_ctx"],
        "prompt_tokens": m["prompt_tokens"],
        "runtime": "llama.cpp (llama-cpp-python)",
        **{f"gguf_{k}": v for k, v in summary.items()},
    }
    report = StageReport(
        stage="measure",
        seconds=time.perf_counter() - start,
        summary=measured,
        footprint=footprint,
        checks=checks,
    )
    return report, checks
