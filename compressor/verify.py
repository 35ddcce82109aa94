"""The final, measured verdict on an exported file: run it in its real runtime here, project it to
the device. Composition layer (it calls the exporters' runtimes); used by the pipeline's last stage
and by ``compressor check`` (the CI gate), so both judge alike.

Host figures are measured with the host profile's thread count. llama.cpp allocates its KV cache for
the *target* profile's context length, so its peak RSS is a measurement of what the device needs;
onnxruntime grows its cache as it goes, so its RAM figure is the measured peak plus the fp32 KV cache
of the rest of the context, labelled an estimate. Device decode and TTFT are the device roofline scaled
by how far the host measurement sits from the host's own roofline (docs/latency-model.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from compressor.budget import (
    MIB,
    BudgetCheck,
    Figure,
    Provenance,
    calibrate,
    check_budgets,
    mark_unreliable,
    project_footprint,
)
from compressor.device_profile import DeviceProfile, Engine, load_profile
from compressor.errors import ModelLoadError
from compressor.report import StageReport

HOST_PROFILE = "host"
GEN_TOKENS = 32
ENCODER_RUNS = 20  # timed batches of an encoder


def _host_threads() -> tuple[DeviceProfile, int, int, float]:
    """(host profile, threads it asks for, threads to use now, others' CPU load in cores)."""
    from exporters.hostload import free_threads

    host = load_profile(HOST_PROFILE)
    wanted = min(host.runtime.threads, os.cpu_count() or 1)
    threads, load = free_threads(wanted)
    return host, wanted, threads, load


def _measure_gguf(
    path: Path, profile: DeviceProfile, threads: int, repeats: int
) -> tuple[Any, dict, dict, Figure]:
    from compressor.inspect_gguf import gguf_summary
    from exporters import llama_runtime

    cost, summary = gguf_summary(path)
    ctx = profile.runtime.context_length
    m = llama_runtime.measure(
        path.resolve(),
        threads=threads,
        n_ctx=ctx,
        prompt_tokens=profile.budgets.ttft_prompt_tokens,
        gen_tokens=GEN_TOKENS,
        repeats=repeats,
    )
    ram = Figure(
        value=m["runtime_rss_mib"],
        unit="MiB",
        provenance=Provenance.MEASURED,
        where="host",
        basis=f"peak RSS of llama.cpp with a {ctx}-token context, less the Python interpreter",
    )
    return cost, summary, {**m, "runtime": "llama.cpp (llama-cpp-python)"}, ram


def _measure_onnx(
    path: Path, profile: DeviceProfile, threads: int, repeats: int
) -> tuple[Any, dict, dict, Figure]:
    from compressor.inspect_onnx import onnx_summary
    from exporters import ort_runtime

    cost, summary = onnx_summary(path)
    prompt, ctx = profile.budgets.ttft_prompt_tokens, profile.runtime.context_length
    m = ort_runtime.measure(
        path.resolve(),
        threads=threads,
        prompt_tokens=prompt,
        vocab_size=cost.vocab_size,
        gen_tokens=GEN_TOKENS,
        repeats=repeats,
    )
    runtime = "onnxruntime (Python decode loop)"
    genai = _measure_genai(path, profile, threads, cost.vocab_size, repeats)
    if genai is not None:
        summary = {
            **summary,
            "genai_decode_ms_per_token": round(genai["decode_ms_per_token"], 3),
            "genai_ttft_ms": round(genai["ttft_ms"], 2),
            "genai_runtime_rss_mib": round(genai["runtime_rss_mib"], 1),
            "ort_loop_decode_ms_per_token": round(m["decode_ms_per_token"], 3),
            "ort_loop_ttft_ms": round(m["ttft_ms"], 2),
        }
        if profile.runtime.engine is Engine.ONNXRUNTIME_GENAI:  # the verdict uses the profile's runtime
            m, runtime = genai, "onnxruntime-genai (its generator)"
    rest = max(cost.kv_bytes(ctx) - cost.kv_bytes(prompt + GEN_TOKENS), 0.0) / MIB
    ram = Figure(
        value=m["runtime_rss_mib"] + rest,
        unit="MiB",
        provenance=Provenance.ESTIMATED,
        where="host",
        basis=f"{runtime} peak RSS {m['runtime_rss_mib']:.0f} MiB at {prompt + GEN_TOKENS} tokens "
        f"(measured) + fp32 KV cache up to {ctx} tokens",
    )
    return cost, summary, {**m, "runtime": runtime}, ram


def _measure_genai(
    path: Path, profile: DeviceProfile, threads: int, vocab_size: int, repeats: int
) -> dict[str, Any] | None:
    """The same figures through onnxruntime-genai's generator (the app runtime), when the folder has a
    genai_config.json; required when the profile names onnxruntime-genai, else measured if installed."""
    import importlib.util

    from exporters import genai_runtime

    needed = profile.runtime.engine is Engine.ONNXRUNTIME_GENAI
    if not (path.parent / "genai_config.json").is_file():
        if needed:
            raise ModelLoadError(
                f"{path.parent} has no genai_config.json, so onnxruntime-genai cannot open it"
            )
        return None
    if not needed and importlib.util.find_spec("onnxruntime_genai") is None:
        return None
    return genai_runtime.measure(
        path.parent.resolve(),
        threads=threads,
        prompt_tokens=profile.budgets.ttft_prompt_tokens,
        vocab_size=vocab_size,
        gen_tokens=GEN_TOKENS,
        repeats=repeats,
    )


def measure_artifact(
    path: Path, profile: DeviceProfile, label: str, repeats: int = 3
) -> tuple[StageReport, list[BudgetCheck]]:
    """Measure ``path`` (.gguf or .onnx/.ort) in its runtime and check it against ``profile``."""
    from compressor.inspect_encoder import is_encoder_file

    if is_encoder_file(path):
        return measure_encoder_file(path, profile, label)
    start = time.perf_counter()
    host, wanted, threads, load = _host_threads()
    measure = _measure_gguf if path.suffix == ".gguf" else _measure_onnx
    cost, summary, m, ram = measure(path, profile, threads, repeats)
    cal = calibrate(cost, host, m["decode_ms_per_token"], m["ttft_ms"])
    footprint = project_footprint(cost, profile, cal, measured_size=True, ram=ram)
    checks = check_budgets(footprint, profile.budgets, artifact=label)
    busy = []
    if threads < wanted:
        busy.append(f"other processes used {load:.1f} cores, so {threads} of {wanted} threads ran")
    if not m["reliable"]:
        busy.append(
            f"{m['repeats_discarded']} repeats ran while others used up to "
            f"{m['foreign_load_cores']:.1f} cores"
        )
    if busy:
        checks = mark_unreliable(checks, "; ".join(busy))
    measured: dict[str, Any] = {
        "file": label,
        "file_bytes": int(cost.stored_bytes),
        "host_decode_ms_per_token": round(m["decode_ms_per_token"], 3),
        "host_decode_tokens_per_s": round(1e3 / m["decode_ms_per_token"], 1),
        "host_ttft_ms": round(m["ttft_ms"], 2),
        "host_peak_rss_mib": round(m["peak_rss_mib"], 1),
        "host_runtime_rss_mib": round(m["runtime_rss_mib"], 1),
        "host_load_ms": round(m["load_ms"], 1),
        "host_threads": threads,
        "host_ttft_ms_range": [round(m["ttft_ms_min"], 2), round(m["ttft_ms_max"], 2)],
        "host_decode_ms_p10_p90": [round(m["decode_ms_p10"], 3), round(m["decode_ms_p90"], 3)],
        "host_repeats_used": m["repeats_used"],
        "host_repeats_discarded": m["repeats_discarded"],
        "host_foreign_load_cores": m["foreign_load_cores"],
        "host_measurement_reliable": not busy,
        "calibration": cal.model_dump(),  # host measured / host roofline: what device estimates scale by
        "prompt_tokens": m["prompt_tokens"],
        "runtime": m["runtime"],
        **summary,
    }
    report = StageReport(
        stage=f"measure[{label}]",
        seconds=time.perf_counter() - start,
        summary=measured,
        footprint=footprint,
        checks=checks,
    )
    return report, checks


def _long_texts(batch: int, tokens: int) -> list[str]:
    """``batch`` texts of well over ``tokens`` tokens (built-in held-out sentences joined), which each
    runtime tokenizes and cuts to exactly ``tokens``: the same input for every file and runtime."""
    from compressor.sentences import sentence_split

    _, held, _ = sentence_split([])
    per = max(4, tokens // 6)  # sentences average well over 6 tokens
    return [" ".join(held[i * per : (i + 1) * per]) for i in range(batch)]


def _time_encoder(path: Path, texts: list[str], tokens: int, threads: int) -> tuple[str, dict[str, Any]]:
    if path.suffix == ".gguf":
        from exporters.gguf_encoder import gguf_time_batch

        return "llama.cpp (llama-cpp-python)", gguf_time_batch(path, texts, tokens, threads, ENCODER_RUNS)
    from transformers import PreTrainedTokenizerFast

    from compressor.encoder import tokenize
    from exporters.onnx_encoder import ort_session, time_batch

    tok_file = path.parent / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelLoadError(f"{tok_file} is missing: an encoder's ONNX folder carries its tokenizer")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
    cfg_file = path.parent / "config.json"
    if cfg_file.is_file():  # the positions the file holds bound the timed length
        import json

        from compressor.arch import spec_for_model_type

        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        offset = spec_for_model_type(str(cfg.get("model_type")), str(cfg_file)).position_offset
        tokens = min(tokens, int(cfg.get("max_position_embeddings", tokens + offset)) - offset)
    batch = tokenize(tokenizer, texts, tokens)
    return "onnxruntime", time_batch(ort_session(path, threads), batch, ENCODER_RUNS)


def measure_encoder_file(
    path: Path, profile: DeviceProfile, label: str, texts: list[str] | None = None
) -> tuple[StageReport, list[BudgetCheck]]:
    """Time one budget batch (``encode_batch`` x ``encode_tokens``) of an encoder file in its runtime
    here and check the profile's budgets: size measured, batch latency projected to the device by the
    roofline scaled by host measurement / host roofline, RAM estimated (docs/latency-model.md)."""
    from compressor.encoder_budget import encode_roofline_ms, encoder_footprint
    from compressor.inspect_encoder import encoder_file_cost
    from exporters.hostload import foreign_load

    start = time.perf_counter()
    host, wanted, threads, load = _host_threads()
    b = profile.budgets
    cost, summary = encoder_file_cost(path)
    runtime, timing = _time_encoder(
        path, texts or _long_texts(b.encode_batch, b.encode_tokens), b.encode_tokens, threads
    )
    after = foreign_load()
    host_b = host.model_copy(update={"budgets": b})
    scale = timing["median_ms"] / encode_roofline_ms(cost, host_b)
    footprint = encoder_footprint(
        cost,
        profile,
        summary["heads"],
        scale=scale,
        scale_basis=f"host measurement ({runtime}, {threads} threads: roofline x{scale:.2f})",
        measured_size=True,
    )
    checks = check_budgets(footprint, b, artifact=label)
    busy = []
    if threads < wanted:
        busy.append(f"other processes used {load:.1f} cores, so {threads} of {wanted} threads ran")
    if after > 0.5:
        busy.append(f"other processes used {after:.1f} cores after timing")
    if busy:
        checks = mark_unreliable(checks, "; ".join(busy))
    measured: dict[str, Any] = {
        "file": label,
        "file_bytes": path.stat().st_size,
        "runtime": runtime,
        "host_threads": threads,
        f"host_encode_ms_{b.encode_batch}x{b.encode_tokens}": round(timing["median_ms"], 2),
        "host_encode_ms_p90": round(timing["p90_ms"], 2),
        "host_measurement_reliable": not busy,
        **summary,
    }
    report = StageReport(
        stage=f"measure[{label}]",
        seconds=time.perf_counter() - start,
        summary=measured,
        footprint=footprint,
        checks=checks,
    )
    return report, checks
