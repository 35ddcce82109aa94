"""Encoders (BERT family): the model a user deploys is the transformer *plus* what turns its token
states into one answer per input: sentence-transformers' pooling and normalisation, or a
sequence-classification head. ``EncoderModel`` is that whole computation as one ``nn.Module``, so
distillation, quantization, the ONNX graph (pooling inside it) and validation all see the same thing.

Parameter names are the HF task model's (``bert.encoder.layer.0...``, ``classifier.weight``), which
is what the family's tensor table (``compressor.arch``) describes.

Sentence-transformers directories are read from their JSON files only (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``); the sentence-transformers package is not
needed and no module code is imported. Pooling modes other than mean / CLS / max (weighted-mean,
last-token, mean-sqrt-len) and extra modules (Dense, LayerNorm) are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.arch import ArchSpec
from compressor.artifact import ModelFacts
from compressor.errors import ModelLoadError


class Task(StrEnum):
    EMBEDDING = "embedding"  # one pooled (optionally normalised) vector per input
    CLASSIFICATION = "classification"  # a sequence-classification head's logits per input


class PoolingMode(StrEnum):
    MEAN = "mean"
    CLS = "cls"
    MAX = "max"


@dataclass(frozen=True)
class Pooling:
    mode: PoolingMode = PoolingMode.MEAN
    normalize: bool = False
    max_seq_length: int | None = None

    def describe(self) -> str:
        return f"{self.mode.value} pooling" + (", L2-normalised" if self.normalize else "")


_KNOWN_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or replace it") from None


def read_pooling(root: Path) -> Pooling | None:
    """The pooling of a sentence-transformers directory, or None when ``modules.json`` is absent."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{modules_file} must be a list of module entries")
    unknown = [str(m.get("type")) for m in modules if m.get("type") not in _KNOWN_MODULES]
    if unknown:
        raise ModelLoadError(
            f"{modules_file}: module(s) {', '.join(unknown)} are not supported "
            "(supported: Transformer, Pooling, Normalize)"
        )
    mode, normalize = PoolingMode.MEAN, False
    for m in modules:
        if m["type"].endswith(".Normalize"):
            normalize = True
        if m["type"].endswith(".Pooling"):
            cfg_file = root / str(m.get("path", "")) / "config.json"
            if ".." in Path(str(m.get("path", ""))).parts or not cfg_file.is_file():
                raise ModelLoadError(f"{modules_file}: pooling config {cfg_file} is missing")
            mode = _pooling_mode(_json(cfg_file), cfg_file)
    max_len = None
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        value = _json(sbert).get("max_seq_length")
        max_len = int(value) if isinstance(value, int) and value > 0 else None
    return Pooling(mode, normalize, max_len)


def _pooling_mode(cfg: Any, where: Path) -> PoolingMode:
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{where} must be a JSON object")
    on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    names = {
        "pooling_mode_mean_tokens": PoolingMode.MEAN,
        "pooling_mode_cls_token": PoolingMode.CLS,
        "pooling_mode_max_tokens": PoolingMode.MAX,
    }
    if len(on) != 1 or on[0] not in names:
        raise ModelLoadError(
            f"{where}: pooling {', '.join(on) or '(none)'} is not supported; "
            "exactly one of mean, cls or max pooling is"
        )
    return names[on[0]]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(batch, seq, d) token states -> (batch, d), padding excluded; the same ops the ONNX graph runs."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode is PoolingMode.CLS:
        out = hidden[:, 0]
    elif pooling.mode is PoolingMode.MAX:
        out = (hidden + (m - 1.0) * 1e9).amax(dim=1)
    else:
        out = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if pooling.normalize:
        out = out / out.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return out


