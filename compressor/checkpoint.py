"""Distillation checkpoints as data only: one safetensors file, the non-tensor state as JSON inside it.

Why not ``torch.save``: a pickle runs whatever code it names when loaded, and a checkpoint sits beside
``--out`` where anybody who can write there can plant one. Safetensors holds only tensors plus a
string-to-string metadata map, so the nested state (optimizer state and param groups, step, history)
is stored as JSON in that map with each tensor replaced by ``{"__tensor__": key}``. Tensors round-trip
bit for bit, so a resumed run continues exactly where the killed one stopped.

A checkpoint also records a ``fingerprint`` of the run that wrote it (model, pruning, scheme, training
settings): resuming with different settings, a file from another tool, or a damaged file is a clear
``InputError`` (exit 3), never a crash deep inside the optimizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from compressor.errors import InputError

FORMAT = "compressor-distill-checkpoint/1"
_TENSOR = "__tensor__"


def _flatten(obj: Any, tensors: dict[str, Any]) -> Any:
    """JSON-able copy of ``obj`` with every tensor moved into ``tensors`` (contiguous CPU copies)."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if any(not isinstance(k, str | int) for k in obj):
            raise TypeError(f"checkpoint keys must be str or int, got {[type(k) for k in obj]}")
        # JSON keys are strings: keep int keys (optimizer state is keyed by parameter index) typed.
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file beside ``path``, then rename): a kill leaves the old one."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    meta = {"format": FORMAT, "fingerprint": json.dumps(fingerprint, sort_keys=True)}
    meta["state"] = json.dumps(_flatten(state, tensors))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` for the same run, or raise InputError."""
    from safetensors import SafetensorError, safe_open

    hint = f"delete {path} and run without --resume"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputError(f"--resume: {path} is not a compressor distillation checkpoint; {hint}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        state = _unflatten(json.loads(meta["state"]), tensors)
        saved = json.loads(meta["fingerprint"])
    except InputError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume: {path} is damaged or not a checkpoint ({exc}); {hint}") from None
    if not isinstance(state, dict) or not {"student", "optimizer", "step", "tokens", "history"} <= set(state):
        raise InputError(f"--resume: {path} lacks the training state; {hint}")
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in changed]
        raise InputError(f"--resume: {path} was written by a run with other settings; {hint}", diffs)
    return state


def check_student_state(state: dict[str, Any], model: Any) -> None:
    """Every saved tensor must name a parameter of ``model`` with the same shape."""
    params = dict(model.state_dict())
    bad = [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(params[k].shape) if k in params else 'absent'} now"
        for k, v in state["student"].items()
        if k not in params or tuple(params[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise InputError(
            "--resume: the checkpoint does not fit this model; delete it and start over", bad[:5]
        )
