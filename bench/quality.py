"""Quality at size: every artifact, ours and the peers', scored by one harness on the same tokens.

    python -m bench.quality [--distill-minutes 12] [--rebuild]

Artifacts are built once under bench/results/artifacts/ (``--rebuild`` redoes them). Evaluation text
the models were not tuned on: license texts the calibration/distillation did not use, and text the
teacher wrote itself (sampled from built-in prompts). The reference is the float teacher in torch.
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

ART = RESULTS / "artifacts"
EVAL_TOKENS = 1024
# SmolLM2's float teacher is its packaged Q4_1 GGUF dequantized: Q4_1/Q5_1 would reproduce it almost
# exactly for that reason alone (FIELD-NOTES), so the mixed rows may not use them.
MIXED_TYPES = "IQ4_NL,Q4_0,Q5_0,Q8_0"
# onnxruntime's GPTQ runs the whole model once per MatMul input per calibration sequence (121 x 16
# prefills on SmolLM2, ~12 min on 2 cores): 4096 tokens, a quarter of what our CLI calibrates on.
# In onnxruntime 1.32 it propagates no error and writes its RTN asymmetric blocks (peers.ort_int4_gptq).
ORT_GPTQ_SEQUENCES = 16
ORT_GPTQ_SEQ_LEN = 256


def compress_cli(out: Path, *args: str) -> Path:
    """Run our CLI as a user would; returns the bundle directory."""
    cmd = [sys.executable, "-m", "compressor", "compress", "smollm2-135m", "--device", "host"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--force", "--quiet", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"compressor compress {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return out


def train_text_file() -> Path:
    """The calibration/distillation text as one file (for llama-imatrix, which reads one file)."""
    path = ART / "calibration.txt"
    if not path.is_file():
        ART.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join((LICENSES / d).read_text() for d in TRAIN_DOCS), encoding="utf-8")
    return path


def teacher_hf_dir(art: Any) -> Path:
    """The float teacher as a Hugging Face directory, the input every peer converter expects."""
    path = ART / "teacher-hf"
    if not (path / "config.json").is_file():
        art.model.float().save_pretrained(path)
        art.tokenizer.save_pretrained(path)
    return path


def recipes(minutes: float, art: Any) -> list[tuple[str, str, str, Callable[[], Path]]]:
    """(row label, family, file inside ART, how to build it)."""
    calib = [str(LICENSES / d) for d in TRAIN_DOCS]
    f16 = ART / "llama.cpp-F16.gguf"
    fp32_onnx = ART / "optimum-fp32" / "model.onnx"

    def convert() -> Path:
        return peers.convert_hf_to_gguf(teacher_hf_dir(art), f16)

    def optimum_export() -> Path:
        from optimum.exporters.onnx import main_export

        main_export(str(teacher_hf_dir(art)), str(fp32_onnx.parent), task="text-generation-with-past")
        return fp32_onnx

    def with_imatrix(ftype: str) -> Callable[[], Path]:
        def build() -> Path:
            imat = ART / "imatrix.gguf"
            if not imat.is_file():
                peers.llama_imatrix(f16, train_text_file(), imat)
            return peers.llama_quantize_imatrix(f16, imat, ART / f"llama.cpp-{ftype}-imatrix.gguf", ftype)

        return build

    def ours(name: str, *args: str) -> Callable[[], Path]:
        return lambda: compress_cli(ART / name, *args)

    # like onnxruntime's own rows; fp32 activations decode slowly: these rows are about quality, not speed
    fp32_activations = ["--onnx-accuracy-level", "0", "--max-decode-ms", "1000"]
    mixed = ["--quant", "gguf:mixed", "--mixed-types", MIXED_TYPES, "--max-size-mib", "87.5"]
    mixed += ["--calib-data", *calib]
    long = ["--distill-minutes", str(minutes), "--distill-tokens", "100000000", "--distill-lr", "1e-4"]
    long += ["--calib-data", *calib]
    return [
        ("llama.cpp F16", "llama.cpp", "llama.cpp-F16.gguf", convert),
        (
            "llama.cpp Q8_0",
            "llama.cpp",
            "llama.cpp-Q8_0.gguf",
            lambda: peers.llama_quantize_api(f16, ART / "llama.cpp-Q8_0.gguf", "Q8_0"),
        ),
        (
            "llama.cpp Q4_0",
            "llama.cpp",
            "llama.cpp-Q4_0.gguf",
            lambda: peers.llama_quantize_api(f16, ART / "llama.cpp-Q4_0.gguf", "Q4_0"),
        ),
        (
            "llama.cpp Q4_K_M",
            "llama.cpp",
            "llama.cpp-Q4_K_M.gguf",
            lambda: peers.llama_quantize_api(f16, ART / "llama.cpp-Q4_K_M.gguf", "Q4_K_M"),
        ),
        ("llama.cpp Q4_0 + imatrix", "llama.cpp", "llama.cpp-Q4_0-imatrix.gguf", with_imatrix("Q4_0")),
        ("llama.cpp IQ4_NL + imatrix", "llama.cpp", "llama.cpp-IQ4_NL-imatrix.gguf", with_imatrix("IQ4_NL")),
        ("llama.cpp Q4_K_M + imatrix", "llama.cpp", "llama.cpp-Q4_K_M-imatrix.gguf", with_imatrix("Q4_K_M")),
        ("llama.cpp Q5_K_M + imatrix", "llama.cpp", "llama.cpp-Q5_K_M-imatrix.gguf", with_imatrix("Q5_K_M")),
        ("onnxruntime fp32 (optimum)", "onnxruntime", "optimum-fp32/model.onnx", optimum_export),
        (
            "onnxruntime int4 RTN",
            "onnxruntime",
            "ort-int4/model.onnx",
            lambda: peers.ort_int4(fp32_onnx, ART / "ort-int4" / "model.onnx"),
        ),
        (
            "onnxruntime int4 HQQ",
            "onnxruntime",
            "ort-int4-hqq/model.onnx",
            lambda: peers.ort_int4_hqq(fp32_onnx, ART / "ort-int4-hqq" / "model.onnx"),
        ),
        (
            f"onnxruntime int4 GPTQ ({ORT_GPTQ_SEQUENCES}x{ORT_GPTQ_SEQ_LEN} calibration tokens)",
            "onnxruntime",
            "ort-int4-gptq/model.onnx",
            lambda: peers.ort_int4_gptq(
                fp32_onnx,
                ART / "ort-int4-gptq" / "model.onnx",
                token_ids(art.tokenizer, TRAIN_DOCS),
                seq_len=ORT_GPTQ_SEQ_LEN,
                sequences=ORT_GPTQ_SEQUENCES,
            ),
        ),
        (
            "onnxruntime int8 dynamic",
            "onnxruntime",
            "ort-int8/model.onnx",
            lambda: peers.ort_int8_dynamic(fp32_onnx, ART / "ort-int8" / "model.onnx"),
        ),
        ("ours gguf:Q8_0", "ours", "ours-q8_0/model.gguf", ours("ours-q8_0", "--quant", "gguf:Q8_0")),
        (
            "ours gguf:Q4_0 RTN",
            "ours",
            "ours-q4_0/model.gguf",
            ours("ours-q4_0", "--quant", "gguf:Q4_0", "--ptq", "rtn"),
        ),
        (
            "ours gguf:Q4_0 weighted",
            "ours",
            "ours-q4_0-weighted/model.gguf",
            ours("ours-q4_0-weighted", "--quant", "gguf:Q4_0", "--ptq", "weighted", "--calib-data", *calib),
        ),
        (
            "ours gguf:IQ4_NL weighted",
            "ours",
            "ours-iq4_nl-weighted/model.gguf",
            ours(
                "ours-iq4_nl-weighted", "--quant", "gguf:IQ4_NL", "--ptq", "weighted", "--calib-data", *calib
            ),
        ),
        (
            "ours gguf:IQ4_NL GPTQ",
            "ours",
            "ours-iq4_nl-gptq/model.gguf",
            ours("ours-iq4_nl-gptq", "--quant", "gguf:IQ4_NL", "--ptq", "gptq", "--calib-data", *calib),
        ),
        (
            "ours gguf:mixed <= 87.5 MiB, GPTQ (default)",
            "ours",
            "ours-mixed-87.5-gptq/model.gguf",
            ours("ours-mixed-87.5-gptq", *mixed),
        ),
        (
            "ours gguf:mixed <= 87.5 MiB, weighted",
            "ours",
            "ours-mixed-87.5/model.gguf",
            ours("ours-mixed-87.5", *mixed, "--ptq", "weighted"),
        ),
        (
            "ours onnx:int4",
            "ours",
            "ours-onnx-int4/onnx/model.onnx",
            ours("ours-onnx-int4", "--quant", "onnx:int4"),
        ),
        (
            "ours onnx:int4 weighted",
            "ours",
            "ours-onnx-int4-weighted/onnx/model.onnx",
            ours(
                "ours-onnx-int4-weighted", "--quant", "onnx:int4", "--ptq", "weighted", "--calib-data", *calib
            ),
        ),
        (
            "ours onnx:int4 GPTQ (fp32 activations, as onnxruntime's rows)",
            "ours",
            "ours-onnx-int4-gptq/onnx/model.onnx",
            ours(
                "ours-onnx-int4-gptq",
                "--quant",
                "onnx:int4",
                "--ptq",
                "gptq",
                *fp32_activations,
                "--calib-data",
                *calib,
            ),
        ),
        (
            "ours onnx:int4-asym GPTQ (fp32 activations)",
            "ours",
            "ours-onnx-int4-asym-gptq/onnx/model.onnx",
            ours(
                "ours-onnx-int4-asym-gptq",
                "--quant",
                "onnx:int4-asym",
                "--ptq",
                "gptq",
                *fp32_activations,
                "--calib-data",
                *calib,
            ),
        ),
        (
            "ours onnx:mixed <= 100 MiB, GPTQ (fp32 activations)",
            "ours",
            "ours-onnx-mixed-100/onnx/model.onnx",
            ours(
                "ours-onnx-mixed-100",
                "--quant",
                "onnx:mixed",
                "--max-size-mib",
                "100",
                *fp32_activations,
                "--calib-data",
                *calib,
            ),
        ),
        (
            f"ours gguf:mixed <= 87.5 MiB + QAT, learned scales ({minutes:g} min)",
            "ours",
            f"ours-mixed-87.5-qat-{minutes:g}/model.gguf",
            lambda: compress_cli(
                ART / f"ours-mixed-87.5-qat-{minutes:g}",
                *mixed[: -len(calib)],
                str(train_text_file()),
                "--qat",
                "--distill-minutes",
                str(minutes),
            ),
        ),
        (
            f"ours gguf:Q4_0 QAT ({minutes:g} min)",
            "ours",
            "ours-q4_0-qat/model.gguf",
            ours("ours-q4_0-qat", "--quant", "gguf:Q4_0", "--qat", *long),
        ),
        (
            f"ours pruned 6h/3kv/1024 + distill ({minutes:g} min), Q4_0",
            "ours",
            "ours-pruned-distill/model.gguf",
            ours(
                "ours-pruned-distill",
                "--quant",
                "gguf:Q4_0",
                "--prune",
                "heads=6,kv_heads=3,mlp=1024",
                "--distill",
                *long,
            ),
        ),
    ]


def eval_sets(art: Any) -> dict[str, list[int]]:
    from compressor.calibration import token_stream

    teacher_text, _, _ = token_stream(art, [], 4096, teacher=True)
    return {
        "licenses": token_ids(art.tokenizer, HELDOUT_DOCS)[:EVAL_TOKENS],
        "teacher-text": teacher_text[-EVAL_TOKENS:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--distill-minutes", type=float, default=20.0, help="budget of each distilled row (default 20)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact")
    parser.add_argument("--only", help="comma-separated substrings of row labels to include")
    args = parser.parse_args()
    from bench.harness import evaluate, reference_logits
    from compressor.loading import load_model

    art = load_model("smollm2-135m")
    sets = eval_sets(art)
    refs = {name: reference_logits(art.model, ids) for name, ids in sets.items()}
    results = []
    for label, family, rel, build in recipes(args.distill_minutes, art):
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
        row: dict[str, Any] = {
            "label": label,
            "family": family,
            "file": rel,
            "build_seconds": build_s,
            "host": host(),
        }
        for name, ids in sets.items():
            scores = evaluate(path, refs[name], ids)
            row["file_mib"] = scores.pop("file_mib")
            row[name] = scores
        results.append(row)
        print(json.dumps(row), flush=True)
    write(merge_previous(results) if args.only else results, args.distill_minutes)


def write(results: list[dict[str, Any]], minutes: float) -> None:
    from bench.plot import pareto_svg

    headers = [
        "artifact",
        "MiB",
        "KL (licenses)",
        "top-1 (licenses)",
        "PPL (licenses)",
        "KL (teacher text)",
        "top-1 (teacher text)",
        "PPL (teacher text)",
    ]
    here = host()
    earlier = sorted({r.get("host", "an earlier run") for r in results} - {here})
    rows = [
        [r["label"] + ("" if r.get("host", "") == here else " †"), round(r["file_mib"], 1)]
        + [
            v
            for s in ("licenses", "teacher-text")
            for v in (f"{r[s]['mean_kl']:.4f}", f"{r[s]['top1_agreement']:.3f}", f"{r[s]['perplexity']:.2f}")
        ]
        for r in results
    ]
    table = markdown_table(headers, rows)
    if earlier:
        table += (
            f"\n\n† kept from an earlier run on {'; '.join(earlier)} (same texts; the teacher-text tokens "
            "are re-sampled on each machine and may differ slightly)."
        )
    print(f"\nSmolLM2-135M, {EVAL_TOKENS} held-out tokens per text, on {host()}\n\n{table}")
    points = [
        {"label": r["label"], "family": r["family"], "x": r["file_mib"], "y": r["licenses"]["mean_kl"]}
        for r in results
    ]
    svg = pareto_svg(points, "SmolLM2-135M: size vs mean KL to the float teacher (held-out licenses)")
    (RESULTS / "pareto.svg").write_text(svg, encoding="utf-8")
    save("quality", {"host": host(), "distill_minutes": minutes, "rows": results, "table": table})


def merge_previous(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With --only: this run's rows replace the same labels of the last saved run; others are kept."""
    path = RESULTS / "quality.json"
    if not path.is_file():
        return results
    new = {r["label"]: r for r in results}
    saved = json.loads(path.read_text(encoding="utf-8"))
    old = [{"host": saved.get("host", "an earlier run"), **r} for r in saved["rows"]]
    merged = [new.pop(r["label"], r) for r in old]
    return merged + list(new.values())


if __name__ == "__main__":
    main()
