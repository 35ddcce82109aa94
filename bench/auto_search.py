"""The search against a hand-written scheme on the same budget (SmolLM2-135M).

    python -m bench.auto_search [--rebuild]

Rows: ``--quant gguf:Q4_0`` by hand; ``compress`` with nothing pinned and ``--max-size-mib`` set to
that Q4_0 file's size (the same budget); and the one-command runs for raspberry-pi-5 and android-2gb
with the profiles' own budgets. Every file is scored by the bench harness in llama.cpp on the held-out
license tokens (not the calibration sample) against the float teacher; the search's choice and time
come from its report.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import HELDOUT_DOCS, RESULTS, host, markdown_table, save, token_ids

ART = RESULTS / "artifacts" / "auto"
EVAL_TOKENS = 1024


def compress(out: Path, device: str, *args: str) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "compressor", "compress", "smollm2-135m", "--device", device]
    t = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--out", str(out), "--force", "--quiet", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"compressor compress {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact")
    args = parser.parse_args()
    from bench.harness import evaluate, reference_logits
    from compressor.loading import load_model

    art = load_model("smollm2-135m")
    ids = token_ids(art.tokenizer, HELDOUT_DOCS)[:EVAL_TOKENS]
    ref = reference_logits(art.model, ids)
    seconds: dict[str, float | None] = {}

    def build(name: str, device: str, *flags: str) -> Path:
        out = ART / name
        if args.rebuild or not (out / "model.gguf").is_file():
            print(f"building {name} ...", flush=True)
            _, seconds[name] = compress(out, device, *flags)
        return out

    hand = build("hand-q4_0", "raspberry-pi-5", "--quant", "gguf:Q4_0")
    budget = (hand / "model.gguf").stat().st_size / 2**20
    rows_in = [
        ("hand: --quant gguf:Q4_0", hand, "raspberry-pi-5"),
        (
            f"auto: --max-size-mib {budget:.2f} (Q4_0's size)",
            build("auto-q4-budget", "raspberry-pi-5", "--max-size-mib", f"{budget:.4f}"),
            "raspberry-pi-5",
        ),
        (
            # SmolLM2's teacher is its Q4_1 GGUF dequantized, so Q4_1/Q5_1 rebuild it almost exactly:
            # the same budget with the types off the teacher's grid is the fair comparison
            f"auto: --max-size-mib {budget:.2f}, --mixed-types IQ4_NL,Q4_0,Q5_0,Q8_0",
            build(
                "auto-q4-budget-offgrid",
                "raspberry-pi-5",
                "--max-size-mib",
                f"{budget:.4f}",
                "--mixed-types",
                "IQ4_NL,Q4_0,Q5_0,Q8_0",
            ),
            "raspberry-pi-5",
        ),
        ("auto: raspberry-pi-5 (profile budgets)", build("auto-pi5", "raspberry-pi-5"), "raspberry-pi-5"),
        ("auto: android-2gb (profile budgets)", build("auto-android", "android-2gb"), "android-2gb"),
    ]
    results: list[dict[str, Any]] = []
    for label, out, device in rows_in:
        scores = evaluate(out / "model.gguf", ref, ids)
        rep = json.loads((out / "report.json").read_text())
        search = rep.get("search") or {}
        results.append(
            {
                "label": label,
                "device": device,
                "chosen": ", ".join(search.get("chosen", [])) or rep["scheme"],
                "search_seconds": search.get("seconds"),
                "candidates": len(search.get("candidates", [])),
                "build_seconds": seconds.get(out.name),
                "decode_ms": next(
                    (c["value"] for c in rep["checks"] if c["budget"] == "max_decode_ms_per_token"), None
                ),
                **scores,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    rows = [
        [
            r["label"],
            r["chosen"],
            f"{r['file_mib']:.1f}",
            f"{r['mean_kl']:.4f}",
            f"{r['top1_agreement']:.3f}",
            f"{r['perplexity']:.2f}",
            "-" if r["decode_ms"] is None else f"{r['decode_ms']:.1f}",
            "-" if r["search_seconds"] is None else f"{r['search_seconds']:.0f}",
        ]
        for r in results
    ]
    table = markdown_table(
        ["run", "chosen", "MiB", "KL (licenses)", "top-1", "PPL", "decode ms (device est.)", "search s"], rows
    )
    save("auto_search", {"host": host(), "eval_tokens": len(ids), "results": results, "table": table})
    print(table)


if __name__ == "__main__":
    main()
