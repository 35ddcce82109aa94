"""The peer tools, run as a user would run them, to produce the rows we compare against.

* llama.cpp: ``convert_hf_to_gguf.py`` (F16) from the same float model, then llama.cpp's quantizer
  through llama-cpp-python's API (Q8_0, Q4_0, Q4_K_M), and ``llama-imatrix`` + ``llama-quantize
  --imatrix`` for Q4_K_M with an importance matrix (these two are C++ tools that llama-cpp-python does
  not ship, so they are built from the llama.cpp sources inside the pinned llama-cpp-python sdist).
* onnxruntime: optimum's ONNX export (fp32), then onnxruntime's own int4 quantizer (MatMulNBits) with
  each of its built-in algorithms that runs on a CPU without downloads: round-to-nearest (its default),
  HQQ (calibration-free, asymmetric with fp32 zero points) and GPTQ (fed our calibration token ids
  through a ``CalibrationDataReader``); and its int8 dynamic quantization.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

LLAMA_CPP_PYTHON = "0.3.36"  # the pinned llama-cpp-python: its sdist carries the matching llama.cpp
CACHE = Path(__file__).with_name(".cache")


def _run(cmd: list[str], **kw: object) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{(done.stderr or done.stdout)[-3000:]}")


def llama_source() -> Path:
    """llama.cpp sources of the pinned llama-cpp-python (pip downloads the sdist once)."""
    root = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if root.is_dir():
        return root
    CACHE.mkdir(exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(CACHE)])
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE, filter="data")
    return root


def llama_tool(name: str) -> Path:
    """Path of a llama.cpp tool (``llama-imatrix``, ``llama-quantize``), built on first use."""
    build = CACHE / "llama-build"
    exe = build / "bin" / name
    if exe.is_file():
        return exe
    src = llama_source()
    flags = ["-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DGGML_NATIVE=ON"]
    _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *flags])
    _run(["cmake", "--build", str(build), "--target", name, "-j", str(os.cpu_count() or 2)])
    return exe


def convert_hf_to_gguf(hf_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """llama.cpp's own converter, with the gguf-py that ships next to it."""
    script = llama_source() / "convert_hf_to_gguf.py"
    _run([sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(out)])
    return out


def llama_quantize_api(src: Path, dst: Path, ftype_name: str) -> Path:
    """llama.cpp's quantizer through llama-cpp-python's ``llama_model_quantize``."""
    import llama_cpp

    from exporters.llama_runtime import quantize_file

    quantize_file(src, dst, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}"))
    return dst


def llama_imatrix(f16: Path, text_file: Path, out: Path, ctx: int = 256) -> Path:
    exe = llama_tool("llama-imatrix")
    _run(
        [
            str(exe),
            "-m",
            str(f16),
            "-f",
            str(text_file),
            "-o",
            str(out),
            "-c",
            str(ctx),
            "-t",
            "2",
            "--no-ppl",
        ]
    )
    return out


def llama_quantize_imatrix(f16: Path, imatrix: Path, dst: Path, ftype_name: str = "Q4_K_M") -> Path:
    exe = llama_tool("llama-quantize")
    _run([str(exe), "--imatrix", str(imatrix), str(f16), str(dst), ftype_name, "2"])
    return dst


