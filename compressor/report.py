"""Reports are data: StageReport per stage, RunReport per run, rendered to JSON, Markdown and JUnit.

``report.json`` follows ``RunReport``'s JSON Schema (``compressor schema`` prints it; a copy lives in
docs/report.schema.json and a test keeps the two in sync).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydantic import BaseModel, ConfigDict, Field

from compressor.budget import BudgetCheck, Footprint

SCHEMA_VERSION = 1


class StageStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the stage raised
    STOPPED = "stopped"  # a budget check after the stage failed; later stages did not run
    SKIPPED = "skipped"


class Outcome(StrEnum):
    PASS = "pass"  # every budget holds on the final, measured artifact
    BUDGET_MISSED = "budget-missed"
    UNRELIABLE = "unreliable"  # a latency budget looked missed, but measured on a busy host
    ERROR = "error"


class StageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    status: StageStatus = StageStatus.OK
    seconds: float = 0.0
    summary: dict[str, Any] = Field(default_factory=dict)
    footprint: Footprint | None = None  # projected (or measured) after this stage
    checks: list[BudgetCheck] = Field(default_factory=list)
    message: str | None = None


class SearchReport(BaseModel):
    """What ``compress``'s search tried and why it chose what it did (see compressor/search.py)."""

    model_config = ConfigDict(extra="forbid")
    formats: list[str] = Field(default_factory=list)
    time_budget_min: float | None = None
    calibration: str = ""  # the text the proxy KL and GPTQ used
    # per candidate: label, scheme, status (dropped|ranked|finalist|chosen), why, projected figures,
    # missed budgets, proxy KL (torch, calibration sample), measured figures (finalists)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    chosen: list[str] = Field(default_factory=list)
    pruned: str | None = None  # why the search pruned (only when no quantization alone fits)
    distill: str | None = None
    nothing_fits: str | None = None
    proxy_seconds: dict[str, float] = Field(default_factory=dict)
    calibrations: dict[str, str] = Field(default_factory=dict)  # per format: how latency was calibrated
    seconds: float = 0.0
    plot: str | None = None  # PNG beside report.md


