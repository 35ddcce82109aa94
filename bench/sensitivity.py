"""Does the mixed plan's cheap sensitivity rank tensors like the real KL does?

    python -m bench.sensitivity [--tensors 16] [--kind IQ4_NL]

For a spread of SmolLM2's tensors (every role, early/middle/late layers, the tied embedding), quantize
that tensor alone (importance-weighted search), and compare the predicted KL increase
(0.5 * sum F * dw^2 per token, Fisher from 8 calibration sequences) with the measured mean KL to the
float model on held-out text (torch, full vocabulary). Prints both and Spearman's rank correlation.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from bench.common import HELDOUT_DOCS, TRAIN_DOCS, host, markdown_table, save, token_ids


def _ranks(v: list[float]) -> np.ndarray:
    order = np.argsort(v)
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--kind", default="IQ4_NL")
    args = parser.parse_args()
    from bench.harness import reference_logits
    from compressor.artifact import weight_inventory
    from compressor.ggml_types import quantize_tensor
    from compressor.loading import load_model
    from exporters.workers import compare_logits
    from stages.calib_stats import fisher_diagonal, input_importance

    art = load_model("smollm2-135m")
    model = art.model
    train = token_ids(art.tokenizer, TRAIN_DOCS)
    batches = [torch.tensor([train[i : i + 256]]) for i in range(0, 256 * 8, 256)]
    heldout = token_ids(art.tokenizer, HELDOUT_DOCS)[:1024]
    ref = reference_logits(model, heldout)
    importance = input_importance(model, batches)
    fisher, tokens = fisher_diagonal(model, batches)
    inv = [w for w in weight_inventory(model) if not w.role.vector]
    # a stride coprime with the 7 matrices of a layer: every role, early to late layers
    pick = [inv[(i * 13) % len(inv)] for i in range(args.tensors)]
    params = dict(model.named_parameters())
    rows = []
    for w in pick:
        x = params[w.name].detach().float().numpy()
        _, deq = quantize_tensor(args.kind, x, importance.get(w.name), search=True)
        predicted = 0.5 * float((fisher[w.name].numpy() * (deq - x) ** 2).sum(dtype=np.float64)) / tokens
        m = copy.deepcopy(model)
        with torch.no_grad():
            dict(m.named_parameters())[w.name].copy_(torch.from_numpy(deq))
        measured = compare_logits(ref[:-1], reference_logits(m, heldout)[:-1])["mean_kl"]
        rows.append([w.name, predicted, measured])
        print(f"{w.name:45s} predicted {predicted:.5f}  measured {measured:.5f}", flush=True)
    rho = float(np.corrcoef(_ranks([r[1] for r in rows]), _ranks([r[2] for r in rows]))[0, 1])
    table = markdown_table(
        ["tensor", "predicted KL", "measured KL"], [[r[0], f"{r[1]:.5f}", f"{r[2]:.5f}"] for r in rows]
    )
    print(f"\n{args.kind}, SmolLM2-135M, on {host()}: Spearman rank correlation {rho:.3f}\n\n{table}")
    save("sensitivity", {"host": host(), "kind": args.kind, "spearman": rho, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