def _save_quantized(quant: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    quant.model.save_model_to_file(str(out), use_external_data_format=True)
    return out


def ort_int4(fp32_onnx: Path, out: Path, block_size: int = 32) -> Path:
    """onnxruntime's MatMulNBits quantizer (round-to-nearest, symmetric, block 32), external data."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32_onnx))
    quant = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True)
    quant.process()
    return _save_quantized(quant, out)


def ort_int4_hqq(fp32_onnx: Path, out: Path, block_size: int = 32) -> Path:
    """onnxruntime's HQQ int4 (half-quadratic proximal solver per block; no calibration data).

    Always asymmetric with fp32 zero points (MatMulNBits accepts float zero points): at block 32 that
    is 6 bits a weight, not the 5 of int4 with an fp32 scale alone. Like every onnxruntime int4 row,
    MatMuls with a constant weight only: the embedding (Gather) and a tied head (MatMul on a
    Transpose of it) stay fp32. A float zero point is Q4_1's form (x = d q + m), so on a teacher that
    is a Q4_1 GGUF dequantized it can recover the teacher's weights almost exactly."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(fp32_onnx))
    cfg = HQQWeightOnlyQuantConfig(block_size=block_size, bits=4)
    quant = MatMulNBitsQuantizer(model, block_size=block_size, algo_config=cfg)
    quant.process()
    return _save_quantized(quant, out)


def decoder_feeds(fp32_onnx: Path, token_ids: list[int], seq_len: int, sequences: int) -> list[dict]:
    """Inputs of an optimum decoder graph (``text-generation-with-past``) for ``sequences`` windows of
    ``seq_len`` calibration tokens each, prefilled from an empty KV cache."""
    import onnx

    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    windows = [token_ids[i : i + seq_len] for i in range(0, len(token_ids) - seq_len + 1, seq_len)]
    if not windows:
        raise ValueError(f"{len(token_ids)} calibration tokens: fewer than one sequence of {seq_len}")
    feeds = []
    for ids in windows[:sequences]:
        feed: dict[str, np.ndarray] = {}
        for inp in graph.input:
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            if inp.name == "input_ids":
                feed[inp.name] = np.asarray([ids], dtype=np.int64)
            elif inp.name == "attention_mask":
                feed[inp.name] = np.ones((1, seq_len), dtype=np.int64)
            elif inp.name == "position_ids":
                feed[inp.name] = np.arange(seq_len, dtype=np.int64)[None]
            elif inp.name.startswith("past_key_values."):  # (batch, kv heads, past length 0, head dim)
                feed[inp.name] = np.zeros((1, dims[1], 0, dims[3]), dtype=np.float32)
            else:
                raise ValueError(f"{fp32_onnx}: no calibration value for graph input {inp.name!r}")
        feeds.append(feed)
    return feeds


def ort_int4_gptq(
    fp32_onnx: Path,
    out: Path,
    token_ids: list[int],
    block_size: int = 32,
    symmetric: bool = False,
    seq_len: int = 256,
    sequences: int = 16,
) -> Path:
    """onnxruntime's GPTQ int4 (its vendored neural-compressor GPTQ, default settings: 1% dampening,
    no act-order), calibrated on ``token_ids``; asymmetric by default, as the quantizer's default.

    Cost: for every distinct MatMul input it runs the whole model once per calibration sequence
    (SmolLM2-135M: 121 inputs x ``sequences`` prefills of ``seq_len`` tokens; at ~1.5 ms a token on 2
    cores, about 12 minutes for the default 16 x 256). act-order is left off:
    with per-block scales its find_params would read permuted columns while the file re-quantizes
    contiguous blocks.

    Measured here (onnxruntime 1.32): its GPTQ writes exactly its asymmetric round-to-nearest blocks.
    Its update ``W1[i:, :] -= Hinv1[i:, i] err`` takes a column of the *upper* Cholesky factor of H^-1
    (zero below the diagonal), where GPTQ needs the row ``Hinv1[i, i:]``, so no error propagates
    (tiny llama: dequantized weights identical to RTN asym; a random layer: same output error)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        GPTQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict]) -> None:
            self.feeds, self.i = feeds, 0

        def get_next(self) -> dict | None:
            self.i += 1
            return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    reader = Reader(decoder_feeds(fp32_onnx, token_ids, seq_len, sequences))
    cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=reader)
    model = onnx.load(str(fp32_onnx))
    quant = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=symmetric, algo_config=cfg)
    quant.process()
    return _save_quantized(quant, out)


def ort_int8_dynamic(fp32_onnx: Path, out: Path) -> Path:
    """onnxruntime's dynamic int8 quantization (per-tensor weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32_onnx), str(out), weight_type=QuantType.QInt8, use_external_data_format=True)
    return out
