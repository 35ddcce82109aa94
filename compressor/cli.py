"""Command line: ``compressor compress | check | profiles | schema``. Exit codes: see errors.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor import __version__
from compressor.arch import supported
from compressor.builtin_models import BUILTIN_MODELS
from compressor.errors import CompressorError, ExitCode

EXIT_CODES_HELP = """exit codes:
  0  success, every budget holds        1  a budget was missed (or cannot be met)
  2  usage error                        3  bad input (path, model file, profile)
  4  output not writable                5  exported file failed validation
  6  optional dependency missing        7  host too busy to trust a latency figure (re-run idle)
  70 internal error (report it, with --debug)
  130 interrupted (Ctrl-C)              143 terminated (SIGTERM); nothing half-written is left
  details: docs/errors.md"""


def _budget_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget overrides (replace the profile's value)")
    g.add_argument("--max-size-mib", type=float, metavar="MIB", help="largest model file allowed")
    g.add_argument("--max-ram-mib", type=float, metavar="MIB", help="peak RAM at the profile's context")
    g.add_argument(
        "--max-decode-ms",
        type=float,
        metavar="MS",
        dest="max_decode_ms_per_token",
        help="slowest decode allowed, ms per token",
    )
    g.add_argument("--max-ttft-ms", type=float, metavar="MS", help="slowest time to first token allowed")
    g.add_argument(
        "--max-encode-ms",
        type=float,
        metavar="MS",
        help="encoders: slowest batch allowed (the profile's encode_batch x encode_tokens)",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="compressor",
        formatter_class=fmt,
        epilog=EXIT_CODES_HELP,
        description="Compress a trained transformer to fit an edge device, and prove that it fits.",
    )
    parser.add_argument("--version", action="version", version=f"compressor {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "compress",
        help="compress MODEL for a device profile",
        formatter_class=fmt,
        epilog=EXIT_CODES_HELP,
        description="load -> quantize -> export (GGUF) -> measure -> package, checking the "
        "device budgets after every stage.",
    )
    c.add_argument(
        "model",
        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), a .gguf file, or a Hugging Face directory "
        f"of a supported family (model types: {supported()})",
    )
    c.add_argument("--device", required=True, help="profile name (see 'compressor profiles list') or .toml")
    c.add_argument("--out", required=True, type=Path, help="output directory (created atomically)")
    c.add_argument(
        "--quant",
        help="weight format(s), comma-separated, one per format: gguf:F32|F16|Q8_0|Q5_1|Q5_0|Q4_1|Q4_0|"
        "IQ4_NL|Q4_K_M|Q5_K_M|Q6_K|mixed, onnx:fp32|int8|int4[-asym][-blockN] (default gguf:Q4_0)",
    )
    c.add_argument(
        "--formats", help="export formats, e.g. onnx,gguf (default scheme per format: gguf:Q4_0, onnx:int4)"
    )
    c.add_argument(
        "--mobile", action="store_true", help="also write the ORT format (.ort) for onnxruntime-mobile"
    )
    c.add_argument(
        "--onnx-accuracy-level",
        type=int,
        default=4,
        choices=range(5),
        metavar="0-4",
        help="onnxruntime MatMulNBits compute type: 0 fp32 activations, 4 int8 (default, fastest)",
    )
    c.add_argument(
        "--ptq",
        choices=["auto", "rtn", "weighted", "gptq"],
        default="auto",
        help="how weights are rounded: 'weighted' searches each block's scale, weighted by the input "
        "importance measured on --calib-data when given; 'rtn' is each type's reference rule (what "
        "llama.cpp does without an imatrix); 'gptq' keeps the weighted scales and picks codes by GPTQ "
        "error compensation on the calibration activations; auto: gptq with calibration text "
        "(--calib-data, or gguf:mixed), else weighted; rtn under --qat",
    )
    c.add_argument(
        "--mixed-types",
        metavar="TYPES",
        help="with --quant gguf:mixed: the types a tensor may get (default "
        "IQ4_NL,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0); each tensor's type is chosen to fit --max-size-mib",
    )
    c.add_argument(
        "--bits-per-weight",
        type=float,
        metavar="B",
        help="with --quant gguf:mixed: fit the matrices to B bits per weight on average (4.5-8.5) "
        "instead of the size budget",
    )
    c.add_argument(
        "--embedding-type",
        help="type of the (tied) embedding/output, e.g. Q8_0 (default: Q8_0 for 4-bit schemes)",
    )
    g = c.add_argument_group("pruning")
    g.add_argument(
        "--prune",
        metavar="SPEC",
        help="'auto' (smallest pruning whose projection fits the budgets) or what to keep, e.g. "
        "heads=6,kv_heads=3,mlp=1024,layers=24 (counts, or ratios in (0,1))",
    )
    g.add_argument(
        "--prune-importance",
        default="activation",
        choices=["activation", "taylor", "magnitude", "random"],
        help="how structures are ranked (default activation)",
    )
    g.add_argument(
        "--calib-data",
        nargs="+",
        type=Path,
        metavar="FILE",
        help=".txt/.jsonl text for calibration (default: text sampled from the model)",
    )
    g.add_argument(
        "--calib-tokens",
        type=int,
        help="calibration tokens (default 16384 of --calib-data files, 2048 of teacher-written text)",
    )
    d = c.add_argument_group("distillation")
    d.add_argument(
        "--distill", action="store_true", help="heal the (pruned) student against the float teacher"
    )
    d.add_argument(
        "--qat", action="store_true", help="distill through the first --quant scheme's exact quantizer"
    )
    d.add_argument(
        "--qat-codes",
        choices=["follow", "frozen"],
        default="follow",
        help="QAT on GGUF types trains each block's scale (initialised from PTQ); 'follow': the codes "
        "follow the trained weights; 'frozen': PTQ's codes stay, only scales and norms train (cheaper)",
    )
    d.add_argument(
        "--qat-scale-lr",
        type=float,
        default=1e-3,
        help="peak learning rate of the learned scales (relative step per update; default 1e-3)",
    )
    d.add_argument(
        "--distill-tokens",
        type=int,
        help="tokens to train on (default 32768; no limit when --distill-minutes is given)",
    )
    d.add_argument("--distill-minutes", type=float, help="stop after this many minutes")
    d.add_argument("--distill-loss", default="forward_kl", choices=["forward_kl", "reverse_kl", "skew_kl"])
    d.add_argument(
        "--distill-lr", type=float, help="peak learning rate (default 5e-5 for decoders, 6e-4 for encoders)"
    )
    d.add_argument(
        "--knowledge",
        metavar="KINDS",
        help="encoders: what to distil, with optional weights: embedding (pooled output: cosine + MSE), "
        "logits (classifiers, with temperature), hidden (mapped layers' states), attention (MiniLM "
        "attention and value relations), similarity (sample-to-sample in a batch); default: all that "
        "apply, e.g. 'embedding,hidden=0.5,attention'",
    )
    d.add_argument("--resume", action="store_true", help="continue a killed distillation from its checkpoint")
    _budget_flags(c)
    c.add_argument("--keep-going", action="store_true", help="run every stage even if a projection fails")
    c.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    c.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model's own Python code (unsafe)"
    )
    c.add_argument("--quiet", action="store_true", help="no progress display")

    k = sub.add_parser(
        "check",
        help="re-measure an artifact and gate on the budgets (for CI)",
        formatter_class=fmt,
        epilog=EXIT_CODES_HELP,
    )
    k.add_argument("artifact", type=Path, help="output directory of 'compress' (or a .gguf file)")
    k.add_argument("--device", required=True, help="profile name or .toml path")
    _budget_flags(k)
    k.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here ('-' for stdout)")
    k.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report here")
    k.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown report here")

    p = sub.add_parser("profiles", help="list or show device profiles")
    psub = p.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    psub.add_parser("list", help="list the shipped device profiles")
    show = psub.add_parser("show", help="show one profile")
    show.add_argument("name", help="profile name or .toml path")

    sub.add_parser("schema", help="print the JSON Schema of report.json")
    return parser


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich spinner line per stage with elapsed time; a no-op when disabled."""
    from compressor.pipeline import _quiet

    if not enabled:
        yield _quiet
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
    ) as prog:

        @contextlib.contextmanager
        def stage(name: str, text: str) -> Iterator[Any]:
            task = prog.add_task(f"[bold]{name}[/]: {text}", total=1, status="")

            def update(completed: float, total: float, status: str) -> None:
                prog.update(task, completed=completed, total=total, status=status)

            try:
                yield update
            finally:
                prog.update(task, completed=prog.tasks[task].total or 1)

        yield stage


