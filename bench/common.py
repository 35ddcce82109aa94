"""What every benchmark shares: the text it runs on, peak memory, the host it ran on, table output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

LICENSES = Path("/usr/share/common-licenses")
# Training/calibration text and held-out text are different documents (both on every Debian machine).
TRAIN_DOCS = ("GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "MPL-1.1")
HELDOUT_DOCS = ("Artistic", "CC0-1.0", "BSD", "LGPL-3")
RESULTS = Path(__file__).with_name("results")


def token_ids(tokenizer: Any, docs: tuple[str, ...]) -> list[int]:
    from compressor.textdata import tokenize_docs

    return tokenize_docs([(LICENSES / d).read_text(encoding="utf-8") for d in docs], tokenizer)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def host() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run_child(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` and parse the JSON object on its last stdout line."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:,.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
