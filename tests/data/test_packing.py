"""pack_documents / TokenFile / prepare_data: the packed stream is every document's tokens plus
EOS, streamed in blocks, described by a sidecar, reused only when nothing changed."""

import json
import os

import numpy as np
import pytest

from titans.data import Corpus, Document, TokenFile, pack_documents, prepare_data
from titans.data import packing as packing_module

from .conftest import TEXTS

DOCS = [Document(f"doc{i}", text) for i, text in enumerate(TEXTS)]


class CountingTokenizer:
    """Wraps a tokenizer, counting encode_batch calls and texts (a spy)."""

    def __init__(self, inner, vocab_size=None):
        self.inner, self.calls = inner, []
        self.name, self.eos_id, self.digest = inner.name, inner.eos_id, inner.digest
        self.vocab_size = vocab_size or inner.vocab_size

    def encode_batch(self, texts):
        self.calls.append(len(texts))
        return self.inner.encode_batch(texts)


def expected_stream(docs, tok):
    return [i for d in docs for i in [*tok.encode(d.text), tok.eos_id]]


def test_tokens_are_documents_each_followed_by_eos(bpe, tmp_path):
    packed = pack_documents(DOCS, bpe, tmp_path / "train.bin")
    assert packed.tokens.dtype == np.uint16 and isinstance(packed.tokens, np.memmap)
    assert packed.tokens.tolist() == expected_stream(DOCS, bpe)
    assert len(packed) == len(expected_stream(DOCS, bpe))
    assert packed.num_documents == 4 and packed.tokenizer == "bpe300"
    assert packed.num_bytes == sum(len(d.text.encode("utf-8")) for d in DOCS)
    # Cut at the EOS ids, the stream decodes back to the documents.
    stream = packed.tokens.tolist()
    cuts = [i for i, t in enumerate(stream) if t == bpe.eos_id]
    starts = [0] + [c + 1 for c in cuts[:-1]]
    assert [bpe.decode(stream[a:b]) for a, b in zip(starts, cuts, strict=True)] == TEXTS


def test_sidecar_and_reopen(bpe, tmp_path):
    path = tmp_path / "train.bin"
    packed = pack_documents(DOCS, bpe, path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == len(packed)
    assert meta["num_bytes"] == packed.num_bytes and meta["num_documents"] == 4
    assert meta["tokenizer"] == "bpe300" and len(meta["fingerprint"]) == 64
    assert path.stat().st_size == 2 * len(packed)
    reopened = TokenFile.open(path)
    assert reopened.tokens.tolist() == packed.tokens.tolist()
    assert (reopened.num_bytes, reopened.num_documents) == (packed.num_bytes, 4)
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "train.json"]  # no temp files


def test_same_inputs_reuse_the_file(bpe, tmp_path):
    path = tmp_path / "train.bin"
    pack_documents(DOCS, bpe, path)
    mtime = path.stat().st_mtime_ns
    spy = CountingTokenizer(bpe)
    again = pack_documents(list(DOCS), spy, path)
    assert spy.calls == [] and path.stat().st_mtime_ns == mtime
    assert again.tokens.tolist() == expected_stream(DOCS, bpe)


@pytest.mark.parametrize("change", ["text", "name", "order", "fewer", "tokenizer"])
def test_changed_inputs_rebuild(bpe, tmp_path, change):
    path = tmp_path / "train.bin"
    pack_documents(DOCS, bpe, path)
    docs, tok = list(DOCS), CountingTokenizer(bpe)
    if change == "text":
        docs[1] = Document(docs[1].name, docs[1].text + " more")
    elif change == "name":
        docs[1] = Document("renamed", docs[1].text)
    elif change == "order":
        docs.reverse()
    elif change == "fewer":
        docs.pop()
    else:
        tok.digest = "another model"
    packed = pack_documents(docs, tok, path)
    assert tok.calls and packed.tokens.tolist() == expected_stream(docs, bpe)


def test_one_shot_iterator_is_packed(bpe, tmp_path):
    packed = pack_documents(iter(DOCS), bpe, tmp_path / "x.bin")
    assert packed.tokens.tolist() == expected_stream(DOCS, bpe)
    assert TokenFile.open(tmp_path / "x.bin").num_documents == 4


def test_streams_in_blocks(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(packing_module, "BLOCK_CHARS", 300)
    spy = CountingTokenizer(bpe)
    docs = DOCS * 5
    packed = pack_documents(docs, spy, tmp_path / "x.bin")
    assert len(spy.calls) > 5 and sum(spy.calls) == len(docs)
    assert packed.tokens.tolist() == expected_stream(docs, bpe)


def test_large_vocabulary_uses_uint32(bpe, tmp_path):
    packed = pack_documents(DOCS, CountingTokenizer(bpe, vocab_size=70_000), tmp_path / "x.bin")
    assert packed.tokens.dtype == np.uint32
    assert packed.tokens.tolist() == expected_stream(DOCS, bpe)
    assert TokenFile.open(tmp_path / "x.bin").tokens.dtype == np.uint32


def test_no_documents_gives_empty_file(bpe, tmp_path):
    packed = pack_documents([], bpe, tmp_path / "empty.bin")
    assert len(packed) == 0 and packed.num_documents == 0
    assert len(TokenFile.open(tmp_path / "empty.bin")) == 0


def test_errors(bpe, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.bin"):
        pack_documents(DOCS, bpe, tmp_path / "x.tokens")
    with pytest.raises(FileNotFoundError, match="build it with pack_documents"):
        TokenFile.open(tmp_path / "missing.bin")
    path = tmp_path / "x.bin"
    pack_documents(DOCS, bpe, path)
    with open(path, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="its sidecar says"):
        TokenFile.open(path)
    # pack_documents notices the damaged file and rebuilds it.
    assert pack_documents(DOCS, bpe, path).tokens.tolist() == expected_stream(DOCS, bpe)


def test_prepare_data_packs_every_split(bpe, tmp_path):
    corpus = Corpus("my corpus", DOCS[:2], DOCS[2:3], DOCS[3:], source="s", license="l")
    files = prepare_data(corpus, bpe, cache=tmp_path)
    assert list(files) == ["train", "validation", "test"]
    folder = tmp_path / "tokens" / "my_corpus-bpe300"
    for split, docs in [("train", DOCS[:2]), ("validation", DOCS[2:3]), ("test", DOCS[3:])]:
        assert files[split].path == folder / f"{split}.bin"
        assert files[split].tokens.tolist() == expected_stream(docs, bpe)
        assert files[split].num_documents == len(docs)
