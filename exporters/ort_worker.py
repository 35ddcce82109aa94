"""Runs an ONNX causal LM in onnxruntime in a child process; called by ``ort_runtime``.

Same contract as ``llama_worker``: one JSON request in argv[1], one JSON answer as the last line of
stdout, arrays through .npy files; a separate process so a bad file cannot take the CLI down and the
peak RSS (VmHWM) is the runtime's own.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from exporters.hostload import serve, timed_repeats
from exporters.llama_worker import _rss_mib, timing_summary


class Decoder:
    """Prefill and step a KV-cached decoder graph exported by optimum (past_key_values.* inputs)."""

    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.out_names = [o.name for o in self.session.get_outputs()]

    def _empty_past(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.past_names:
            _, heads, _, dim = self.inputs[name].shape
            out[name] = np.zeros((1, int(heads), 0, int(dim)), dtype=np.float32)
        return out

    def run(self, ids: list[int], past: dict[str, np.ndarray] | None, start: int) -> tuple[np.ndarray, dict]:
        past = past if past is not None else self._empty_past()
        feed: dict[str, Any] = {"input_ids": np.asarray([ids], dtype=np.int64), **past}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, start + len(ids)), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(start, start + len(ids), dtype=np.int64)[None]
        outs = dict(zip(self.out_names, self.session.run(None, feed), strict=True))
        present = {
            n.replace("present", "past_key_values"): v for n, v in outs.items() if n.startswith("present")
        }
        return outs["logits"][0], present


def _logits(req: dict[str, Any]) -> dict[str, Any]:
    ids = np.load(req["ids"]).tolist()
    logits, _ = Decoder(req["model"], req.get("threads", 2)).run(ids, None, 0)
    np.save(req["out"], logits.astype(np.float32))
    return {"n": len(ids)}


def _greedy(req: dict[str, Any]) -> dict[str, Any]:
    dec, ids = Decoder(req["model"], req.get("threads", 2)), list(req["prompt_ids"])
    logits, past = dec.run(ids, None, 0)
    out: list[int] = []
    pos = len(ids)
    for _ in range(req["n_new"]):
        nxt = int(np.argmax(logits[-1]))
        out.append(nxt)
        logits, past = dec.run([nxt], past, pos)
        pos += 1
    return {"ids": out}


def _measure(req: dict[str, Any]) -> dict[str, Any]:
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    dec = Decoder(req["model"], req.get("threads", 2))
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    vocab = int(req.get("vocab_size", 256))
    prompt = rng.integers(0, vocab, size=req["prompt_tokens"]).tolist()
    gen = rng.integers(0, vocab, size=req["gen_tokens"]).tolist()

    def once() -> tuple[float, list[float]]:
        t = time.perf_counter()
        _, past = dec.run(prompt, None, 0)
        ttft = (time.perf_counter() - t) * 1e3
        pos, decode = len(prompt), []
        for tok in gen:
            t = time.perf_counter()
            _, past = dec.run([tok], past, pos)
            decode.append((time.perf_counter() - t) * 1e3)
            pos += 1
        return ttft, decode

    timed = timed_repeats(once, req.get("repeats", 3))
    return timing_summary(req, load_ms, timed, rss_before, default_ctx=0)


OPS = {"measure": _measure, "logits": _logits, "greedy": _greedy}


if __name__ == "__main__":
    sys.exit(serve(OPS))
