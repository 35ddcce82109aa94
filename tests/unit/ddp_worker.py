"""Run by test_distill_ddp.py, alone or under torchrun: distill a perturbed tiny model, save weights.

Usage: ddp_worker.py MODEL_DIR OUT_PREFIX. Each process writes OUT_PREFIX.rank<R>.pt (its weights);
the checkpoint callback writes OUT_PREFIX.ckpt.rank<R> to show which processes write.
"""

import copy
import os
import sys
from pathlib import Path

import torch

from compressor.loading import load_model
from stages.distill import DistillConfig, distill
from tests.conftest import corpus

CFG = DistillConfig(
    batch_size=4,  # global: 2 per process under torchrun
    seq_len=64,
    max_tokens=64 * 4 * 6,
    lr=1e-3,
    warmup_steps=1,
    eval_every=3,
    keep_best=False,  # compare the trained weights themselves, not the best held-out state
    checkpoint_every=3,
    top_k=16,
    precision="fp32",
    train="all",
)


def main(model_dir: str, prefix: str) -> None:
    teacher = load_model(model_dir)
    ids = teacher.tokenizer(corpus()[:20000], add_special_tokens=False).input_ids
    student = copy.deepcopy(teacher.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    rank = int(os.environ.get("RANK", "0"))
    before = {k: v.clone() for k, v in student.state_dict().items()}

    def checkpoint(state: dict) -> None:
        Path(f"{prefix}.ckpt.rank{rank}").write_text(str(state["step"]))

    student, stats = distill(student, teacher.model, ids[:1536], ids[1536:1792], CFG, checkpoint=checkpoint)
    torch.save(
        {"state": student.state_dict(), "before": before, "world": stats.world_size},
        f"{prefix}.rank{rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
