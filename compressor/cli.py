"""Command line: ``compressor compress | plan | check | bundle | verify | profiles | schema``.

Exit codes: see errors.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor import __version__, cli_bundle
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


def _extra(field: Any) -> dict[str, Any]:
    """A setting's flag metadata (config.flag puts it in json_schema_extra)."""
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _flag_name(name: str, field: Any) -> str:
    extra = _extra(field)
    return str(extra.get("flag", "--" + name.replace("_", "-")))


def settings_flags() -> dict[str, str]:
    """CompressRequest field -> its command-line flag (fields only a recipe sets are left out)."""
    from compressor.config import CompressRequest

    return {
        n: _flag_name(n, f)
        for n, f in CompressRequest.model_fields.items()
        if not _extra(f).get("recipe_only")
    }


def add_settings(p: argparse.ArgumentParser) -> None:
    """The compress flags, one per CompressRequest field: the field's description is the help, its
    type the argument type, its Literal the choices (config.py is the single definition)."""
    import typing

    from compressor.config import CompressRequest

    groups: dict[str, Any] = {}
    for name, field in CompressRequest.model_fields.items():
        extra = _extra(field)
        if extra.get("recipe_only"):
            continue
        group = str(extra.get("group", ""))
        if group and group not in groups:
            groups[group] = p.add_argument_group(group)
        target = groups[group] if group else p
        flag = _flag_name(name, field)
        kw: dict[str, Any] = {"help": field.description, "default": None, "dest": name}
        if "metavar" in extra:
            kw["metavar"] = extra["metavar"]
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        base = args[0] if typing.get_origin(ann) in (typing.Union, types.UnionType) and args else ann
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
            inner = [a for a in typing.get_args(base) if a is not type(None)]
            base = inner[0] if inner else base
        if flag == "model":
            target.add_argument("model", nargs="?", help=field.description)
            continue
        if base is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(base) is list:
            kw.update(nargs="+", type=Path)
        elif typing.get_origin(base) is typing.Literal:
            kw["choices"] = list(typing.get_args(base))
        elif base in (int, float, Path):
            kw["type"] = base
        if (
            field.default is not None
            and not isinstance(field.default, (bool, list))
            and field.default is not ...
        ):
            kw["help"] = f"{field.description} (default {field.default})"
        target.add_argument(flag, **kw)


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
        description="load -> (search) -> prune -> distill -> quantize -> export (GGUF, ONNX) -> measure -> "
        "package, checking the device budgets after every stage. With neither --quant nor --prune it "
        "searches for the configuration that fits every budget with the least KL to the teacher. "
        "Every run writes recipe.toml; --recipe replays one.",
    )
    add_settings(c)
    c.add_argument("--quiet", action="store_true", help="no progress display")

    pl = sub.add_parser(
        "plan",
        help="print the candidates compress would try for MODEL on a device, with projected figures",
        formatter_class=fmt,
        epilog=EXIT_CODES_HELP,
    )
    pl.add_argument("model", help="built-in name, a .gguf file, or a Hugging Face directory")
    pl.add_argument("--device", required=True, help="profile name or .toml path")
    pl.add_argument("--formats", help="formats to plan for (default: the profile runtime's)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _budget_flags(pl)
    pl.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model's own Python code (unsafe)"
    )

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

    cli_bundle.add_parsers(sub, fmt, EXIT_CODES_HELP)
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


RUN_FLAGS = ("out", "force", "keep_going", "resume", "trust_remote_code", "recipe", "bundle")


