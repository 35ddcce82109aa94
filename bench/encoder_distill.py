"""Which knowledge helps a 3-layer student of all-MiniLM-L6-v2: the ablation behind docs/benchmarks.md.

    python -m bench.encoder_distill [--minutes 3] [--lr 2e-4]

Every row starts from the same student (``--prune layers=3``: the teacher's layers 1, 3, 5, DistilBERT's
initialisation) and trains for the same CPU minutes on the same built-in training sentences with one
mix of knowledge (``stages.encoder_distill``); the student is then scored in float (torch) against
the float teacher on the 3,000 held-out sentences the tool also reports on: cosine mean / 5th
percentile and retrieval agreement (recall@1, recall@10). Runs are sequential, nothing else running.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from bench.common import host, markdown_table, save

MIXES = [
    ("none (pruned, not distilled)", ""),
    ("response: embedding", "embedding"),
    ("response + feature", "embedding,hidden"),
    ("response + relation (attention, values)", "embedding,attention"),
    ("response + relation (batch similarity)", "embedding,similarity"),
    ("feature + relation, no response", "hidden,attention,similarity"),
    ("response + feature + relation (attention): the default", "embedding,hidden,attention"),
    ("all four: response + feature + both relations", "embedding,hidden,attention,similarity"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--only", help="comma-separated knowledge mixes to run (the rest are kept)")
    args = ap.parse_args(argv)

    from compressor.encoder import Task, encode
    from compressor.encoder_metrics import embedding_agreement
    from compressor.loading import load_model
    from compressor.sentences import sentence_split
    from stages.encoder_distill import EncoderDistillConfig, distill_encoder, parse_losses
    from stages.encoder_prune import EncoderPrune, prune_encoder

    train, held, _ = sentence_split([])
    texts = held[:3000]
    teacher = load_model("all-minilm-l6-v2")
    ref = encode(teacher.model, teacher.tokenizer, texts).numpy()
    start = copy.deepcopy(teacher.model)
    f = teacher.facts
    prune_encoder(
        start, EncoderPrune(heads=f.n_heads, mlp=f.intermediate_size, layers=3), teacher.tokenizer, []
    )
    from bench.common import RESULTS

    saved = RESULTS / "encoder_distill.json"
    old = (
        {r["mix"]: r for r in json.loads(saved.read_text())["rows"]} if saved.is_file() and args.only else {}
    )
    wanted = set(args.only.split(";")) if args.only else None
    rows = []
    for label, mix in MIXES:
        if wanted is not None and mix not in wanted:
            if mix in old:
                rows.append({**old[mix], "label": label})
            continue
        student = copy.deepcopy(start)
        stats: dict = {"steps": 0, "seconds": 0.0}
        if mix:
            cfg = EncoderDistillConfig(
                losses=parse_losses(mix, Task.EMBEDDING), max_minutes=args.minutes, lr=args.lr
            )
            stats = distill_encoder(teacher.model, student, teacher.tokenizer, train, held, cfg)
        q = embedding_agreement(ref, encode(student, teacher.tokenizer, texts).numpy())
        row = {
            "label": label,
            "mix": mix,
            "steps": stats["steps"],
            "seconds": round(stats["seconds"], 1),
            **q,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = markdown_table(
        ["knowledge", "steps", "cosine mean", "cosine p5", "recall@1", "recall@10"],
        [
            [
                r["label"],
                r["steps"],
                f"{r['cosine_mean']:.4f}",
                f"{r['cosine_p5']:.4f}",
                f"{r['recall@1']:.3f}",
                f"{r['recall@10']:.3f}",
            ]
            for r in rows
        ],
    )
    save(
        "encoder_distill",
        {"host": host(), "minutes": args.minutes, "lr": args.lr, "rows": rows, "table": table},
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
