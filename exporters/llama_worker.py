"""Runs a GGUF in llama.cpp (llama-cpp-python) in a child process; called by ``llama_runtime``.

A separate process because (1) a corrupt file can abort llama.cpp, which must not take the CLI down,
and (2) its peak RSS is then the runtime's own, not the torch process's. Reads one JSON request from
argv[1], writes one JSON answer as the last line of stdout. Arrays travel as .npy files.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np

from exporters.hostload import serve, timed_repeats


def _rss_mib() -> float:
    """Peak RSS of this process in MiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent through fork+exec, so the child would report the (torch-sized) parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux; fallback


def timing_summary(
    req: dict[str, Any], load_ms: float, timed: dict[str, Any], rss_before: float, default_ctx: int
) -> dict[str, Any]:
    """The answer of a measure request: ``timed`` (hostload.timed_repeats) plus peak RSS and settings."""
    peak = _rss_mib()
    return {
        **timed,
        "load_ms": load_ms,
        "peak_rss_mib": peak,
        "interpreter_rss_mib": rss_before,
        "runtime_rss_mib": peak - rss_before,
        "n_ctx": req.get("n_ctx", default_ctx),
        "threads": req.get("threads", 2),
        "prompt_tokens": req["prompt_tokens"],
        "gen_tokens": req["gen_tokens"],
        "repeats": req.get("repeats", 3),
    }


def _no_extra_buffers() -> None:
    """Load weights into plain CPU buffers, not the AMX/repack "extra" buffer types.

    On CPUs with AMX (Sapphire Rapids and later) llama.cpp's AMX buffer type crashed (SIGSEGV) on
    quantized tiny models here. The plain buffers run the ordinary ggml kernels on every CPU.
    """
    import llama_cpp.llama_cpp as lib

    if getattr(lib.llama_model_default_params, "_compressor", False):
        return
    default = lib.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    params._compressor = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = params


def _open(req: dict[str, Any], logits_all: bool) -> Any:
    import llama_cpp

    _no_extra_buffers()

    return llama_cpp.Llama(
        model_path=req["model"],
        n_ctx=req.get("n_ctx", 512),
        n_threads=req.get("threads", 2),
        n_threads_batch=req.get("threads", 2),
        n_batch=req.get("n_batch", 512),
        logits_all=logits_all,
        verbose=False,
        seed=0,
    )


def _logits(req: dict[str, Any]) -> dict[str, Any]:
    ids = np.load(req["ids"]).tolist()
    llm = _open({**req, "n_ctx": max(len(ids), 8), "n_batch": max(len(ids), 8)}, logits_all=True)
    llm.eval(ids)
    np.save(req["out"], np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    return {"n": len(ids)}


def _greedy(req: dict[str, Any]) -> dict[str, Any]:
    ids = list(req["prompt_ids"])
    llm = _open({**req, "n_ctx": len(ids) + req["n_new"] + 8}, logits_all=True)
    out: list[int] = []
    llm.eval(ids)
    for _ in range(req["n_new"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return {"ids": out}


def _tokenize(req: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=req["model"], vocab_only=True, verbose=False)
    return {"ids": llm.tokenize(req["text"].encode(), add_bos=False, special=True)}


def _measure(req: dict[str, Any]) -> dict[str, Any]:
    """TTFT for a prompt and per-token decode after it, median over repeats; peak RSS of this process."""
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    llm = _open(req, logits_all=False)
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    n_vocab = llm.n_vocab()
    prompt = rng.integers(100, n_vocab, size=req["prompt_tokens"]).tolist()
    gen = rng.integers(100, n_vocab, size=req["gen_tokens"]).tolist()

    def once() -> tuple[float, list[float]]:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        ttft = (time.perf_counter() - t) * 1e3
        decode = []
        for tok in gen:
            t = time.perf_counter()
            llm.eval([tok])
            decode.append((time.perf_counter() - t) * 1e3)
        return ttft, decode

    timed = timed_repeats(once, req.get("repeats", 3))
    return timing_summary(req, load_ms, timed, rss_before, default_ctx=512)


def _chat(req: dict[str, Any]) -> dict[str, Any]:
    """One reply through llama-cpp-python's chat API with the template and sampling defaults the GGUF
    itself carries (``tokenizer.chat_template``, ``general.sampling.*``); greedy when asked."""
    llm = _open({**req, "n_ctx": req.get("n_ctx", 512)}, logits_all=False)
    meta = llm.metadata
    sampling = {
        "temperature": float(meta.get("general.sampling.temp", 0.8)),
        "top_k": int(meta.get("general.sampling.top_k", 40)),
        "top_p": float(meta.get("general.sampling.top_p", 0.95)),
        "min_p": float(meta.get("general.sampling.min_p", 0.05)),
        "repeat_penalty": float(meta.get("general.sampling.penalty_repeat", 1.0)),
    }
    if req.get("greedy"):
        sampling["temperature"] = 0.0
    answer = llm.create_chat_completion(req["messages"], max_tokens=req["max_tokens"], seed=0, **sampling)
    return {
        "chat_format": llm.chat_format,
        "template_in_gguf": "tokenizer.chat_template" in meta,
        "sampling_in_gguf": sorted(k for k in meta if k.startswith("general.sampling.")),
        "sampling": sampling,
        "reply": answer["choices"][0]["message"]["content"],
        "role": answer["choices"][0]["message"]["role"],
        "completion_tokens": answer["usage"]["completion_tokens"],
        "prompt_tokens": answer["usage"]["prompt_tokens"],
    }


def _quantize(req: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's own quantizer (llama_model_quantize); it logs to stderr, which the parent drops."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = req["ftype"]
    params.nthread = req.get("threads", 2)
    params.pure = req.get("pure", False)
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), req["dst"].encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"rc": rc}


OPS = {
    "measure": _measure,
    "logits": _logits,
    "greedy": _greedy,
    "tokenize": _tokenize,
    "quantize": _quantize,
    "chat": _chat,
}


if __name__ == "__main__":
    sys.exit(serve(OPS))
