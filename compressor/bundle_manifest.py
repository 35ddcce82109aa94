"""The bundle's ``manifest.json``: a closed schema (``compressor schema manifest``, published as
docs/manifest.schema.json) and the model card (``README.md``) rendered from it.

A bundle is what an app ships: model file(s) for the profile's runtime, tokenizer, generation defaults,
a model card and this manifest. ``compressor verify`` holds a bundle to it: every file listed with its
size and sha256 and nothing else present, and the model giving the recorded reference logits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compressor.generation import Generation
from compressor.package import ManifestFile

BUNDLE_MANIFEST_VERSION = 1
Runtime = Literal["llama.cpp", "onnxruntime-genai"]


class Reference(BaseModel):
    """Logits the bundled model gave at packaging time, in its runtime on one thread: the recorded
    prompt's top-``top_k`` logits at every position. ``verify`` reruns the prompt and compares."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    runtime: Runtime
    prompt: str = Field(description="the text, chat template applied")
    token_ids: list[int] = Field(min_length=1, description="the prompt as the bundled tokenizer splits it")
    top_k: int = Field(ge=1)
    top_ids: list[list[int]] = Field(description="per position: the top_k token ids, best first")
    top_logits: list[list[float]] = Field(description="per position: their logits")
    tolerance: float = Field(
        gt=0,
        le=0.5,  # a manifest cannot widen it into accepting a different model
        description="largest |logit difference| allowed on the recorded ids (CPU arithmetic differs)",
    )
    threads: int = Field(ge=1)


class Quality(BaseModel):
    """How close the bundled model is to the source (teacher) model, measured in the bundle's runtime."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    measured: bool
    kl: float | None = Field(default=None, description="mean KL(teacher || bundle) per token, nats")
    top1: float | None = Field(default=None, description="share of positions where both pick the same token")
    tokens: int = 0
    text: str = Field(default="", description="the held-out text the figures were measured on")
    why_not: str | None = None


class Check(BaseModel):
    """One budget and how it was judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    budget: str
    limit: float
    value: float
    unit: str
    passed: bool
    provenance: str = Field(description="measured on the host, or estimated for the device from it")
    where: str


class BundleManifest(BaseModel):
    """``manifest.json`` of a bundle (every field required; unknown fields are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    manifest_version: Literal[1]
    kind: Literal["bundle"]
    created_by: str = Field(pattern=r"^compressor ")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="NAME-DEVICE")
    runtime: Runtime = Field(description="the runtime the app loads the bundle with")
    format: Literal["gguf", "onnx"]
    model_file: str = Field(description="the file (GGUF) or folder (ONNX: '.', genai_config.json) to open")
    scheme: str | None
    source: dict[str, str | None] = Field(description="name and sha256 of the model that was compressed")
    device: str
    context_length: int
    generation: Generation
    files: list[ManifestFile] = Field(min_length=1)
    stages: list[dict[str, Any]] = Field(description="every stage applied, with its settings")
    data: list[dict[str, str]] = Field(description="calibration/training data used, with sha256")
    budgets: dict[str, float | None]
    checks: list[Check]
    measured: dict[str, Any] = Field(description="host figures of the model file in its runtime")
    outcome: str
    quality: Quality
    reference: Reference


def _num(v: Any) -> str:
    return f"{v:,.4g}" if isinstance(v, float) else str(v)


def render_card(m: BundleManifest) -> str:
    """The model card (README.md), from the manifest only (so it is as deterministic as the manifest)."""
    g, q = m.generation, m.quality
    src = m.source
    lines = [
        f"# {m.name}",
        "",
        f"`{src.get('name')}` compressed by {m.created_by} for **{m.device}** "
        f"({m.runtime}, {m.format.upper()}, scheme `{m.scheme}`). Budget verdict: **{m.outcome}**.",
        "",
        f"- source model: `{src.get('name')}`, sha256 `{src.get('sha256') or 'unknown'}`",
        f"- open with {m.runtime}: `{m.model_file}`; files and hashes: `manifest.json`; "
        f"check it with `compressor verify {m.name}.bundle`",
        f"- context: {g.context_length} tokens as budgeted (the model was trained for {g.max_context})",
        f"- stop tokens: {g.eos_token_ids}; bos: {g.bos_token_id} (prepended: {g.add_bos_token})",
        f"- sampling defaults ({g.sampling.source}): temperature {g.sampling.temperature}, "
        f"top-k {g.sampling.top_k}, top-p {g.sampling.top_p}, min-p {g.sampling.min_p}, "
        f"repetition penalty {g.sampling.repetition_penalty}",
        f"- chat template: {'in generation.json and tokenizer_config.json' if g.chat_template else 'none'}",
        "",
        "## Quality against the source model",
        "",
    ]
    if q.measured:
        lines.append(
            f"Mean KL(teacher ‖ this model) **{q.kl:.4f}** nats/token, top-1 agreement {q.top1:.3f}, "
            f"on {q.tokens} held-out tokens ({q.text}), this model run in {m.runtime}."
        )
    else:
        lines.append(f"Not measured: {q.why_not}")
    lines += ["", "## Stages", "", "| stage | status | settings and results |", "|---|---|---|"]
    for s in m.stages:
        notes = "; ".join(f"{k}={_num(v)}" for k, v in s.get("summary", {}).items())
        lines.append(f"| {s['stage']} | {s['status']} | {notes} |")
    lines += ["", "## Data", ""]
    lines += [f"- `{d['path']}` sha256 `{d['sha256']}`" for d in m.data] or ["- none (no calibration data)"]
    lines += [
        "",
        "## Budgets and how each was judged",
        "",
        "| budget | limit | value | verdict | how |",
        "|---|---:|---:|---|---|",
    ]
    for c in m.checks:
        lines.append(
            f"| {c.budget} | {_num(c.limit)} {c.unit} | {_num(c.value)} {c.unit} | "
            f"{'ok' if c.passed else 'MISSED'} | {c.provenance}: {c.where} |"
        )
    lines += [
        "",
        "## Files",
        "",
        "| file | role | bytes | sha256 |",
        "|---|---|---:|---|",
        *(f"| {f.path} | {f.role} | {f.bytes:,} | `{f.sha256[:16]}…` |" for f in m.files),
        "",
        "Figures measured on the packaging host; device figures are estimates from them (see the "
        "budget table). Nothing here was run on a phone.",
        "",
    ]
    return "\n".join(lines)
