"""Distillation throughput: a naive loop vs ours, same student, same tokens, same schedule.

    python -m bench.distill_loop [--steps 8] [--students pruned,qat]

The naive loop is what one writes first: the fp32 teacher forward every step, the student's full
49152-wide logits, the full-vocabulary KL, AdamW on every parameter (tied embedding included).
Ours is ``stages.distill.distill`` with its defaults (teacher top-k cached once, the student's head
evaluated at those ids only, embedding frozen, bf16 autocast where the CPU has it, eager attention).
Both train SmolLM2-135M students at batch 8 x 256 on the same license texts, with the same learning-rate
schedule, and are then evaluated on held-out text (mean KL to the float teacher, top-1 agreement).
Each row runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

BATCH, SEQ, LR = 8, 256, 1e-4


def _student(kind: str, teacher: Any, train: list[int]) -> Any:
    import torch

    from compressor.quant import QuantScheme
    from stages.fake_quant import apply_fake_quant
    from stages.prune import prune_model
    from stages.prune_config import PruneConfig

    model = copy.deepcopy(teacher)
    if kind == "pruned":  # the healing case: 6 heads / 3 KV heads / MLP 1024
        calib = [torch.tensor([train[i : i + SEQ]]) for i in range(0, 8 * SEQ, SEQ)]
        model, _ = prune_model(model, PruneConfig.parse("heads=6,kv_heads=3,mlp=1024"), calib)
        return model
    return apply_fake_quant(model, QuantScheme.parse("gguf:Q4_0"))  # the QAT case


def naive_loop(student: Any, teacher: Any, train: list[int], steps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from stages.distill import DistillConfig, _lr_at

    cfg = DistillConfig(lr=LR, batch_size=BATCH, seq_len=SEQ, max_tokens=steps * BATCH * SEQ)
    seqs = torch.tensor(train[: steps * BATCH * SEQ]).view(steps, BATCH, SEQ)
    params = [p for p in student.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    student.train()
    start = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, cfg)
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(seqs[step]).logits.float(), -1)
        s_logp = F.log_softmax(student(seqs[step]).logits.float(), -1)
        loss = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    student.eval()
    return {"train_seconds": seconds, "teacher_seconds": 0.0, "precision": "float32"}


def ours(student: Any, teacher: Any, train: list[int], heldout: list[int], steps: int) -> dict[str, float]:
    from stages.distill import DistillConfig, distill

    cfg = DistillConfig(
        lr=LR, batch_size=BATCH, seq_len=SEQ, max_tokens=steps * BATCH * SEQ, eval_every=10**6
    )
    _, stats = distill(student, teacher, train[: steps * BATCH * SEQ], heldout, cfg)
    return {
        "train_seconds": stats.train_seconds,
        "teacher_seconds": stats.teacher_seconds,
        "precision": stats.precision,
    }


def row(loop: str, kind: str, steps: int) -> dict[str, Any]:
    import torch

    from bench.common import HELDOUT_DOCS, TRAIN_DOCS, peak_rss_mib, token_ids
    from compressor.loading import load_model
    from compressor.metrics import compare

    torch.manual_seed(0)
    art = load_model("smollm2-135m")
    teacher = art.model.float().eval()
    train = token_ids(art.tokenizer, TRAIN_DOCS)
    heldout = token_ids(art.tokenizer, HELDOUT_DOCS)[:1024]
    if len(train) < steps * BATCH * SEQ:
        raise SystemExit(f"only {len(train)} training tokens for {steps} steps")
    student = _student(kind, teacher, train)
    before = compare(student, teacher, heldout)
    if loop == "naive":
        out = naive_loop(student, teacher, train, steps)
    else:
        out = ours(student, teacher, train, heldout, steps)
    after = compare(student, teacher, heldout)
    tokens = steps * BATCH * SEQ
    out.update(
        loop=loop,
        student=kind,
        tokens=tokens,
        tokens_per_s=tokens / out["train_seconds"],
        end_to_end_tokens_per_s=tokens / (out["train_seconds"] + out["teacher_seconds"]),
        kl_before=before["mean_kl"],
        kl_after=after["mean_kl"],
        top1_after=after["top1_agreement"],
        heldout_tokens=int(after["tokens"]),
        peak_rss_mib=peak_rss_mib(),
        threads=torch.get_num_threads(),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of 8x256 tokens (default 8)")
    parser.add_argument("--students", default="pruned,qat", help="pruned and/or qat (default both)")
    parser.add_argument("--row", nargs=2, metavar=("LOOP", "STUDENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(row(args.row[0], args.row[1], args.steps)))
        return
    from bench.common import host, markdown_table, run_child, save

    rows = []
    for kind in args.students.split(","):
        for loop in ("naive", "ours"):
            print(f"running {loop} loop on the {kind} student ...", flush=True)
            rows.append(run_child("bench.distill_loop", "--steps", str(args.steps), "--row", loop, kind))
    table = []
    for r in rows:
        base = next(b for b in rows if b["student"] == r["student"] and b["loop"] == "naive")
        table.append(
            [
                r["student"],
                r["loop"],
                r["precision"],
                r["tokens"],
                round(r["tokens_per_s"], 1),
                f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
                round(r["teacher_seconds"], 1),
                round(r["end_to_end_tokens_per_s"], 1),
                f"{r['kl_before']:.4f} -> {r['kl_after']:.4f}",
                round(r["top1_after"], 4),
                round(r["peak_rss_mib"]),
            ]
        )
    headers = [
        "student",
        "loop",
        "precision",
        "tokens",
        "train tok/s",
        "speed-up",
        "teacher pass s",
        "end-to-end tok/s",
    ]
    headers += ["held-out KL before -> after", "top-1 after", "peak RSS MiB"]
    text = markdown_table(headers, table)
    print(f"\nSmolLM2-135M distillation, batch {BATCH}x{SEQ}, {args.steps} steps, on {host()}\n")
    print(text)
    save("distill_loop", {"host": host(), "steps": args.steps, "rows": rows, "table": text})


if __name__ == "__main__":
    main()
