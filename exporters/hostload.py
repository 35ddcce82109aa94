"""Is somebody else using the CPU while we measure? Contention-resistant timing for the runtimes.

On a 2-core host, one other busy process made llama.cpp's prompt processing 40x slower (its threads
spin at barriers) and flipped a budget verdict. Medians over repeats do not help when every repeat is
slowed, so each repeat is timed together with the CPU time the *rest of the machine* used meanwhile:
``/proc/stat``'s busy time of all cores minus this process's own CPU time. A repeat during which
others used more than ``FOREIGN_LIMIT_CORES`` is discarded and retried after a pause; if too few clean
repeats remain, the figures are returned but marked unreliable, and the budget gate then refuses to
fail a budget on them (exit 7: re-run on an idle machine) rather than failing on noise.
Linux only; elsewhere the probe reports no contention (and says so).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

FOREIGN_LIMIT_CORES = 0.5  # others' CPU use (in cores) above which a repeat is not trusted
MIN_CLEAN = 2  # clean repeats needed for reliable figures
PAUSE_S = 1.0  # wait after a contended repeat, so a short burst can pass
MIN_WINDOW_S = 0.25  # /proc/stat counts in 10 ms ticks: shorter windows cannot see anybody else


def _busy_s() -> float | None:
    """Busy CPU seconds of all cores since boot (user+nice+system+irq+softirq+steal), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """``with LoadProbe() as p: work()`` then ``p.foreign_cores``: others' CPU use during the work."""

    def __enter__(self) -> LoadProbe:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_s(), _own_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-3)
        busy1 = _busy_s()
        if self.busy0 is None or busy1 is None:
            self.foreign_cores = 0.0
            return
        others = (busy1 - self.busy0) - (_own_s() - self.own0)
        self.foreign_cores = max(0.0, others / wall)


def foreign_load(seconds: float = 0.3) -> float:
    """Cores' worth of CPU the rest of the machine uses now (we sleep meanwhile)."""
    with LoadProbe() as p:
        time.sleep(seconds)
    return p.foreign_cores


def free_threads(wanted: int, wait_s: float = 5.0) -> tuple[int, float]:
    """(threads to use, foreign load seen): waits up to ``wait_s`` for the host to quieten; if it does
    not, uses only the cores the others leave free, so llama.cpp's threads never oversubscribe."""
    ncpu = os.cpu_count() or 1
    deadline = time.perf_counter() + wait_s
    load = foreign_load()
    while load > FOREIGN_LIMIT_CORES and time.perf_counter() < deadline:
        load = foreign_load(0.5)
    free = max(1, math.floor(ncpu - load + 0.5))
    return min(wanted, free), load


def timed_repeats(
    once: Callable[[], tuple[float, list[float]]], repeats: int, max_attempts: int | None = None
) -> dict[str, Any]:
    """Run ``once`` (-> (ttft_ms, decode_ms per token)) until ``repeats`` clean runs or the attempts
    run out; medians over the clean runs (all runs, marked unreliable, if too few were clean)."""
    attempts = max_attempts or 3 * repeats
    runs: list[tuple[float, list[float], float]] = []
    for _ in range(attempts):
        with LoadProbe() as probe:  # one attempt: as many runs as fill the window (their medians)
            start, inner = time.perf_counter(), [once()]
            while time.perf_counter() - start < MIN_WINDOW_S:
                inner.append(once())
        ttft = statistics.median(r[0] for r in inner)
        decode = [statistics.median(r[1][i] for r in inner) for i in range(len(inner[0][1]))]
        runs.append((ttft, decode, probe.foreign_cores))
        if sum(r[2] <= FOREIGN_LIMIT_CORES for r in runs) >= repeats:
            break
        if probe.foreign_cores > FOREIGN_LIMIT_CORES:
            time.sleep(PAUSE_S)
    clean = [r for r in runs if r[2] <= FOREIGN_LIMIT_CORES]
    reliable = len(clean) >= min(MIN_CLEAN, repeats)
    used = clean if reliable else runs
    ttfts = [r[0] for r in used]
    decodes = [d for r in used for d in r[1]]
    return {
        "ttft_ms": statistics.median(ttfts),
        "ttft_ms_min": min(ttfts),
        "ttft_ms_max": max(ttfts),
        "decode_ms_per_token": statistics.median(decodes),
        "decode_ms_p10": _percentile(decodes, 10),
        "decode_ms_p90": _percentile(decodes, 90),
        "repeats_used": len(used),
        "repeats_discarded": len(runs) - len(used),
        "foreign_load_cores": round(max(r[2] for r in runs), 2),
        "reliable": reliable,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def serve(ops: dict[str, Any]) -> int:
    """A runtime worker's main: one JSON request in argv[1], one JSON answer as stdout's last line."""
    import json
    import sys

    req = json.loads(sys.argv[1])
    sys.stdout.write("\n" + json.dumps(ops[req["op"]](req)) + "\n")
    return 0
