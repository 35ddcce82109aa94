"""Quality at size on a second family: Gemma 3 270M (the ``gemma3-270m`` built-in), ours and the peers',
scored by the same harness as ``bench.quality`` on the same held-out license tokens.

    python -m bench.family_quality [--rebuild] [--only LABELS]

The float teacher is the packaged Q4_K_M GGUF dequantized. llama.cpp's quantizer starts from our F32
GGUF of that teacher (validated exact against torch; llama.cpp's own converter needs the SentencePiece
``tokenizer.model``, which a GGUF source does not have), so every GGUF row starts from the same weights.
onnxruntime's quantizer starts from optimum-onnx's fp32 export of the same teacher.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers
from bench.common import HELDOUT_DOCS, LICENSES, RESULTS, TRAIN_DOCS, host, markdown_table, save, token_ids

MODEL = "gemma3-270m"
ART = RESULTS / "artifacts" / MODEL
EVAL_TOKENS = 1024
MIXED_TYPES = "IQ4_NL,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0"  # the teacher sits on a Q4_K grid, not a Q4_1 one


def compress_cli(out: Path, *args: str) -> Path:
    cmd = [sys.executable, "-m", "compressor", "compress", MODEL, "--device", "host", "--max-size-mib", "400"]
    cmd += ["--max-decode-ms", "1000", "--max-ttft-ms", "30000"]  # quality rows: budgets are not the point
    done = subprocess.run(
        [*cmd, "--out", str(out), "--force", "--quiet", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"compressor compress {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return out


def recipes(art: Any) -> list[tuple[str, str, str, Callable[[], Path]]]:
    """(row label, family, file inside ART, how to build it)."""
    calib = [str(LICENSES / d) for d in TRAIN_DOCS]
    f32 = ART / "teacher-F32.gguf"
    fp32_onnx = ART / "optimum-fp32" / "model.onnx"

    def teacher_gguf() -> Path:
        from exporters.gguf import export_gguf

        ART.mkdir(parents=True, exist_ok=True)
        return export_gguf(art, ART, f32.name)

    def optimum_export() -> Path:
        from optimum.exporters.onnx import main_export

        hf = ART / "teacher-hf"
        art.model.save_pretrained(hf)
        art.tokenizer.save_pretrained(hf)
        main_export(str(hf), str(fp32_onnx.parent), task="text-generation-with-past")
        return fp32_onnx

    def llama(ftype: str) -> Callable[[], Path]:
        return lambda: peers.llama_quantize_api(f32, ART / f"llama.cpp-{ftype}.gguf", ftype)

    def with_imatrix(ftype: str) -> Callable[[], Path]:
        def build() -> Path:
            imat = ART / "imatrix.gguf"
            if not imat.is_file():
                text = ART / "calibration.txt"
                text.write_text("\n\n".join((LICENSES / d).read_text() for d in TRAIN_DOCS), encoding="utf-8")
                peers.llama_imatrix(f32, text, imat)
            return peers.llama_quantize_imatrix(f32, imat, ART / f"llama.cpp-{ftype}-imatrix.gguf", ftype)

        return build

    def ours(name: str, *args: str) -> Callable[[], Path]:
        return lambda: compress_cli(ART / name, *args)

    def mixed_at_q4_0() -> Path:  # the size of llama.cpp's Q4_0 file of this model, to the byte
        size = (ART / "llama.cpp-Q4_0.gguf").stat().st_size / 2**20
        args = ["--quant", "gguf:mixed", "--mixed-types", MIXED_TYPES, "--max-size-mib", f"{size:.2f}"]
        return compress_cli(ART / "ours-mixed", *args, "--calib-data", *calib)

    return [
        ("teacher F32 (ours, exact)", "ours", "teacher-F32.gguf", teacher_gguf),
        ("llama.cpp Q8_0", "llama.cpp", "llama.cpp-Q8_0.gguf", llama("Q8_0")),
        ("llama.cpp Q4_0", "llama.cpp", "llama.cpp-Q4_0.gguf", llama("Q4_0")),
        ("llama.cpp Q4_K_M", "llama.cpp", "llama.cpp-Q4_K_M.gguf", llama("Q4_K_M")),
        ("llama.cpp Q4_0 + imatrix", "llama.cpp", "llama.cpp-Q4_0-imatrix.gguf", with_imatrix("Q4_0")),
        ("llama.cpp Q4_K_M + imatrix", "llama.cpp", "llama.cpp-Q4_K_M-imatrix.gguf", with_imatrix("Q4_K_M")),
        ("onnxruntime fp32 (optimum)", "onnxruntime", "optimum-fp32/model.onnx", optimum_export),
        (
            "onnxruntime int4 RTN",
            "onnxruntime",
            "ort-int4/model.onnx",
            lambda: peers.ort_int4(fp32_onnx, ART / "ort-int4" / "model.onnx"),
        ),
        ("ours gguf:Q8_0", "ours", "ours-q8/model.gguf", ours("ours-q8", "--quant", "gguf:Q8_0")),
        (
            "ours gguf:Q4_0 GPTQ (calibrated)",
            "ours",
            "ours-q4/model.gguf",
            ours("ours-q4", "--quant", "gguf:Q4_0", "--calib-data", *calib),
        ),
        ("ours gguf:mixed at llama.cpp Q4_0's size", "ours", "ours-mixed/model.gguf", mixed_at_q4_0),
        (
            "ours onnx:int8",
            "ours",
            "ours-onnx-int8/onnx/model.onnx",
            ours("ours-onnx-int8", "--quant", "onnx:int8"),
        ),
        (
            "ours onnx:int4 GPTQ (calibrated)",
            "ours",
            "ours-onnx-int4/onnx/model.onnx",
            ours("ours-onnx-int4", "--quant", "onnx:int4", "--calib-data", *calib),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact")
    parser.add_argument("--only", help="comma-separated substrings of row labels to include")
    args = parser.parse_args()
    from bench.harness import evaluate, reference_logits
    from compressor.loading import load_model

    art = load_model(MODEL)
    ids = token_ids(art.tokenizer, HELDOUT_DOCS)[:EVAL_TOKENS]
    ref = reference_logits(art.model, ids)
    results = []
    for label, family, rel, build in recipes(art):
        if args.only and not any(s in label for s in args.only.split(",")):
            continue
        path = ART / rel
        build_s = None
        if args.rebuild or not path.is_file():
            if args.rebuild and path.parent != ART and path.parent.is_dir():
                shutil.rmtree(path.parent)
            print(f"building {label} ...", flush=True)
            t = time.perf_counter()
            build()
            build_s = time.perf_counter() - t
        scores = evaluate(path, ref, ids)
        row = {"label": label, "family": family, "file": rel, "build_seconds": build_s, **scores}
        results.append(row)
        print(json.dumps(row), flush=True)
    write(_merge_previous(results) if args.only else results)


def _merge_previous(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With --only: this run's rows replace the same labels of the last saved run; others are kept."""
    path = RESULTS / "quality_gemma3.json"
    if not path.is_file():
        return results
    new = {r["label"]: r for r in results}
    old = json.loads(path.read_text(encoding="utf-8"))["rows"]
    return [new.pop(r["label"], r) for r in old] + list(new.values())


def write(results: list[dict[str, Any]]) -> None:
    headers = ["artifact", "MiB", "KL (licenses)", "top-1 (licenses)", "PPL (licenses)"]
    rows = [
        [r["label"], round(r["file_mib"], 1), f"{r['mean_kl']:.4f}", f"{r['top1_agreement']:.3f}",
         f"{r['perplexity']:.2f}"]
        for r in results
    ]  # fmt: skip
    table = markdown_table(headers, rows)
    print(f"\nGemma 3 270M, {EVAL_TOKENS} held-out tokens, on {host()}\n\n{table}")
    save("quality_gemma3", {"host": host(), "model": MODEL, "rows": results, "table": table})


if __name__ == "__main__":
    main()
