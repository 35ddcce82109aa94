"""Data-parallel distillation: 2 CPU processes under torchrun (gloo) match one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_torchrun_processes_match_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    _run([sys.executable, str(WORKER), str(tiny_model_dir), str(tmp_path / "single")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*torchrun, str(WORKER), str(tiny_model_dir), str(tmp_path / "ddp")])

    single = torch.load(tmp_path / "single.rank0.pt")
    rank0, rank1 = (torch.load(tmp_path / f"ddp.rank{r}.pt") for r in (0, 1))
    assert single["world"] == 1 and rank0["world"] == 2
    for name, w in single["state"].items():
        assert torch.equal(rank0["state"][name], rank1["state"][name]), f"{name}: ranks out of sync"
        assert torch.allclose(rank0["state"][name], w, atol=2e-5), f"{name}: differs from 1 process"
    moved = max((w - single["before"][n]).abs().max().item() for n, w in single["state"].items())
    assert moved > 1e-3  # training changed the weights far more than the tolerance
    # only rank 0 writes checkpoints
    assert (tmp_path / "ddp.ckpt.rank0").exists() and not (tmp_path / "ddp.ckpt.rank1").exists()
