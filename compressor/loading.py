"""Load a source model into a ModelArtifact: a HF directory, a GGUF file, or a built-in name.

Safety: pickled checkpoints (``.bin``/``.pt``/``.pth``/``.ckpt``) are refused, since loading them can
run arbitrary code; ``trust_remote_code`` stays off unless the user asks for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from compressor.arch import spec_for_gguf_arch, spec_for_model_type
from compressor.artifact import ModelArtifact, ModelSource, SourceKind, facts_from_config
from compressor.builtin_models import BUILTIN_MODELS, builtin_path
from compressor.errors import InputError, ModelLoadError
from compressor.generation import sampling_from_generation_config, sampling_from_gguf
from compressor.paths import unreachable
from compressor.vocab import (
    GGUFVocab,
    hf_tokenizer_from_vocab,
    vocab_from_gguf_fields,
    vocab_from_hf_tokenizer,
)

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_source(spec: str) -> ModelSource:
    """Decide what kind of source ``spec`` names, refusing what we cannot or must not load."""
    if spec in BUILTIN_MODELS:
        return ModelSource(kind=SourceKind.BUILTIN, path=str(builtin_path(spec)), name=spec)
    path = Path(spec)
    why = unreachable(path)
    if why is not None and path.is_symlink():
        raise InputError(f"model '{spec}' {why}; point at the real file or directory")
    if why is not None:
        raise InputError(
            f"model '{spec}' not found: it is neither an existing path nor a built-in model "
            f"(built-in: {', '.join(BUILTIN_MODELS)})"
        )
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InputError(f"{path} is a pickled checkpoint, which can run code when loaded; {_CONVERT}")
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{path} is not a model: give a Hugging Face directory or a .gguf file")
        return ModelSource(kind=SourceKind.GGUF, path=str(path), name=spec)
    if not path.is_dir():
        raise InputError(f"{path} is neither a regular file nor a directory (a device or a pipe?)")
    if not (path / "config.json").is_file():
        present = sorted(p.name for p in path.iterdir())[:12]
        raise InputError(
            f"{path} has no config.json, so it is not a Hugging Face model directory "
            f"(it holds: {', '.join(present) or 'nothing'})"
        )
    _config_model_type(path / "config.json")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f"it only has pickled weights ({', '.join(pickled)}); {_CONVERT}" if pickled else ""
        raise InputError(f"{path} has no .safetensors weights {hint}".strip())
    return ModelSource(kind=SourceKind.HF_DIR, path=str(path), name=spec)


_CONVERT = (
    "convert it to safetensors in a trusted environment "
    "(model.save_pretrained(dir, safe_serialization=True)) and pass that directory"
)


def read_gguf_fields(path: Path) -> tuple[dict[str, Any], Any]:
    """Open a GGUF with the gguf package; corrupt or truncated files become ModelLoadError."""
    import gguf

    from compressor.gguf_header import check_gguf_structure

    check_gguf_structure(path)  # truncated / corrupt files get a precise message first
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items()}
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on bad files
        raise ModelLoadError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"{path} is truncated: tensor {t.name} runs past the end of the file")
    return fields, reader


def load_model(spec: str, trust_remote_code: bool = False) -> ModelArtifact:
    """Load ``spec`` (built-in name, .gguf path or HF directory) as a float32 causal LM artifact."""
    source = resolve_source(spec)
    if source.kind is SourceKind.HF_DIR or Path(source.path).is_dir():
        return _load_hf_dir(source, trust_remote_code)
    return _load_gguf(source)


def _config_model_type(config: Path) -> str:
    """``model_type`` from config.json, read as plain JSON before transformers sees it (transformers
    answers an unknown type with "upgrade transformers", which is not the problem here)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{config} is not valid JSON ({exc}); fix or replace it") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str):
        raise ModelLoadError(f"{config} has no 'model_type' string, so the architecture is unknown")
    spec_for_model_type(model_type, str(config))
    return model_type


def _load_gguf(source: ModelSource) -> ModelArtifact:
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(source.path)
    fields, _ = read_gguf_fields(path)
    arch = fields.get("general.architecture")
    spec_for_gguf_arch(str(arch), str(path))
    vocab = vocab_from_gguf_fields(fields)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as exc:
        raise ModelLoadError(f"transformers could not load {path}: {type(exc).__name__}: {exc}") from None
    art = _artifact(model, hf_tokenizer_from_vocab(vocab), source, vocab)
    return dataclasses.replace(art, sampling=sampling_from_gguf(fields))


def _load_hf_dir(source: ModelSource, trust_remote_code: bool) -> ModelArtifact:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source.path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}/config.json could not be read: {exc}") from None
    spec = spec_for_model_type(config.model_type, str(path / "config.json"))
    if spec.is_encoder:
        return _load_encoder(source, spec, config, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load the model in {path}: {type(exc).__name__}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{path}: a fast tokenizer (tokenizer.json) is required")
    art = _artifact(model, tokenizer, source, vocab_from_hf_tokenizer(tokenizer))
    return dataclasses.replace(art, sampling=sampling_from_generation_config(model.generation_config))


def _load_encoder(source: ModelSource, spec: Any, config: Any, trust_remote_code: bool) -> ModelArtifact:
    from transformers import AutoTokenizer

    from compressor.encoder import build_encoder, encoder_facts

    path = Path(source.path)
    model = build_encoder(path, spec, config, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer in {path}: {type(exc).__name__}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{path}: a fast tokenizer (tokenizer.json) is required")
    facts = encoder_facts(model)
    log.info(
        "loaded %s: %s encoder (%s, %s), %.1f M parameters",
        source.name,
        spec.family,
        facts.task,
        model.pooling.describe() if facts.task == "embedding" else f"{facts.n_labels} labels",
        facts.n_params / 1e6,
    )
    return ModelArtifact(model=model, tokenizer=tokenizer, facts=facts, source=source, lineage=("load",))


def _artifact(model: Any, tokenizer: Any, source: ModelSource, vocab: GGUFVocab) -> ModelArtifact:
    model.eval()
    listed = getattr(model.generation_config, "eos_token_id", None)  # Llama 3, Gemma 3: several
    # Generation must stop where the chat turns end (eos from the vocab, e.g. <|im_end|>).
    if vocab.eos_id is not None:
        model.generation_config.eos_token_id = vocab.eos_id
        model.config.eos_token_id = vocab.eos_id
    if vocab.bos_id is not None:
        model.config.bos_token_id = vocab.bos_id
    stop = [vocab.eos_id] if vocab.eos_id is not None else []
    for i in listed if isinstance(listed, list) else [listed]:
        if isinstance(i, int) and i not in stop:
            stop.append(i)
    n_params = sum(p.numel() for p in model.parameters())
    facts = facts_from_config(model.config, n_params, type(model).__name__)
    log.info("loaded %s: %s, %.1f M parameters", source.name, facts.architecture, n_params / 1e6)
    return ModelArtifact(
        model=model,
        tokenizer=tokenizer,
        facts=facts,
        source=source,
        vocab=vocab,
        lineage=("load",),
        stop_ids=tuple(stop),
    )
