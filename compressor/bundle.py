"""``compressor bundle OUT`` (and ``compress --bundle``): the package an app ships, per target.

From a finished, verified output directory it writes ``OUT/NAME-DEVICE.bundle/`` and
``OUT/NAME-DEVICE.bundle.zip``: the model file(s) for the profile's runtime, the tokenizer files, the
generation defaults (``generation.json``), a model card (``README.md``) and ``manifest.json``
(``compressor.bundle_manifest``). For ONNX the folder is what onnxruntime-genai opens
(``genai_config.json`` beside the model and the tokenizer files).

Deterministic: the bundle is a function of the output directory only (no clocks, no absolute paths,
reference logits computed on one thread), and the zip has sorted entries, fixed timestamps and modes,
so the same output directory gives the same bytes. The model files are stored, the text deflated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor import __version__
from compressor.builtin_models import sha256_file
from compressor.bundle_manifest import BundleManifest, Check, Quality, Reference, render_card
from compressor.check import find_models
from compressor.errors import InputError, OutputError, ValidationError
from compressor.generation import Generation, sampling_from_gguf
from compressor.package import MANIFEST, MODEL_FILE_SUFFIXES, ManifestFile
from compressor.report import RunReport
from exporters.genai_config import with_context

log = logging.getLogger(__name__)
SUFFIX = ".bundle"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
PROMPT = "Name three things a small language model on a phone is useful for."
TOP_K = 8
TOLERANCE = 0.05  # logits; one CPU vs another differs by ~1e-3, a changed weight that matters by far more
QUALITY_TOKENS = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bundle_name(source: str, device: str) -> str:
    stem = Path(source).name.removesuffix(".gguf") or "model"
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{stem}-{device}")
    return clean.strip("-._") or "model"


def _read(out: Path) -> tuple[dict[str, Any], RunReport, dict[str, Any] | None]:
    if not out.is_dir() or not (out / MANIFEST).is_file() or not (out / "report.json").is_file():
        raise InputError(
            f"{out} is not the output directory of a finished 'compressor compress' (it needs "
            f"{MANIFEST} and report.json); run compress with --out {out.name} first"
        )
    find_models(out)  # every listed file present with its size and sha256, nothing escapes
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    try:
        report = RunReport.model_validate_json((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{out}/report.json is missing or not a compressor report ({exc}); re-run compress"
        ) from None
    recipe = None
    if (out / "recipe.toml").is_file():
        try:
            recipe = tomllib.loads((out / "recipe.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{out}/recipe.toml is not readable TOML ({exc}); re-run compress") from None
    if report.command != "compress" or report.outcome.value not in ("pass", "budget-missed", "unreliable"):
        raise InputError(f"{out} is not a finished compress output (outcome {report.outcome.value})")
    return manifest, report, recipe


def _pick(manifest: dict[str, Any]) -> tuple[str, list[str]]:
    """(format, model files) for the profile's runtime."""
    files = [f["path"] for f in manifest["files"] if f["role"] == "model"]
    if manifest.get("runtime") == "llama.cpp":
        chosen = [f for f in files if f.endswith(".gguf")]
        fmt = "gguf"
    else:
        onnx = [f for f in files if f.endswith(".onnx")]
        base = str(Path(onnx[0]).parent) if onnx else ""
        chosen = [f for f in files if str(Path(f).parent) == base and not f.endswith(".ort")]
        fmt = "onnx"
    if not chosen:
        raise InputError(
            f"the output has no {fmt.upper()} model for the profile's runtime {manifest.get('runtime')}; "
            f"re-run compress with --formats {fmt}"
        )
    return fmt, chosen


def _generation(manifest: dict[str, Any]) -> Generation:
    if "generation" in manifest and manifest["generation"] is None:
        raise InputError(
            "this output holds an encoder; app bundles are made for text generators (its manifest.json "
            "already lists and hashes every file, and 'compressor check' verifies them)"
        )
    if manifest.get("generation"):
        return Generation.model_validate(manifest["generation"])
    eos = manifest.get("eos_token_id")  # written before generation defaults were recorded
    ctx = int(manifest.get("context_length") or 2048)
    return Generation(
        bos_token_id=None,
        eos_token_ids=[eos] if isinstance(eos, int) else [],
        pad_token_id=None,
        add_bos_token=False,
        context_length=ctx,
        max_context=ctx,
        chat_template=manifest.get("chat_template"),
        sampling=sampling_from_gguf({}),
    )


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def _tokenizer_config(path: Path, gen: Generation) -> None:
    """The chat template inside tokenizer_config.json (where onnxruntime-genai and transformers both
    read it) and the budgeted context as the tokenizer's maximum length."""
    if not path.is_file():
        raise InputError(f"{path.parent.parent}/tokenizer has no tokenizer_config.json; re-run compress")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if gen.chat_template:
        cfg["chat_template"] = gen.chat_template
    cfg["model_max_length"] = gen.context_length
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer(bundle: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundle, local_files_only=True, use_fast=True)


