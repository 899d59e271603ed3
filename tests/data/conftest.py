"""Shared fixtures of the data tests: small texts and tokenizers trained on them in a moment."""

import pytest

from titans.data import train_bpe

TEXTS = [
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money "
    "in my purse, and nothing particular to interest me on shore, I thought I would sail about.",
    "Fellow-citizens of the Senate and House of Representatives: the state of the Union is "
    "strong, and the abundant fruits of another year have blessed our country with plenty.",
    "Unicode: naïve café, Grüße, 日本語のテキスト, emoji 🐋🌊, tabs\tand\nnew lines\r\n.",
    "Numbers 1790, 2021 and 3.14159; punctuation — “quotes” ‘single’ … (brackets) [x] {y}.",
]


@pytest.fixture(scope="session")
def bpe(tmp_path_factory):
    """Byte-level BPE with 300 ids trained on TEXTS."""
    return train_bpe(TEXTS * 20, 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory):
    """A SentencePiece model with 100 pieces trained on TEXTS (BOS 1, EOS 2, unknown 0)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    prefix = tmp_path_factory.mktemp("sp") / "tiny"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 20), model_prefix=str(prefix), vocab_size=100,
        model_type="bpe", character_coverage=0.98, hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model")