BUDGET_LABELS = {
    "max_size_mib": "size",
    "max_ram_mib": "peak RAM",
    "max_decode_ms_per_token": "decode",
    "max_ttft_ms": "TTFT",
    "max_encode_ms": "encode batch",
}


def _print_checks(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    if report.checks:
        table = Table(title=f"budgets on {report.device}")
        for col in ("file", "budget", "limit", "value", "result", "kind"):
            table.add_column(col)
        for c in report.checks:
            result = "[green]ok[/]" if c.passed else "[red bold]MISSED[/]"
            table.add_row(
                c.artifact or "(projected)",
                BUDGET_LABELS.get(c.budget, c.budget),
                f"{c.limit:g} {c.unit}",
                f"{c.value:.1f} {c.unit}",
                result,
                f"{c.provenance.value} ({c.where})",
            )
        console.print(table)


def _cmd_compress(args: argparse.Namespace) -> int:
    import pydantic

    from compressor.config import CompressRequest
    from compressor.pipeline import compress

    fields = {k: getattr(args, k) for k in CompressRequest.model_fields if hasattr(args, k)}
    try:
        req = CompressRequest(**{k: v for k, v in fields.items() if v is not None})
    except pydantic.ValidationError as exc:
        from compressor.errors import ConfigError

        problems = [f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid options", problems) from None
    from compressor import distributed

    show = not args.quiet and sys.stderr.isatty() and distributed.is_main()
    with _progress(show) as progress:
        report = compress(req, progress)
    if not distributed.is_main():
        return report.exit_code  # rank 0 reports for the whole torchrun job
    _print_checks(report)
    if report.exit_code != 0:
        print(f"error: {report.message}", file=sys.stderr)
        print(f"reports written to {req.out}/report.json and report.md", file=sys.stderr)
    else:
        files = ", ".join(f"{f} ({m['file_bytes'] / 2**20:.1f} MiB)" for f, m in report.measured.items())
        print(f"wrote {req.out}: {files}, report.json, report.md, manifest.json")
    return report.exit_code


def _write(path: Path, text: str) -> None:
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from compressor.outdir import write_atomic

    write_atomic(path, text)


def _cmd_check(args: argparse.Namespace) -> int:
    from compressor.check import check
    from compressor.report import render_junit, render_markdown

    names = ("max_size_mib", "max_ram_mib", "max_decode_ms_per_token", "max_ttft_ms", "max_encode_ms")
    report = check(args.artifact, args.device, {n: getattr(args, n) for n in names})
    if args.json:
        _write(args.json, json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    if args.junit:
        _write(args.junit, render_junit(report))
    if args.markdown:
        _write(args.markdown, render_markdown(report))
    _print_checks(report)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if report.exit_code:
        print(f"error: {report.message}", file=sys.stderr)
    else:
        print(f"ok: every budget of '{report.device}' holds")
    return report.exit_code


def _cmd_profiles(args: argparse.Namespace) -> int:
    from compressor.device_profile import load_profile, profile_names

    if args.profiles_command == "list":
        for name in profile_names():
            prof = load_profile(name)
            print(f"{name:22s} {prof.description}")
        return 0
    prof = load_profile(args.name)
    print(json.dumps(prof.model_dump(mode="json", exclude={"source_path"}), indent=2))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from compressor.report import RunReport

    print(json.dumps(RunReport.model_json_schema(), indent=2))
    return 0


COMMANDS = {"compress": _cmd_compress, "check": _cmd_check, "profiles": _cmd_profiles, "schema": _cmd_schema}


def _quiet_libraries(debug: bool) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws its own bar
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not debug:
        warnings.filterwarnings("ignore")
        for name in ("transformers", "gguf", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("compressor.pipeline").setLevel(logging.INFO)  # distillation progress lines
        with contextlib.suppress(ImportError):
            import transformers.utils.logging as tl

            tl.set_verbosity_error()
            tl.disable_progress_bar()


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI time-outs, ``docker stop``, ``kill``): unwinds like Ctrl-C, so every ``finally``
    and ``except BaseException`` cleanup runs and nothing half-written is left behind."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (embedded use)
        signal.signal(signal.SIGTERM, _raise_terminated)
    if args.command in ("compress", "check"):
        _quiet_libraries(args.debug)
    start = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except CompressorError as exc:
        if args.debug:
            raise
        print(f"error: {exc.render()}", file=sys.stderr)
        return int(exc.exit_code)
    except Terminated:
        print("terminated (SIGTERM): partial output removed", file=sys.stderr)
        return int(ExitCode.TERMINATED)
    except KeyboardInterrupt:
        print("interrupted: partial output removed", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)
    finally:
        logging.getLogger(__name__).debug("%s took %.1f s", args.command, time.perf_counter() - start)