def prompt_ids(bundle: Path, template: str | None) -> tuple[str, list[int]]:
    """The recorded prompt: the chat template applied when there is one, then the bundled tokenizer."""
    tok = _tokenizer(bundle)
    if template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = PROMPT
    return text, list(tok(text, add_special_tokens=not template).input_ids)


def runtime_logits(
    bundle: Path, manifest_runtime: str, model_file: str, ids: list[int], threads: int = 1
) -> np.ndarray:
    """Logits for every position of ``ids`` from the bundled model in its runtime."""
    if manifest_runtime == "llama.cpp":
        from exporters import llama_runtime

        return llama_runtime.logits((bundle / model_file).resolve(), ids, threads=threads)
    from exporters import genai_runtime

    return genai_runtime.logits(bundle.resolve(), ids, threads=threads)


def _reference(bundle: Path, runtime: str, model_file: str, gen: Generation) -> Reference:
    text, ids = prompt_ids(bundle, gen.chat_template)
    logits = runtime_logits(bundle, runtime, model_file, ids, threads=1)
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K]
    return Reference(
        runtime=runtime,  # type: ignore[arg-type]
        prompt=text,
        token_ids=ids,
        top_k=TOP_K,
        top_ids=top.tolist(),
        top_logits=[[round(float(logits[i, j]), 5) for j in row] for i, row in enumerate(top)],
        tolerance=TOLERANCE,
        threads=1,
    )


def _chat_check(bundle: Path, runtime: str, model_file: str, gen: Generation) -> None:
    """The bundle chats in its runtime's own chat API with its own template (greedy, a few tokens)."""
    messages = [{"role": "user", "content": PROMPT}]
    if runtime == "llama.cpp":
        from exporters import llama_runtime

        got = llama_runtime.chat((bundle / model_file).resolve(), messages, max_tokens=8)
        if gen.chat_template and got["chat_format"] != "chat_template.default":
            raise ValidationError(
                f"{model_file}: llama-cpp-python did not take the chat template from the GGUF "
                f"(it used {got['chat_format']!r})"
            )
    else:
        from exporters import genai_runtime

        got = genai_runtime.chat(bundle.resolve(), messages, max_tokens=8)
    if got["completion_tokens"] < 1:
        raise ValidationError(f"{model_file}: the chat API produced no reply in {runtime}")


def _quality(
    bundle: Path, runtime: str, model_file: str, recipe: dict[str, Any] | None, context: int
) -> Quality:
    """KL(teacher || bundled model) on held-out text, when the source model is here and unchanged."""
    if recipe is None:
        return Quality(measured=False, why_not="the output has no recipe.toml naming the source model")
    from compressor.loading import load_model
    from compressor.recipe import model_sha256
    from compressor.search import heldout_kl
    from compressor.textdata import builtin_split, tokenize_docs

    spec = str((recipe.get("settings") or {}).get("model", ""))
    try:
        if model_sha256(spec) != recipe.get("model_sha256"):
            return Quality(
                measured=False, why_not=f"the source model {Path(spec).name} changed since the run"
            )
        teacher = load_model(spec)
    except Exception as exc:  # not found, not loadable here: the bundle is still made
        return Quality(
            measured=False, why_not=f"the source model {Path(spec).name} could not be loaded ({exc})"
        )
    if teacher.facts.is_encoder:
        return Quality(measured=False, why_not="encoder bundles are judged by their stage reports")
    import torch

    ids = tokenize_docs(builtin_split()[1], teacher.tokenizer)[: min(QUALITY_TOKENS, context - 1)]
    with torch.no_grad():
        ref = teacher.model(torch.tensor([ids])).logits[0].float().numpy()
    q = heldout_kl(ref, runtime_logits(bundle, runtime, model_file, ids, threads=1))  # 1: reproducible
    return Quality(
        measured=True,
        kl=round(q["kl"], 5),
        top1=round(q["top1"], 4),
        tokens=len(ids),
        text="held-out part of the shipped general text sample",
    )


def _stages(report: RunReport) -> list[dict[str, Any]]:
    out = []
    for s in report.stages:
        summary = {k: v for k, v in s.summary.items() if isinstance(v, str | int | float | bool)}
        out.append({"stage": s.stage, "status": s.status.value, "summary": summary})
    return out


def _data(recipe: dict[str, Any] | None) -> list[dict[str, str]]:
    rows = (recipe or {}).get("data", [])
    return [
        {"path": Path(d["path"]).name if "/" in d["path"] else d["path"], "sha256": d.get("sha256", "")}
        for d in rows
    ]


def _entry(root: Path, rel: str) -> ManifestFile:
    p = root / rel
    role = "model" if p.suffix in MODEL_FILE_SUFFIXES else "tokenizer" if rel in TOKENIZER_FILES else "config"
    if rel == "README.md":
        role = "card"
    return ManifestFile(path=rel, role=role, bytes=p.stat().st_size, sha256=sha256_file(p))  # type: ignore[arg-type]


