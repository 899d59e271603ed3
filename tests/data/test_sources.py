"""load_documents from text files, folders, JSONL, Parquet and (local) Hugging Face datasets;
save_documents round trips."""

import json
import sys

import pytest

from titans.data import Document, load_documents, save_documents
from titans.data.sources import _parse_hf_spec


def test_text_file_is_one_document(tmp_path):
    (tmp_path / "book.txt").write_text("Grüße\n\nsecond paragraph\n", encoding="utf-8")
    assert load_documents(tmp_path / "book.txt") == [
        Document("book.txt", "Grüße\n\nsecond paragraph\n")]
    (tmp_path / "notes.MD").write_text("# title")
    assert load_documents(str(tmp_path / "notes.MD")) == [Document("notes.MD", "# title")]


def test_folder_reads_text_files_sorted_recursively(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z")
    (tmp_path / "b" / "a.md").write_text("a")
    (tmp_path / "c.txt").write_text("c")
    (tmp_path / "skip.json").write_text("{}")
    assert load_documents(tmp_path) == [Document("b/a.md", "a"), Document("b/z.txt", "z"),
                                        Document("c.txt", "c")]


def test_empty_folder_and_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"no \.txt/\.md files"):
        load_documents(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / "missing.txt")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="cannot read documents"):
        load_documents(tmp_path / "data.csv")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_documents(tmp_path / "latin1.txt")


def test_jsonl_fields_names_and_blank_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first", "name": "one"}\n\n{"body": "x", "text": "second"}\n'
                    '{"text": "third", "name": 7}\n', encoding="utf-8")
    assert load_documents(path) == [Document("one", "first"), Document("docs.jsonl:3", "second"),
                                    Document("docs.jsonl:4", "third")]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "docs.json-lines"
    path.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"docs.json-lines:2: no field 'text'"):
        load_documents(path)
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"docs.json-lines:2: invalid JSON"):
        load_documents(path)
    path.write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="is int, not a string"):
        load_documents(path)
    path.write_text('["text"]\n')
    with pytest.raises(ValueError, match="expected an object"):
        load_documents(path)


def test_save_documents_round_trip(tmp_path):
    docs = [Document("a/b.txt", "line\nbreak 🐋"), Document("c", "")]
    save_documents(docs, tmp_path / "out.jsonl")
    assert load_documents(tmp_path / "out.jsonl") == docs


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["alpha", "beta"], "name": ["x", None]}), path)
    assert load_documents(path, text_field="content") == [Document("x", "alpha"),
                                                          Document("docs.parquet:1", "beta")]
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: \['content', 'name'\]\)"):
        load_documents(path)


@pytest.mark.parametrize(("spec", "parsed"), [
    ("wikitext", ("wikitext", None, "train")),
    ("wikitext:wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
    ("wikitext:wikitext-2-raw-v1@test", ("wikitext", "wikitext-2-raw-v1", "test")),
    ("/data/local@validation", ("/data/local", None, "validation")),
])
def test_parse_hf_spec(spec, parsed):
    assert _parse_hf_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["hf:", "hf:name:", "hf:name@", "hf::config"])
def test_bad_hf_spec(spec):
    with pytest.raises(ValueError, match="bad dataset spec"):
        load_documents(spec)


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"titans-lm\[hf\]"):
        load_documents("hf:anything")


def test_hf_local_dataset_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        json.dumps({"text": "hello", "name": "h"}) + "\n" + json.dumps({"text": "world"}) + "\n")
    (folder / "test.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    assert load_documents(f"hf:{folder}") == [Document("h", "hello"),
                                              Document(f"{folder}:train:1", "world")]
    assert load_documents(f"hf:{folder}@test") == [Document(f"{folder}:test:0", "held out")]
    with pytest.raises(ValueError, match="no column 'body'"):
        load_documents(f"hf:{folder}", text_field="body")
