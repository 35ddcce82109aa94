"""Pipeline time: our post-training path vs the peer tools back to back, from the same float model.

    python -m bench.pipeline_time

Every path starts from the float teacher saved as a Hugging Face directory and runs in its own process
(wall time, peak RSS of the process tree). Ours also validates the file in its runtime and measures it
(TTFT, decode, RSS), which the peers do not; the stage column splits our time so the comparable part
(load + quantize + export) can be read off. Distillation throughput comes from bench.distill_loop.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import peers
from bench.common import RESULTS, host, markdown_table, run_child, save

WORK = RESULTS / "pipeline-time"

PEER_GGUF = """
import sys
from pathlib import Path
from bench import peers
hf, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
peers.convert_hf_to_gguf(hf, out / "f16.gguf")
peers.llama_quantize_api(out / "f16.gguf", out / "q4_0.gguf", "Q4_0")
"""

PEER_ONNX = """
import sys
from pathlib import Path
from optimum.exporters.onnx import main_export
from bench import peers
hf, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
main_export(str(hf), str(out / "fp32"), task="text-generation-with-past")
peers.ort_int4(out / "fp32" / "model.onnx", out / "int4" / "model.onnx")
"""


def timed(name: str, *cmd: str) -> dict[str, Any]:
    out = WORK / name
    shutil.rmtree(out, ignore_errors=True)
    result = run_child("bench.rss", *[c.replace("{out}", str(out)) for c in cmd])
    result["name"] = name
    return result


def ours(name: str, hf: Path, quant: str) -> dict[str, Any]:
    cli = [sys.executable, "-m", "compressor", "compress", str(hf), "--device", "host"]
    result = timed(name, *cli, "--quant", quant, "--out", "{out}", "--quiet")
    report = json.loads((WORK / name / "report.json").read_text())
    result["stages"] = {s["stage"]: round(s["seconds"], 1) for s in report["stages"]}
    return result


def main() -> None:
    from bench.quality import teacher_hf_dir
    from compressor.loading import load_model

    hf = teacher_hf_dir(load_model("smollm2-135m"))
    peers.llama_source()  # the converter's download is not part of the timing
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [
        ours("ours gguf:Q4_0", hf, "gguf:Q4_0"),
        timed("llama.cpp convert F16 + quantize Q4_0", sys.executable, "-c", PEER_GGUF, str(hf), "{out}"),
        ours("ours onnx:int4", hf, "onnx:int4"),
        timed("optimum export + onnxruntime int4", sys.executable, "-c", PEER_ONNX, str(hf), "{out}"),
    ]
    table = []
    for r in rows:
        stages = ", ".join(f"{k} {v:g}s" for k, v in r.get("stages", {}).items()) or "-"
        table.append([r["name"], round(r["seconds"], 1), round(r["peak_rss_mib"]), stages])
    distill = RESULTS / "distill_loop.json"
    text = markdown_table(["path", "wall s", "peak RSS MiB", "our stages"], table)
    print(f"\nFrom the float SmolLM2-135M (Hugging Face directory) on {host()}\n\n{text}")
    payload: dict[str, Any] = {"host": host(), "rows": rows, "table": text}
    if distill.is_file():
        payload["distill_loop"] = json.loads(distill.read_text())["table"]
    save("pipeline_time", payload)


if __name__ == "__main__":
    main()
