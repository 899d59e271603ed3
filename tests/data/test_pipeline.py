"""titans.data.pipeline: cache-safe source names, a data config's corpus, tokenizer and token
files, and its vocabulary size without training a BPE tokenizer."""

import numpy as np
import pytest

from titans.config_files import DataConfig
from titans.data import SPLITS, TokenFile, pipeline, train_bpe
from titans.data.pipeline import load_corpus, prepare, source_name, vocab_size

from .conftest import TEXTS


def test_source_names_are_safe_and_tell_places_apart(tmp_path):
    name = source_name(str(tmp_path / "my texts" / "a.jsonl"))
    assert name.startswith("a-") and len(name) == len("a-") + 8
    assert source_name(str(tmp_path / "my texts" / "a.jsonl")) == name  # stable
    assert source_name(str(tmp_path / "other" / "a.jsonl")) != name  # same stem, other place
    assert source_name("hf:user/some set").startswith("user_some_set-")


def test_a_data_config_gives_its_corpus_tokenizer_and_token_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(6):
        (folder / f"doc{i}.txt").write_text(" ".join(TEXTS) * 3)
    data = DataConfig(source=str(folder), tokenizer="bpe:300")
    corpus, tokenizer = load_corpus(data)
    assert corpus.name == source_name(str(folder)) and tokenizer.vocab_size == 300
    same, files = prepare(data)
    assert same.digest == tokenizer.digest and set(files) == set(SPLITS)
    assert all(isinstance(f, TokenFile) for f in files.values())
    assert files["train"].tokens.max() < 300 and np.issubdtype(files["train"].tokens.dtype,
                                                               np.integer)
    # A tokenizer file's vocabulary is read from the file.
    path = tmp_path / "tokenizer.json"
    train_bpe(TEXTS * 20, 290, path)
    assert vocab_size(DataConfig(source=str(folder), tokenizer=str(path))) == 290


@pytest.mark.parametrize(("spec", "size"), [("bpe", 8192), ("bpe:300", 300)])
def test_the_vocab_size_of_a_bpe_spec_needs_no_data(monkeypatch, spec, size):
    monkeypatch.setattr(pipeline, "prepare", lambda data: pytest.fail("prepared the data"))
    assert vocab_size(DataConfig(source="/nowhere", tokenizer=spec)) == size