def _write_zip(folder: Path, dest: Path, top: str) -> None:
    """Sorted entries under ``top/`` (the bundle's final name: ``folder`` may still be a temporary
    one), fixed time and mode: same files, same bytes."""
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(folder.rglob("*"), key=lambda q: q.relative_to(folder).as_posix()):
            if not p.is_file():
                continue
            info = zipfile.ZipInfo(f"{top}/{p.relative_to(folder).as_posix()}", date_time=ZIP_TIME)
            info.external_attr = (0o100644 & 0xFFFF) << 16
            info.create_system = 3
            model = p.suffix in MODEL_FILE_SUFFIXES
            info.compress_type = zipfile.ZIP_STORED if model else zipfile.ZIP_DEFLATED
            info.file_size = p.stat().st_size  # zip64 records only where a file needs them
            with open(p, "rb") as src, z.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def build_bundle(out: Path, work: Path | None = None, quality: bool = True) -> tuple[Path, Path]:
    """Write ``NAME-DEVICE.bundle/`` and its zip into ``out`` (or ``work``, the staging directory of a
    compress run that becomes ``out``). Returns (folder, zip) as they will be named in ``out``."""
    src = work or out
    manifest, report, recipe = _read(src)
    fmt, models = _pick(manifest)
    gen = _generation(manifest)
    name = bundle_name(manifest.get("source_model") or report.model, report.device)
    final, zip_final = src / f"{name}{SUFFIX}", src / f"{name}{SUFFIX}.zip"
    tmp = src / f".{name}{SUFFIX}.partial-{os.getpid()}"
    ztmp = src / f".{name}{SUFFIX}.zip.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        base = Path(models[0]).parent
        for rel in models:  # ONNX: model.onnx + model.onnx.data (+ genai_config.json) at the root
            _copy(src / rel, tmp / Path(rel).relative_to(base))
        if fmt == "onnx":
            genai = src / base / "genai_config.json"
            if not genai.is_file():
                raise InputError(
                    f"{src / base} has no genai_config.json; re-run compress (this output predates it)"
                )
            with_context(genai, tmp / "genai_config.json", gen.context_length)
        for t in TOKENIZER_FILES:
            if (src / "tokenizer" / t).is_file():
                _copy(src / "tokenizer" / t, tmp / t)
        _tokenizer_config(tmp / "tokenizer_config.json", gen)
        (tmp / "generation.json").write_text(json.dumps(gen.model_dump(), indent=2) + "\n", encoding="utf-8")
        model_file = Path(models[0]).name if fmt == "gguf" else "."
        runtime = "llama.cpp" if fmt == "gguf" else "onnxruntime-genai"
        ref = _reference(tmp, runtime, model_file, gen)
        _chat_check(tmp, runtime, model_file, gen)
        qual = (
            _quality(tmp, runtime, model_file, recipe, gen.context_length)
            if quality
            else Quality(measured=False, why_not="skipped (--no-quality)")
        )
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        m = BundleManifest(
            manifest_version=1,
            kind="bundle",
            created_by=f"compressor {__version__}",
            name=name,
            runtime=runtime,  # type: ignore[arg-type]
            format=fmt,  # type: ignore[arg-type]
            model_file=model_file,
            scheme=manifest.get("scheme"),
            source={
                "name": Path(manifest.get("source_model") or report.model).name,
                "sha256": (recipe or {}).get("model_sha256"),
            },
            device=report.device,
            context_length=gen.context_length,
            generation=gen,
            files=[_entry(tmp, f) for f in files],
            stages=_stages(report),
            data=_data(recipe),
            budgets=manifest.get("budgets", {}),
            checks=[
                Check(
                    budget=c.budget,
                    limit=c.limit,
                    value=c.value,
                    unit=c.unit,
                    passed=c.passed,
                    provenance=c.provenance.value,
                    where=c.where,
                )
                for c in report.checks
                if c.artifact in (*models, "")
            ],
            measured={k: v for k, v in report.measured.items() if k in models},
            outcome=report.outcome.value,
            quality=qual,
            reference=ref,
        )
        (tmp / "README.md").write_text(render_card(m), encoding="utf-8")
        files.append("README.md")
        m = m.model_copy(update={"files": [_entry(tmp, f) for f in sorted(files)]})
        (tmp / MANIFEST).write_text(json.dumps(m.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        _write_zip(tmp, ztmp, f"{name}{SUFFIX}")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        os.replace(ztmp, zip_final)
    except OSError as exc:
        _discard(tmp, ztmp)
        raise OutputError(f"cannot write the bundle in {src}: {exc.strerror or exc}") from None
    except BaseException:
        _discard(tmp, ztmp)
        raise
    return out / final.name, out / zip_final.name


def _discard(folder: Path, zipped: Path) -> None:
    """Nothing half-written stays: the partial folder and zip of a failed bundle."""
    shutil.rmtree(folder, ignore_errors=True)
    zipped.unlink(missing_ok=True)
