"""Pruning refit on SmolLM2-135M: KL to the unpruned model straight after pruning, and after the
least-squares refit of o_proj/down_proj (``stages.prune_refit``), before any distillation.

    python -m bench.prune_refit [--spec heads=6,kv_heads=3,mlp=1024] [--calib teacher|license]
                                [--calib-tokens 2048] [--targets projection,residual] [--damps 0.03,0.1,0.3]

Pruned once (activation importance on the calibration tokens); each (target, damp) refits its own
copy. Calibration: ``teacher`` is what ``compressor compress --prune`` uses by default (text the model
wrote, cached; the README's KL 3.05 figure; keep 2048 tokens, as other amounts sample new text that
may repeat the held-out split's), ``license`` the bench's training license texts (any amount, no
sampling). Held-out: the teacher-text split the pipeline reports on, and license texts no calibration
used; mean KL(teacher || student) per token, windows of 256 (``compressor.metrics.compare``).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from bench.common import HELDOUT_DOCS, TRAIN_DOCS, host, markdown_table, save, token_ids

SEQ = 256
HELDOUT_LICENSE_TOKENS = 4096


def _texts(art: Any, calib: str, n_tokens: int) -> tuple[list[Any], dict[str, list[int]]]:
    """(calibration batches (1, SEQ), held-out sets by name)."""
    import torch

    from compressor.calibration import calibration_ids, token_stream

    _, teacher_heldout, _ = token_stream(art, [], 2048, teacher=True)  # the pipeline's default held-out split
    heldout = {
        "teacher text": teacher_heldout,
        "license": token_ids(art.tokenizer, HELDOUT_DOCS)[:HELDOUT_LICENSE_TOKENS],
    }
    if calib == "teacher":
        batches, _, _ = calibration_ids(art, [], n_tokens)
    else:
        train = token_ids(art.tokenizer, TRAIN_DOCS)[:n_tokens]
        batches = [torch.tensor([train[i : i + SEQ]]) for i in range(0, len(train) - SEQ + 1, SEQ)]
    return batches, heldout


def _measure(student: Any, teacher: Any, heldout: dict[str, list[int]]) -> dict[str, float]:
    from compressor.metrics import compare

    out: dict[str, float] = {}
    for name, ids in heldout.items():
        m = compare(student, teacher, ids)
        out[f"kl {name}"], out[f"ppl {name}"] = m["mean_kl"], m["perplexity"]
        out[f"top1 {name}"] = m["top1_agreement"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="heads=6,kv_heads=3,mlp=1024", help="as --prune takes it")
    parser.add_argument("--calib", choices=("teacher", "license"), default="teacher")
    parser.add_argument("--calib-tokens", type=int, default=2048)
    parser.add_argument("--targets", default="projection,residual")
    parser.add_argument("--damps", default="0.03,0.1,0.3")
    args = parser.parse_args()
    from compressor.loading import load_model
    from stages.prune import prune_model
    from stages.prune_config import PruneConfig
    from stages.prune_refit import refit_outputs

    art = load_model("smollm2-135m")
    teacher = art.model
    batches, heldout = _texts(art, args.calib, args.calib_tokens)
    tokens = sum(b.numel() for b in batches)
    print(
        f"calibration: {tokens} tokens ({args.calib}); held-out: "
        + ", ".join(f"{k} {len(v)}" for k, v in heldout.items()),
        flush=True,
    )
    pruned, stats = prune_model(copy.deepcopy(teacher), PruneConfig.parse(args.spec), batches)
    base = _measure(pruned, teacher, heldout)
    rows: list[dict[str, Any]] = [{"refit": "none", "seconds": 0.0, **base}]
    print(f"no refit: {base}", flush=True)
    for target in args.targets.split(","):
        for damp in (float(d) for d in args.damps.split(",")):
            student = copy.deepcopy(pruned)
            start = time.perf_counter()
            fit = refit_outputs(student, teacher, batches, damp, stats.kept_layers, target)
            seconds = time.perf_counter() - start
            row = {
                "refit": f"{target}, damp {damp:g}",
                "seconds": seconds,
                **_measure(student, teacher, heldout),
            }
            row |= {k: v for k, v in fit.items() if k.startswith("mean_")}
            rows.append(row)
            print(row, flush=True)
            del student
    cols = ["refit", "seconds", *(f"{m} {h}" for h in heldout for m in ("kl", "ppl", "top1"))]
    table = markdown_table(cols, [[r[c] for c in cols] for r in rows])
    print(
        f"\nSmolLM2-135M pruned to {args.spec} ({stats.params_after / 1e6:.1f} M params, pruning "
        f"{stats.seconds:.1f} s), {tokens} calibration tokens ({args.calib}), on {host()}\n\n{table}"
    )
    save(
        "prune_refit",
        {
            "host": host(),
            "spec": args.spec,
            "calib": args.calib,
            "calibration_tokens": tokens,
            "heldout_tokens": {k: len(v) for k, v in heldout.items()},
            "prune_seconds": stats.seconds,
            "rows": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
