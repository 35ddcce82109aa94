"""QAT with learned scales: held-out KL against minutes, for a few settings, from one PTQ start.

    python -m bench.qat_sweep [--minutes 3] [--configs follow:1e-3:5e-5,frozen:1e-3:0]

The start is what ``compress --quant gguf:mixed --mixed-types IQ4_NL,Q4_0,Q5_0,Q8_0 --max-size-mib
87.5 --calib-data <bench calibration text>`` quantizes (GPTQ codes, weighted-search scales), computed
once. Each config (codes mode : scale lr : weight lr) then trains for ``--minutes`` through the exact
learned quantizers; the student is evaluated in torch (bit-exact with the file, except llama.cpp's
8-bit activations) on the bench's two held-out texts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from bench.common import LICENSES, TRAIN_DOCS, host, save


def _start(art: Any, calib: list[Path]) -> tuple[Any, dict[str, Any], float]:
    from compressor.config import CompressRequest
    from compressor.inputs import resolve_inputs
    from compressor.pipeline import Run, _quantize_stage
    from compressor.stage import StageContext

    req = CompressRequest(
        model="smollm2-135m",
        device="raspberry-pi-5",
        out=Path("/tmp/unused"),
        quant="gguf:mixed",
        mixed_types="IQ4_NL,Q4_0,Q5_0,Q8_0",
        max_size_mib=87.5,
        calib_data=calib,
        qat=True,
    )
    profile, schemes = resolve_inputs(req)
    run = Run(req, profile, schemes)
    ctx = StageContext(profile=profile, scheme=schemes[0])
    t = time.perf_counter()
    scheme, blocks, _ = _quantize_stage(run, art, ctx).ptq_blocks(art.model, schemes[0])
    return scheme, blocks, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--configs", default="follow:1e-3:5e-5,frozen:1e-3:0,follow:3e-3:1e-4")
    args = parser.parse_args()
    from bench.quality import eval_sets
    from compressor.calibration import token_stream
    from compressor.loading import load_model
    from compressor.metrics import compare
    from stages.distill import DistillConfig
    from stages.distill_stage import DistillStage

    art = load_model("smollm2-135m")
    calib = [LICENSES / d for d in TRAIN_DOCS]
    scheme, blocks, ptq_s = _start(art, calib)
    print(f"PTQ start in {ptq_s:.0f} s", flush=True)
    sets = eval_sets(art)
    train, heldout, _ = token_stream(art, calib, 1 << 20)
    import torch

    from compressor.ggml_types import dequantize

    ptq = copy.deepcopy(art.model)
    params = dict(ptq.named_parameters())
    with torch.no_grad():
        for name, b in blocks.items():
            params[name].copy_(torch.from_numpy(dequantize(b)).reshape(params[name].shape))
    rows: list[dict[str, Any]] = [{"config": "PTQ start"}]
    for name, ids in sets.items():
        rows[0][name] = round(compare(ptq, art.model, ids)["mean_kl"], 5)
    print(json.dumps(rows[0]), flush=True)
    del ptq
    for spec in args.configs.split(","):
        codes, scale_lr, lr = spec.split(":")
        cfg = DistillConfig(
            max_tokens=None,
            max_minutes=args.minutes,
            lr=float(lr) or 1e-9,
            scale_lr=float(scale_lr),
            eval_every=10**9,
        )
        student = art.evolve("copy", model=copy.deepcopy(art.model))
        stage = DistillStage(cfg, art.model, train, heldout, scheme, qat_blocks=blocks, qat_codes=codes)  # type: ignore[arg-type]
        t = time.perf_counter()
        result = stage.run(student, None)  # type: ignore[arg-type]
        model = result.artifact.model
        row: dict[str, Any] = {"config": spec, "seconds": round(time.perf_counter() - t, 1)}
        row.update(
            {k: result.report.summary[k] for k in ("steps", "tokens", "scales_changed", "codes_changed")}
        )
        row["heldout_kl_before"] = result.report.summary["heldout_kl_before"]
        for name, ids in sets.items():
            row[name] = round(compare(model, art.model, ids)["mean_kl"], 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    save("qat_sweep", {"host": host(), "minutes": args.minutes, "ptq_seconds": ptq_s, "rows": rows})


if __name__ == "__main__":
    main()
