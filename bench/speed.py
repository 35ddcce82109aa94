"""Decode speed against the memory-bandwidth roofline, ours and the peers' artifacts, alternating runs.

    python -m bench.speed [--rounds 3]

Each round measures every artifact once (128-token prompt, then 128 generated tokens with the KV cache,
2 threads), in turn, so a slow phase of the machine hits every row alike; the table gives medians over
rounds. The roofline: a decode step reads every weight once, so tokens/s cannot exceed
(memory bandwidth / weight bytes); the bandwidth is measured here with a large array copy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import host, markdown_table, save
from bench.harness import file_bytes
from bench.quality import ART

ROWS = [
    ("ours gguf:Q4_0 (llama.cpp)", "ours-q4_0/model.gguf"),
    ("ours pruned 6h/3kv/1024 Q4_0 (llama.cpp)", "ours-pruned-distill/model.gguf"),
    ("ours onnx:int4, optimum graph (onnxruntime, Python loop)", "speed-onnx-optimum/onnx/model.onnx"),
    ("ours onnx:int4, optimum graph (onnxruntime-genai)", "speed-onnx-optimum/onnx/genai_config.json"),
    ("ours onnx:int4, GQA graph (onnxruntime, Python loop)", "speed-onnx-gqa/onnx/model.onnx"),
    ("ours onnx:int4, GQA graph (onnxruntime-genai)", "speed-onnx-gqa/onnx/genai_config.json"),
    ("llama.cpp Q4_0", "llama.cpp-Q4_0.gguf"),
    ("llama.cpp Q4_K_M", "llama.cpp-Q4_K_M.gguf"),
    ("llama.cpp Q8_0", "llama.cpp-Q8_0.gguf"),
]
PROMPT, GEN, THREADS = 128, 128, 2


def copy_bandwidth_gbps(mib: int = 512, repeats: int = 5) -> float:
    """Best-of-N bandwidth of a numpy array copy (bytes read + bytes written per second)."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def build_onnx_layouts() -> None:
    """SmolLM2 at onnx:int4 (the same blocks) written both ways: optimum's export rewritten to our
    blocks, and the direct GroupQueryAttention graph (exporters.onnx_graph)."""
    import copy

    from compressor.loading import load_model
    from compressor.quant import QuantScheme
    from exporters.onnx import export_onnx
    from stages.quantize import quantize_model

    todo = [(d, layout) for d, layout in (("speed-onnx-optimum", "optimum"), ("speed-onnx-gqa", "auto"))]
    todo = [(d, layout) for d, layout in todo if not (ART / d / "onnx" / "genai_config.json").is_file()]
    if not todo:
        return
    art = load_model("smollm2-135m")
    scheme = QuantScheme.parse("onnx:int4")
    model, packed, _ = quantize_model(copy.deepcopy(art.model), scheme)
    art = art.evolve("quantize", model=model, scheme=scheme, quantized=packed)
    for d, layout in todo:
        print(f"writing {d} ({layout} layout)", flush=True)
        (ART / d).mkdir(parents=True, exist_ok=True)
        export_onnx(art, ART / d, layout)


def measure(path: Path) -> dict[str, Any]:
    if path.name == "genai_config.json":
        from exporters import genai_runtime

        return genai_runtime.measure(
            path.parent, THREADS, PROMPT, vocab_size=49152, gen_tokens=GEN, repeats=1
        )
    if path.suffix == ".gguf":
        from exporters import llama_runtime

        return llama_runtime.measure(
            path, THREADS, n_ctx=512, prompt_tokens=PROMPT, gen_tokens=GEN, repeats=1
        )
    from exporters import ort_runtime

    return ort_runtime.measure(path, THREADS, PROMPT, vocab_size=49152, gen_tokens=GEN, repeats=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args()
    build_onnx_layouts()
    rows = [(label, ART / rel) for label, rel in ROWS if (ART / rel).is_file()]
    missing = [label for label, rel in ROWS if not (ART / rel).is_file()]
    if missing:
        print(f"skipping (build them with python -m bench.quality): {', '.join(missing)}")
    bandwidth = copy_bandwidth_gbps()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in rows}
    for r in range(args.rounds):
        for label, path in rows:
            print(f"round {r + 1}/{args.rounds}: {label}", flush=True)
            runs[label].append(measure(path))
    bandwidth = max(bandwidth, copy_bandwidth_gbps())  # before and after: the better of the two
    table, results = [], []
    for label, path in rows:
        ms = statistics.median(m["decode_ms_per_token"] for m in runs[label])
        ttft = statistics.median(m["ttft_ms"] for m in runs[label])
        size = file_bytes(path.parent / "model.onnx" if path.name == "genai_config.json" else path)
        roof = bandwidth * 1e9 / size  # tokens/s if every weight byte were read once per token at peak
        tps = 1000 / ms
        results.append(
            {
                "label": label,
                "file_mib": size / 2**20,
                "decode_ms_per_token": ms,
                "ttft_ms": ttft,
                "tokens_per_s": tps,
                "roofline_tokens_per_s": roof,
                "runs": runs[label],
            }
        )
        table.append(
            [
                label,
                round(size / 2**20, 1),
                round(ms, 2),
                round(tps, 1),
                round(ttft),
                round(roof),
                f"{tps / roof:.0%}",
            ]
        )
    headers = [
        "artifact",
        "MiB",
        "decode ms/token",
        "tokens/s",
        "TTFT ms (128 tok)",
        "roofline tokens/s",
        "of roofline",
    ]
    text = markdown_table(headers, table)
    print(
        f"\nDecode, {PROMPT}-token prompt + {GEN} tokens, {THREADS} threads, median of {args.rounds} "
        f"alternating rounds; copy bandwidth {bandwidth:.1f} GB/s; on {host()}\n\n{text}"
    )
    save(
        "speed",
        {"host": host(), "bandwidth_gbps": bandwidth, "rounds": args.rounds, "rows": results, "table": text},
    )


if __name__ == "__main__":
    main()
