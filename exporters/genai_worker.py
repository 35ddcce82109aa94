"""Runs an ONNX model folder in onnxruntime-genai (the runtime Android/iOS apps use for ONNX LLMs) in a
child process; called by ``genai_runtime``. Same contract as ``llama_worker``: one JSON request in
argv[1], one JSON answer as the last line of stdout, arrays through .npy files.

The decode loop is onnxruntime-genai's own (C++): ``append_tokens`` for the prompt, then
``generate_next_token`` per token with greedy search, as an app's loop does.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from exporters.hostload import serve, timed_repeats
from exporters.llama_worker import _rss_mib, timing_summary


def _model(folder: str, threads: int) -> Any:
    import onnxruntime_genai as og

    cfg = og.Config(folder)
    opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    return og.Model(cfg)


def _generator(model: Any, max_length: int) -> Any:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False)
    return og.Generator(model, params)


def _logits(req: dict[str, Any]) -> dict[str, Any]:
    ids = np.load(req["ids"]).astype(np.int32)
    gen = _generator(_model(req["model"], req.get("threads", 2)), len(ids) + 1)
    gen.append_tokens(ids)
    logits = np.asarray(gen.get_output("logits"), dtype=np.float32)
    np.save(req["out"], logits.reshape(-1, logits.shape[-1])[-len(ids) :])
    return {"n": len(ids)}


def _chat(req: dict[str, Any]) -> dict[str, Any]:
    """One greedy reply through the tokenizer's chat template and the generator, as an app does."""
    import onnxruntime_genai as og

    model = _model(req["model"], req.get("threads", 2))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(json.dumps(req["messages"]), add_generation_prompt=True)
    ids = tok.encode(prompt)
    gen = _generator(model, len(ids) + req["max_tokens"])
    gen.append_tokens(ids)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return {
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "reply": tok.decode(np.asarray(out, dtype=np.int32)),
        "completion_tokens": len(out),
        "eos_token_ids": [int(i) for i in tok.eos_token_ids],
    }


def _measure(req: dict[str, Any]) -> dict[str, Any]:
    """TTFT of a random prompt and per-token greedy decode after it, median over repeats."""
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    model = _model(req["model"], req.get("threads", 2))
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, int(req["vocab_size"]), size=req["prompt_tokens"]).astype(np.int32)
    n_gen = req["gen_tokens"]

    def once() -> tuple[float, list[float]]:
        gen = _generator(model, len(prompt) + n_gen + 1)
        t = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()  # the first token: prefill + sampling, as an app sees it
        ttft = (time.perf_counter() - t) * 1e3
        decode = []
        for _ in range(n_gen):
            t = time.perf_counter()
            gen.generate_next_token()
            decode.append((time.perf_counter() - t) * 1e3)
        return ttft, decode

    timed = timed_repeats(once, req.get("repeats", 3))
    return timing_summary(req, load_ms, timed, rss_before, default_ctx=0)


OPS = {"measure": _measure, "logits": _logits, "chat": _chat}


if __name__ == "__main__":
    sys.exit(serve(OPS))
