"""Runs a BERT-family GGUF through llama.cpp's embedding path (llama-cpp-python) in a child process;
called by ``gguf_encoder``. A child process for the reasons ``llama_worker`` gives (a bad file can
abort llama.cpp). Reads one JSON request from argv[1]; texts arrive in a JSON file, the pooled outputs
leave as a .npy file and the token ids as a JSON file; one JSON answer is the last line of stdout.

The pooled output per text is what ``llama_get_embeddings_seq`` holds: ``n_embd`` floats for mean/CLS
pooling, ``n_cls_out`` for rank pooling (the classifier head). llama-cpp-python's ``Llama.embed``
always reads ``n_embd`` floats, past the end of a classifier's, so the batches are decoded here the
way ``embed`` does it, reading the right count. Nothing is normalised here.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from exporters.hostload import serve
from exporters.llama_worker import _no_extra_buffers


def _tokens(llm: Any, lib: Any, text: str, max_len: int) -> list[int]:
    """llama.cpp's ids for ``text`` with its special tokens (CLS/SEP or BOS/EOS); special tokens
    written in the text are matched as the HF tokenizer matches them. Over ``max_len``, the end is cut
    and a trailing EOS/SEP the tokenizer adds is kept, as HF truncation does."""
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    if len(ids) <= max_len:
        return ids
    vocab = lib.llama_model_get_vocab(llm.model)
    keep_last = bool(lib.llama_vocab_get_add_eos(vocab) or lib.llama_vocab_get_add_sep(vocab))
    return [*ids[: max_len - 1], ids[-1]] if keep_last else ids[:max_len]


def _embed(req: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    _no_extra_buffers()
    with open(req["texts"], encoding="utf-8") as f:
        texts: list[str] = json.load(f)
    n_batch = int(req["n_batch"])
    llm = llama_cpp.Llama(
        model_path=req["model"],
        embedding=True,
        n_ctx=n_batch,
        n_batch=n_batch,
        n_ubatch=n_batch,  # a non-causal model takes a whole batch in one ubatch
        n_threads=req.get("threads", 2),
        n_threads_batch=req.get("threads", 2),
        verbose=False,
    )
    max_len = min(int(req["max_len"]), n_batch)
    rank = lib.llama_pooling_type(llm.ctx) == lib.LLAMA_POOLING_TYPE_RANK
    n_out = lib.llama_model_n_cls_out(llm.model) if rank else llm.n_embd()
    n_seq_max = llm.context_params.n_seq_max
    all_ids = [_tokens(llm, lib, t, max_len) for t in texts]
    out = np.zeros((len(texts), n_out), dtype=np.float32)

    def decode(first: int, count: int) -> None:
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        llm._batch.reset()
        for s in range(count):
            ptr = lib.llama_get_embeddings_seq(llm.ctx, s)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no pooled output for text {first + s}")
            out[first + s] = np.ctypeslib.as_array(ptr, shape=(n_out,))

    def run_all() -> None:
        """Every text, packed into batches of at most n_batch tokens and n_seq_max sequences."""
        llm._batch.reset()
        first, in_batch, tokens = 0, 0, 0
        for i, ids in enumerate(all_ids):
            if in_batch and (tokens + len(ids) > n_batch or in_batch >= n_seq_max):
                decode(first, in_batch)
                first, in_batch, tokens = i, 0, 0
            llm._batch.add_sequence(ids, in_batch, True)
            in_batch, tokens = in_batch + 1, tokens + len(ids)
        if in_batch:
            decode(first, in_batch)

    run_all()
    times = []
    for _ in range(int(req.get("repeats", 0))):  # timing: the same texts again
        start = time.perf_counter()
        run_all()
        times.append((time.perf_counter() - start) * 1e3)
    np.save(req["out"], out)
    if req.get("ids_out"):
        with open(req["ids_out"], "w", encoding="utf-8") as f:
            json.dump(all_ids, f)
    answer: dict[str, Any] = {
        "n": len(texts),
        "n_out": int(n_out),
        "pooling": int(lib.llama_pooling_type(llm.ctx)),
    }
    if times:
        answer["times_ms"] = times
        answer["tokens"] = sum(len(ids) for ids in all_ids)
    return answer


OPS = {"embed": _embed}


if __name__ == "__main__":
    sys.exit(serve(OPS))
