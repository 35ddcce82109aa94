"""Tiny random encoders built in code (BERT family): a sentence-transformers BERT (mean pooling +
Normalize), a BERT classifier and a RoBERTa embedding model, each with a real fast tokenizer of its
kind (WordPiece for BERT, byte-level BPE for RoBERTa) trained on a few sentences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENCODER_KINDS = ("st-bert", "bert-cls", "roberta")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A cat sat on the warm mat by the door.",
    "Semantic search finds documents that mean the same thing.",
    "Phones run small transformer models for text classification.",
    "def reverse(s): return s[::-1]  # Python, 3.11",
    "Weather and climate are not the same: 12 degrees, 70% humidity!",
    "Embeddings map sentences to vectors; similar ones lie close together.",
    "She sells sea shells by the sea shore, doesn't she?",
]


def _wordpiece() -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk.train_from_iterator(SENTENCES * 4, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _bytelevel() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(SENTENCES * 4, trainer)
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=128,
    )


def build_encoder_model(kind: str, root: Path, seed: int = 0, layers: int = 4) -> Path:
    """Write a tiny random encoder of ``kind`` (ENCODER_KINDS) under ``root``; returns its directory."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    out = root / f"tiny-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        initializer_range=0.1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if kind == "roberta":
        tok = _bytelevel()
        config = tf.RobertaConfig(
            vocab_size=len(tok), pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common
        )
        config.max_position_embeddings = 130  # 128 positions after RoBERTa's offset of 2
        model: Any = tf.RobertaModel(config, add_pooling_layer=False)
    else:
        tok = _wordpiece()
        config = tf.BertConfig(vocab_size=len(tok), pad_token_id=0, **common)
        if kind == "bert-cls":
            config.num_labels = 3
            model = tf.BertForSequenceClassification(config)
        else:
            model = tf.BertModel(config, add_pooling_layer=False)
    with torch.no_grad():  # LayerNorms away from 1/0, so that a wrong norm shows in the output
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if kind in ("st-bert", "roberta"):
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if kind == "st-bert":
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": 64,
            "pooling_mode_cls_token": kind == "roberta",
            "pooling_mode_mean_tokens": kind != "roberta",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 96}))
    return out