class EncoderModel(nn.Module):
    """The HF task model plus pooling: ``forward(input_ids, attention_mask, token_type_ids)``
    returns the embedding (task EMBEDDING) or the logits (task CLASSIFICATION)."""

    config: Any
    spec: ArchSpec
    task: Task
    pooling: Pooling

    def __init__(self, hf: nn.Module, spec: ArchSpec, task: Task, pooling: Pooling) -> None:
        super().__init__()
        self.spec, self.task, self.pooling = spec, task, pooling
        self.config = hf.config
        if task is Task.EMBEDDING:
            self.add_module(spec.base_prefix, hf)  # names: bert.embeddings..., as the task models
        else:
            for name, child in hf.named_children():
                self.add_module(name, child)
        self.__dict__["_hf"] = hf  # called for its forward; its parameters are registered above

    @property
    def hf(self) -> Any:
        """The transformers task model (the same parameters, under its own names)."""
        return self.__dict__["_hf"]

    @property
    def base(self) -> Any:
        return getattr(self, self.spec.base_prefix)

    @property
    def layers(self) -> Any:
        return self.base.encoder.layer

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Last hidden state and every layer's hidden states (embeddings first)."""
        out = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        return out.last_hidden_state, out.hidden_states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.task is Task.CLASSIFICATION:
            return self.hf(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
        hidden = self.base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def head_output(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What ``forward`` returns, from the last hidden state (saves a second pass in training)."""
        if self.task is Task.EMBEDDING:
            return pool(hidden, attention_mask, self.pooling)
        hf = self.hf
        if getattr(self.base, "pooler", None) is not None:  # BERT: dropout + linear on the pooler
            return hf.classifier(hf.dropout(self.base.pooler(hidden)))
        return hf.classifier(hidden)  # RoBERTa's head reads the first token itself

    def save_pretrained(self, path: Path) -> None:
        self.hf.save_pretrained(path, safe_serialization=True)


def encoder_facts(model: EncoderModel) -> ModelFacts:
    """Shape facts read from the modules (HF prunes BERT heads in place, leaving the config's count)."""
    from compressor.arch import Slot

    spec, cfg = model.spec, model.config
    layer0 = model.layers[0]
    q = layer0.get_submodule(spec.module_path(Slot.Q))
    attn = layer0.get_submodule(spec.module_path(Slot.Q).rsplit(".", 1)[0])
    head_dim = int(attn.attention_head_size)
    n_params = sum(p.numel() for p in model.parameters())
    return ModelFacts(
        architecture=type(model.hf).__name__,
        family=spec.family,
        task=model.task.value,
        n_layers=len(model.layers),
        hidden_size=int(cfg.hidden_size),
        n_heads=q.out_features // head_dim,
        n_kv_heads=q.out_features // head_dim,
        head_dim=head_dim,
        intermediate_size=layer0.get_submodule(spec.module_path(Slot.UP)).out_features,
        vocab_size=int(cfg.vocab_size),
        tied_embeddings=False,
        n_params=n_params,
        max_context=int(cfg.max_position_embeddings) - spec.position_offset,
        n_labels=int(getattr(cfg, "num_labels", 0)) if model.task is Task.CLASSIFICATION else 0,
    )


def max_length(artifact_model: EncoderModel, tokenizer: Any, limit: int | None = None) -> int:
    """Tokens per input: the sentence-transformers limit, else the tokenizer's, else the positions."""
    n_pos = int(artifact_model.config.max_position_embeddings) - artifact_model.spec.position_offset
    candidates = [n_pos, artifact_model.pooling.max_seq_length or n_pos]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        candidates.append(tok_max)
    if limit:
        candidates.append(limit)
    return min(candidates)


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Padded batch with input_ids, attention_mask and token_type_ids (zeros when the tokenizer has none)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch["token_type_ids"] = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return batch


@torch.no_grad()
def encode(
    model: EncoderModel,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    max_len: int | None = None,
) -> torch.Tensor:
    """Embeddings (or logits) of ``texts`` in batches, in float32, as the deployed model returns them."""
    model.eval()
    n = max_len or max_length(model, tokenizer)
    outs = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = tokenize(tokenizer, [texts[j] for j in idx], n)
        outs.append((idx, model(**batch).float()))
    result = torch.empty(len(texts), outs[0][1].shape[-1]) if outs else torch.empty(0, 0)
    for idx, out in outs:
        result[idx] = out
    return result


def build_encoder(path: Path, spec: ArchSpec, config: Any, trust_remote_code: bool) -> EncoderModel:
    """Load the HF directory ``path`` as the encoder its files describe: a sentence-transformers
    model (modules.json) is an embedding model; a ``*ForSequenceClassification`` config keeps its
    head; any other plain encoder is an embedding model with mean pooling."""
    import transformers

    archs = list(getattr(config, "architectures", None) or [])
    pooling = read_pooling(path)
    classify = pooling is None and any(a.endswith("ForSequenceClassification") for a in archs)
    task = Task.CLASSIFICATION if classify else Task.EMBEDDING
    cls_name = spec.classifier_class if classify else spec.base_class
    cls = getattr(transformers, cls_name)
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if not classify else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "pooler weights not used": sentence-transformers pools
    try:
        hf = cls.from_pretrained(
            path,
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            attn_implementation="eager",
            **kwargs,
        )
    except Exception as exc:
        raise ModelLoadError(f"could not load the encoder in {path}: {type(exc).__name__}: {exc}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    hf.eval()
    return EncoderModel(hf, spec, task, pooling or Pooling(PoolingMode.MEAN, False))
