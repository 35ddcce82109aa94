"""The peer tools, run as a user would run them, to produce the rows we compare against.

* llama.cpp: ``convert_hf_to_gguf.py`` (F16) from the same float model, then llama.cpp's quantizer
  through llama-cpp-python's API (Q8_0, Q4_0, Q4_K_M), and ``llama-imatrix`` + ``llama-quantize
  --imatrix`` for Q4_K_M with an importance matrix (these two are C++ tools that llama-cpp-python does
  not ship, so they are built from the llama.cpp sources inside the pinned llama-cpp-python sdist).
* onnxruntime: optimum's ONNX export (fp32), then onnxruntime's own int4 quantizer (MatMulNBits,
  round-to-nearest) and its int8 dynamic quantization.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

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


def ort_int4(fp32_onnx: Path, out: Path, block_size: int = 32) -> Path:
    """onnxruntime's MatMulNBits quantizer (round-to-nearest, symmetric, block 32), external data."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32_onnx))
    quant = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True)
    quant.process()
    out.parent.mkdir(parents=True, exist_ok=True)
    quant.model.save_model_to_file(str(out), use_external_data_format=True)
    return out


def ort_int8_dynamic(fp32_onnx: Path, out: Path) -> Path:
    """onnxruntime's dynamic int8 quantization (per-tensor weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32_onnx), str(out), weight_type=QuantType.QInt8, use_external_data_format=True)
    return out