def _request(args: argparse.Namespace) -> Any:
    """The CompressRequest of the command line, or of ``--recipe`` (then only --out and the flags
    saying how to run may be added)."""
    import pydantic

    from compressor.config import CompressRequest
    from compressor.errors import ConfigError

    given = {k: getattr(args, k) for k in CompressRequest.model_fields if getattr(args, k, None) is not None}
    if args.recipe is not None:
        from compressor import recipe

        extra = sorted(settings_flags()[k] for k in given if k not in RUN_FLAGS)
        if extra:
            raise ConfigError(
                f"--recipe pins the configuration; drop {', '.join(extra)} (only --out, --force, "
                "--keep-going, --bundle, --quiet may be added)"
            )
        rec = recipe.load(args.recipe)
        if args.out is None:
            raise ConfigError("--recipe needs --out DIR (where the replay writes)")
        return recipe.request(rec, **{k: v for k, v in given.items() if k in RUN_FLAGS})
    missing = [f for f, k in (("MODEL", "model"), ("--device", "device"), ("--out", "out")) if k not in given]
    if missing:
        raise UsageError(f"compress needs {', '.join(missing)} (or --recipe FILE with --out DIR)")
    try:
        return CompressRequest(**given)
    except pydantic.ValidationError as exc:
        flags = settings_flags()
        problems = [
            f"{flags.get(str(e['loc'][0]), str(e['loc'][0]))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        ]
        raise ConfigError("invalid options", problems) from None


class UsageError(Exception):
    """A missing positional or required flag: argparse's usage error (exit 2)."""


def _cmd_compress(args: argparse.Namespace) -> int:
    from compressor.pipeline import compress

    req = _request(args)
    from compressor import distributed

    show = not args.quiet and sys.stderr.isatty() and distributed.is_main()
    with _progress(show) as progress:
        report = compress(req, progress)
    if not distributed.is_main():
        return report.exit_code  # rank 0 reports for the whole torchrun job
    _print_search(report)
    _print_checks(report)
    if report.exit_code != 0:
        print(f"error: {report.message}", file=sys.stderr)
        print(f"reports written to {req.out}/report.json and report.md", file=sys.stderr)
    else:
        files = ", ".join(f"{f} ({m['file_bytes'] / 2**20:.1f} MiB)" for f, m in report.measured.items())
        print(f"wrote {req.out}: {files}, report.json, report.md, manifest.json")
    return report.exit_code


PLAN_COLUMNS = ("candidate", "bits/w", "size MiB", "RAM MiB", "decode ms", "TTFT ms", "projection")


def _table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _print_search(report: Any) -> None:
    s = report.search
    if s is None:
        return
    rows = []
    for c in s.candidates:
        p, m = c["projected"], c.get("measured") or {}

        def f(v: Any, d: int = 1) -> str:
            return "-" if v is None else f"{v:.{d}f}"

        rows.append(
            [c["candidate"], f(p.get("size_mib")), f(p.get("decode_ms")), f(c.get("proxy_kl"), 4),
             f(m.get("kl"), 4), c["status"]]
        )  # fmt: skip
    cols = ("candidate", "size MiB", "decode ms", "proxy KL", "measured KL", "status")
    _table(f"candidates on {report.device} (details: report.md)", cols, rows)
    for line in (s.pruned, s.distill, s.nothing_fits):
        if line:
            print(f"search: {line}", file=sys.stderr)
    if s.chosen:
        print(f"search: chose {', '.join(s.chosen)}", file=sys.stderr)


def _cmd_plan(args: argparse.Namespace) -> int:
    """What compress would try, projected, without quantizing anything (seconds)."""
    from compressor.device_profile import load_profile
    from compressor.loading import load_model
    from compressor.pipeline_search import _overhead, pinned_formats, plan_rows
    from compressor.search import enumerate_candidates, formats_for

    names = ("max_size_mib", "max_ram_mib", "max_decode_ms_per_token", "max_ttft_ms", "max_encode_ms")
    profile = load_profile(args.device).with_budgets(**{n: getattr(args, n) for n in names})
    try:
        formats = formats_for(profile, pinned_formats(args.formats))
    except ValueError:
        from compressor.errors import ConfigError

        raise ConfigError(f"--formats '{args.formats}': choose from gguf, onnx") from None
    artifact = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if artifact.facts.is_encoder:
        from compressor.errors import ConfigError

        raise ConfigError(
            f"{args.model} is an encoder; the search plans decoders (use --quant with compress)"
        )
    cands, _ = enumerate_candidates(artifact, profile, formats, _overhead(artifact))
    fitting = [c for c in cands if c.fits]
    if args.json:
        print(json.dumps({"device": profile.name, "candidates": [c.row() for c in cands]}, indent=2))
    else:
        _table(f"{args.model} on {profile.name}: projected (no file written)", PLAN_COLUMNS, plan_rows(cands))
    if fitting:
        print(
            f"{len(fitting)} of {len(cands)} candidates are projected to fit; compress ranks them by KL "
            "to the teacher on calibration text and measures the best ones (--finalists) in the runtime",
            file=sys.stderr,
        )
        return 0
    from compressor.artifact import weight_inventory
    from compressor.errors import BudgetExceeded
    from stages import prune_auto

    smallest = min(cands, key=lambda c: c.projected["size_mib"])
    try:
        _, why = prune_auto.choose(
            artifact.facts, [smallest.scheme], profile, smallest.scheme.row_multiple,
            inventory=weight_inventory(artifact.model),
        )  # fmt: skip
    except BudgetExceeded as exc:
        print("nothing fits, not even pruned: " + "; ".join(exc.problems[:3]), file=sys.stderr)
        return int(ExitCode.BUDGET_MISSED)
    print(
        f"no quantization alone fits; compress would prune to {why['chosen']} ({smallest.scheme.name}) "
        "and search again",
        file=sys.stderr,
    )
    return 0


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


COMMANDS = {
    "compress": _cmd_compress,
    "plan": _cmd_plan,
    "check": _cmd_check,
    "profiles": _cmd_profiles,
    "bundle": cli_bundle.cmd_bundle,
    "verify": cli_bundle.cmd_verify,
    "schema": cli_bundle.cmd_schema,
}


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
    if args.command in ("compress", "check", "plan"):
        _quiet_libraries(args.debug)
    start = time.perf_counter()
    try:
        try:
            return COMMANDS[args.command](args)
        except UsageError as exc:
            print(f"compressor {args.command}: error: {exc}", file=sys.stderr)
            return int(ExitCode.USAGE)
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
