from compressor.vocab import hf_tokenizer_from_vocab, vocab_from_hf_tokenizer
from tests.conftest import corpus


def test_vocab_round_trip_tokenizes_identically(tiny_artifact) -> None:
    tok = tiny_artifact.tokenizer
    vocab = vocab_from_hf_tokenizer(tok)
    assert vocab.pre == "smollm" and vocab.model == "gpt2"
    assert vocab.tokens[vocab.eos_id] == "<|im_end|>"
    rebuilt = hf_tokenizer_from_vocab(vocab)
    text = corpus()[:4000] + "\n<|im_start|>user\n12345 tabs\t\tand  spaces<|im_end|>\n"
    assert rebuilt(text).input_ids == tok(text, add_special_tokens=False).input_ids
    assert rebuilt.eos_token == "<|im_end|>"


def test_rebuilt_tokenizer_prepends_no_bos(tiny_artifact) -> None:
    rebuilt = hf_tokenizer_from_vocab(vocab_from_hf_tokenizer(tiny_artifact.tokenizer))
    assert rebuilt("hello").input_ids[0] != rebuilt.bos_token_id
