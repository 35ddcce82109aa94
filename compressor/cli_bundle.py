"""Command line for app bundles: ``compressor bundle OUT``, ``compressor verify BUNDLE`` and
``compressor schema [report|manifest]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

VERIFY_EXIT_CODES = """exit codes:
  0  the bundle is exactly what was packaged (files, hashes, and the model's logits)
  3  the bundle does not match its manifest: a file changed, is missing, is extra, a listed path
     escapes the bundle (absolute, '..', symlink), or manifest.json is invalid (each names the file)
  5  the files match but the tokenizer or model does not give what was recorded at packaging time
  6  the runtime the bundle names is not installed (llama-cpp-python, onnxruntime-genai)
  details: docs/errors.md"""


def add_parsers(sub: Any, fmt: Any, epilog: str) -> None:
    b = sub.add_parser(
        "bundle",
        help="write NAME-DEVICE.bundle/ and a deterministic .zip from a compress output, for apps",
        formatter_class=fmt,
        epilog=epilog,
        description="Package a finished 'compress' output for an app: the model for the profile's runtime "
        "(GGUF for llama.cpp; ONNX + genai_config.json for onnxruntime-genai), tokenizer, generation "
        "defaults, a model card and manifest.json with hashes, budgets, measured figures and reference "
        "logits. The same output gives the same zip, byte for byte.",
    )
    b.add_argument("out", type=Path, help="output directory of 'compress'")
    b.add_argument(
        "--no-quality",
        action="store_true",
        help="do not measure KL to the source model (it is loaded again for that)",
    )
    v = sub.add_parser(
        "verify",
        help="prove a bundle (folder or .zip) is what was packaged: files, hashes, logits",
        formatter_class=fmt,
        epilog=VERIFY_EXIT_CODES,
    )
    v.add_argument("bundle", type=Path, help="NAME-DEVICE.bundle folder or its .zip")
    v.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON ('-' for stdout)")
    s = sub.add_parser("schema", help="print the JSON Schema of report.json or of a bundle's manifest.json")
    s.add_argument("which", nargs="?", choices=("report", "manifest"), default="report")


def cmd_bundle(args: argparse.Namespace) -> int:
    from compressor.bundle import build_bundle

    folder, zipped = build_bundle(args.out, quality=not args.no_quality)
    print(f"bundle: {folder}\nzip:    {zipped} ({zipped.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from compressor.bundle_verify import verify
    from compressor.errors import CompressorError

    try:
        result = verify(args.bundle)
    except CompressorError as exc:
        if args.json:
            _emit(
                args.json,
                {
                    "ok": False,
                    "exit_code": int(exc.exit_code),
                    "error": exc.message,
                    "problems": exc.problems,
                },
            )
        raise
    if args.json:
        _emit(args.json, {"ok": True, "exit_code": 0, **result})
    to_stdout = args.json is not None and str(args.json) == "-"
    print(
        f"ok: {result['bundle']}: {result['files']} files match manifest.json; "
        f"the model in {result['runtime']} gives the recorded logits on {result['positions']} positions "
        f"(max |diff| {result['max_abs_logit_diff']:.2g} <= {result['tolerance']})",
        file=sys.stderr if to_stdout else sys.stdout,  # stdout stays pure JSON with --json -
    )
    return 0


def _emit(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        print(text, end="")
        return
    from compressor.outdir import write_atomic

    write_atomic(path, text)


def cmd_schema(args: argparse.Namespace) -> int:
    if args.which == "manifest":
        from compressor.bundle_manifest import BundleManifest

        print(json.dumps(BundleManifest.model_json_schema(), indent=2))
        return 0
    from compressor.report import RunReport

    print(json.dumps(RunReport.model_json_schema(), indent=2))
    return 0