class RunReport(BaseModel):
    """Everything one ``compress`` or ``check`` run found out."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    tool_version: str
    command: str
    model: str
    device: str
    scheme: str | None = None
    outcome: Outcome
    exit_code: int
    message: str | None = None
    stages: list[StageReport] = Field(default_factory=list)
    measured: dict[str, dict[str, Any]] = Field(default_factory=dict)  # file -> host measurements
    checks: list[BudgetCheck] = Field(default_factory=list)  # the final verdict's checks
    search: SearchReport | None = None  # compress without --quant/--prune: the candidates and the choice
    artifacts: dict[str, str] = Field(default_factory=dict)  # file in the output dir -> its scheme
    warnings: list[str] = Field(default_factory=list)  # e.g. files in a bundle its manifest lacks


def _fmt(v: float) -> str:
    if 0 < abs(v) <= 1:  # ratios, cosines, recalls: the digits that tell them apart
        return f"{v:.4f}"
    return f"{v:,.1f}" if abs(v) < 1e5 else f"{v:,.0f}"


def render_markdown(r: RunReport) -> str:
    verdict = {
        "pass": "PASS",
        "budget-missed": "BUDGET MISSED",
        "unreliable": "UNRELIABLE MEASUREMENT (host busy)",
        "error": "ERROR",
    }[r.outcome.value]
    lines = [
        f"# compressor {r.command}: {verdict}",
        "",
        f"- model: `{r.model}`  device profile: `{r.device}`  scheme: `{r.scheme or '-'}`",
        f"- exit code: {r.exit_code}" + (f"  \n- {r.message}" if r.message else ""),
        "",
    ]
    if r.warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in r.warnings), ""]
    if r.checks:
        lines += [
            "## Budgets",
            "",
            "| file | budget | limit | value | | kind | where |",
            "|---|---|---:|---:|:-:|---|---|",
        ]
        for c in r.checks:
            mark = "ok" if c.passed else ("**MISSED**" if c.reliable else "missed? (busy host)")
            lines.append(
                f"| {c.artifact or '(projected)'} | {c.budget} | {_fmt(c.limit)} {c.unit} "
                f"| {_fmt(c.value)} {c.unit} | {mark} | {c.provenance.value} | {c.where} |"
            )
        lines.append("")
    if r.measured:
        files = list(r.measured)
        keys = list(dict.fromkeys(k for m in r.measured.values() for k in m if k != "file"))
        lines += [
            "## Measured on this host",
            "",
            "| figure | " + " | ".join(files) + " |",
            "|---|" + "---:|" * len(files),
        ]
        for k in keys:
            cells = [r.measured[f].get(k, "") for f in files]
            lines.append(
                f"| {k} | " + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in cells) + " |"
            )
        lines.append("")
    if r.search is not None:
        lines += _search_lines(r.search)
    if r.stages:
        lines += ["## Stages", "", "| stage | status | seconds | notes |", "|---|---|---:|---|"]
        for s in r.stages:
            note = s.message or ", ".join(f"{k}={v}" for k, v in s.summary.items() if _short(v))
            lines.append(f"| {s.stage} | {s.status.value} | {s.seconds:.1f} | {note} |")
        lines.append("")
        for s in r.stages:
            if s.footprint:
                lines += [
                    f"### Footprint after {s.stage}",
                    "",
                    "| figure | value | kind | basis |",
                    "|---|---:|---|---|",
                ]
                for name in ("size", "ram", "decode", "ttft", "encode"):
                    f = getattr(s.footprint, name)
                    if f is None:
                        continue
                    lines.append(
                        f"| {name} | {_fmt(f.value)} {f.unit} | {f.provenance.value} ({f.where}) | "
                        f"{f.basis} |"
                    )
                lines.append("")
    return "\n".join(lines) + "\n"


def _num(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _search_lines(s: SearchReport) -> list[str]:
    lines = ["## Search", ""]
    if s.chosen:
        lines.append(f"- chosen: **{', '.join(s.chosen)}**")
    if s.nothing_fits:
        lines.append(f"- **{s.nothing_fits}**")
    if s.pruned:
        lines.append(f"- pruned: {s.pruned}")
    if s.distill:
        lines.append(f"- healing: {s.distill}")
    lines.append(
        f"- formats searched: {', '.join(s.formats)}; proxy KL on {s.calibration or 'calibration text'}"
        + (f"; time budget {s.time_budget_min:g} min" if s.time_budget_min else "")
        + f"; search took {s.seconds:.0f} s"
    )
    lines += [
        "",
        "Projected figures are estimates on the device; measured ones come from the exported file in its "
        "runtime on this host (latency projected to the device from that measurement). Proxy KL: torch, "
        "the candidate's exact quantizers, calibration sample; measured KL: the file vs the float teacher "
        "on held-out text.",
        "",
        "| candidate | bits/w | size MiB | RAM MiB | decode ms | TTFT ms | proxy KL | measured size | "
        "measured decode | measured KL | status | why |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in s.candidates:
        p, m = c["projected"], c.get("measured") or {}
        lines.append(
            f"| {c['candidate']} | {_num(p.get('bits_per_weight'), 2)} | {_num(p.get('size_mib'))} | "
            f"{_num(p.get('ram_mib'), 0)} | {_num(p.get('decode_ms'))} | {_num(p.get('ttft_ms'), 0)} | "
            f"{_num(c.get('proxy_kl'), 4)} | {_num(m.get('file_mib'))} | {_num(m.get('decode_ms'))} | "
            f"{_num(m.get('kl'), 4)} | {'**chosen**' if c['status'] == 'chosen' else c['status']} | "
            f"{c['why']} |"
        )
    lines.append("")
    if s.plot:
        lines += [f"![candidates: size and decode latency against KL to the teacher]({s.plot})", ""]
    return lines


def _short(v: Any) -> bool:
    return isinstance(v, int | float | str) and len(str(v)) < 40


def render_junit(r: RunReport) -> str:
    """One JUnit test case per budget, so CI systems show which budget failed."""
    cases = []
    for c in r.checks:
        body = ""
        if not c.passed:
            msg = (
                f"{c.budget}: {c.value:.2f} {c.unit} > limit {c.limit:g} {c.unit} "
                f"({c.provenance.value}, {c.where})"
            )
            tag = "failure" if c.reliable else "error"  # a busy host is the runner's problem
            body = f"<{tag} message={quoteattr(msg)}>{escape(msg)}</{tag}>"
        name = f'classname="budgets.{escape(r.device)}" name="{escape(c.artifact)}:{escape(c.budget)}"'
        cases.append(f"    <testcase {name}>{body}</testcase>")
    if r.outcome is Outcome.ERROR:
        msg = r.message or "error"
        cases.append(
            f'    <testcase classname="budgets.{escape(r.device)}" name="run">'
            f"<error message={quoteattr(msg)}>{escape(msg)}</error></testcase>"
        )
    failures = sum(not c.passed and c.reliable for c in r.checks)
    errors = int(r.outcome is Outcome.ERROR) + sum(not c.passed and not c.reliable for c in r.checks)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuite name="compressor {escape(r.command)}" tests="{len(cases)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )
