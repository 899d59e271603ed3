"""Tokenizers: byte-level BPE (exact round trip, EOS never from text, cached training),
tokenizer.json and SentencePiece files, and the Mistral model fetched from PyPI."""

import hashlib
import json
import re
import zipfile

import pytest

from titans.data import (
    EOS,
    Corpus,
    DataUnavailableError,
    Document,
    Tokenizer,
    load_tokenizer,
    train_bpe,
)
from titans.data import tokenizer as tokenizer_module

from .conftest import TEXTS

UNICODE = "naïve café — Grüße, 日本語 🐋🌊 Ω≈ç√\n\n\ttabs  double  spaces\r\n end "


def tiny_corpus(name="tiny", texts=TEXTS):
    train = [Document(f"d{i}", t) for i, t in enumerate(texts * 10)]
    return Corpus(name, train, [], [], source="test", license="test")


def test_bpe_round_trip_is_exact(bpe):
    for text in [*TEXTS, UNICODE, "", " ", "unseen: ꙮ𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f"]:
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_batch([UNICODE, ""]) == [bpe.encode(UNICODE), []]


def test_bpe_vocab_eos_and_merges(bpe):
    assert (bpe.name, bpe.vocab_size) == ("bpe300", 300)
    assert bpe.decode([bpe.eos_id]) == EOS
    ids = bpe.encode(TEXTS[0])
    assert len(ids) < 0.8 * len(TEXTS[0].encode())  # merges learned: fewer tokens than bytes
    assert all(0 <= i < bpe.vocab_size for i in bpe.encode(UNICODE))


def test_eos_never_produced_by_text(bpe):
    text = f"a literal {EOS} in the text{EOS}"
    ids = bpe.encode(text)
    assert bpe.eos_id not in ids
    assert bpe.decode(ids) == text
    assert bpe.eos_id not in [i for t in TEXTS for i in bpe.encode(t)]


def test_bpe_saved_and_reloaded(bpe, tmp_path):
    path = tmp_path / "tok.json"
    trained = train_bpe(TEXTS * 20, 280, path)
    loaded = Tokenizer.from_file(path)
    assert loaded.name == "tok" and loaded.digest == trained.digest
    assert loaded.encode(UNICODE) == trained.encode(UNICODE)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # atomic: no temp file left
    # A tokenizer.json given by path.
    assert load_tokenizer(str(path)).encode(UNICODE) == trained.encode(UNICODE)


def test_bpe_vocab_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must exceed the 256 byte tokens"):
        train_bpe(TEXTS, 256, tmp_path / "t.json")


def test_load_bpe_trains_once_per_corpus_and_vocab(tmp_path, monkeypatch):
    calls = []
    real_train = tokenizer_module.train_bpe

    def spy(texts, vocab_size, path):
        calls.append(vocab_size)
        return real_train(texts, vocab_size, path)

    monkeypatch.setattr(tokenizer_module, "train_bpe", spy)
    corpus = tiny_corpus()
    first = load_tokenizer("bpe:300", corpus, cache=tmp_path)
    again = load_tokenizer("bpe:300", corpus, cache=tmp_path)
    assert calls == [300]
    assert again.digest == first.digest and again.name == "bpe300"
    load_tokenizer("bpe:290", corpus, cache=tmp_path)
    load_tokenizer("bpe:300", tiny_corpus(texts=TEXTS[:3]), cache=tmp_path)  # other documents
    assert calls == [300, 290, 300]
    assert len(list((tmp_path / "tokenizers").iterdir())) == 3
    # "bpe" means 8192 ids (a tiny corpus learns fewer merges, so the file name shows it).
    load_tokenizer("bpe", corpus, cache=tmp_path)
    assert calls[-1] == 8192


@pytest.mark.parametrize(("spec", "size"), [("bpe", 8192), ("bpe:300", 300), ("bpe:x", None),
                                            ("mistral", None), ("bpe300.json", None)])
def test_bpe_vocab_size_reads_the_spec(spec, size):
    assert tokenizer_module.bpe_vocab_size(spec) == size


@pytest.mark.parametrize(("spec", "kwargs", "error", "match"), [
    ("bpe", {}, ValueError, "pass corpus="),
    ("bpe:x", {}, ValueError, "unknown tokenizer"),
    ("gpt2", {}, ValueError, "unknown tokenizer 'gpt2'"),
    ("missing.json", {}, FileNotFoundError, "missing.json does not exist"),
])
def test_bad_specs(spec, kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        load_tokenizer(spec, cache=tmp_path, **kwargs)


def test_tokenizer_json_without_eos(tmp_path, bpe):
    path = tmp_path / "t.json"
    data = json.loads(bpe._backend.to_str())
    data["added_tokens"] = []
    del data["model"]["vocab"][EOS]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="none of the end-of-sequence tokens"):
        Tokenizer.from_file(path)


def test_sentencepiece_model_file(sp_model_path):
    tok = load_tokenizer(str(sp_model_path))
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("tiny", 100, 2)
    ids = tok.encode(TEXTS[0])
    assert tok.decode(ids) == TEXTS[0]
    assert tok.eos_id not in ids and tok.eos_id not in tok.encode("text with </s> in it")
    assert tok.encode_batch([TEXTS[0], TEXTS[1]]) == [ids, tok.encode(TEXTS[1])]


def fake_wheel(folder, model_path):
    """A mistral-common wheel holding ``model_path`` as its tokenizer.model.v1."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "mistral_common-1.13.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr(tokenizer_module.MISTRAL_MEMBER, model_path.read_bytes())
    return hashlib.sha256(model_path.read_bytes()).hexdigest()


def test_mistral_from_wheel_in_cache(tmp_path, sp_model_path, monkeypatch):
    folder = tmp_path / "tokenizers" / "mistral-common-1.13.1"
    monkeypatch.setattr(tokenizer_module, "MISTRAL_SHA256", fake_wheel(folder, sp_model_path))
    tok = load_tokenizer("mistral", cache=tmp_path)
    assert tok.name == "mistral" and tok.vocab_size == 100
    assert (folder / "tokenizer.model.v1").read_bytes() == sp_model_path.read_bytes()
    (folder / "mistral_common-1.13.1-py3-none-any.whl").unlink()  # the extracted model suffices
    assert load_tokenizer("mistral", cache=tmp_path).encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_mistral_wrong_sha_is_rejected(tmp_path, sp_model_path):
    folder = tmp_path / "tokenizers" / "mistral-common-1.13.1"
    fake_wheel(folder, sp_model_path)
    with pytest.raises(ValueError, match="delete the wheel"):
        load_tokenizer("mistral", cache=tmp_path)
    assert not (folder / "tokenizer.model.v1").exists()


def test_mistral_offline_explains_manual_download(tmp_path, monkeypatch):
    # pip without config, index or links behaves as on a machine without network.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(DataUnavailableError) as info:
        load_tokenizer("mistral", cache=tmp_path)
    message = str(info.value)
    folder = tmp_path / "tokenizers" / "mistral-common-1.13.1"
    assert "mistral-common==1.13.1" in message and str(folder) in message
    assert str(folder / "tokenizer.model.v1") in message
    assert tokenizer_module.MISTRAL_SHA256 in message


@pytest.mark.slow
def test_mistral_downloaded_from_pypi(tmp_path):
    try:
        tok = load_tokenizer("mistral", cache=tmp_path)
    except DataUnavailableError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    assert (tok.vocab_size, tok.eos_id) == (32000, 2)
    ids = tok.encode("Call me Ishmael.")
    assert tok.decode(ids) == "Call me Ishmael." and tok.eos_id not in ids


@pytest.mark.parametrize("text", ['{"hello": 1}', "not json", ""])
def test_a_file_that_is_no_tokenizer_is_named_in_one_line(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} is not a readable tokenizer"):
        Tokenizer.from_file(path)


def test_a_damaged_cached_tokenizer_says_to_delete_it_and_is_then_trained_again(tmp_path):
    corpus = tiny_corpus()
    first = load_tokenizer("bpe:300", corpus, cache=tmp_path)
    (cached,) = (tmp_path / "tokenizers").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # cut, as by a full disk
    with pytest.raises(ValueError, match=f"^cached tokenizer damaged: {re.escape(str(cached))}"
                                         ".*delete it, and it is trained again"):
        load_tokenizer("bpe:300", corpus, cache=tmp_path)
    cached.unlink()
    # BPE training is deterministic: the same documents give the same tokenizer back.
    assert load_tokenizer("bpe:300", corpus, cache=tmp_path).digest == first.digest
