"""Documents from user files (text, JSONL, Parquet), folders and Hugging Face datasets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from titans.data.corpus import Document
from titans.io import atomic_write

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".json-lines")
HF_PREFIX = "hf:"
DEFAULT_SOURCE = "default"  # a data config's source naming the embedded corpus (titans.data.stdlib)


def load_documents(source: str | Path, text_field: str = "text") -> list[Document]:
    """Read documents from ``source``:

    - a ``.txt`` / ``.md`` file: one document named after the file;
    - a folder: every ``.txt`` / ``.md`` file below it, in sorted order, one document each, named
      by its path relative to the folder;
    - a ``.jsonl`` / ``.json-lines`` file: one JSON object per non-empty line, its ``text_field``
      is the text and its ``"name"`` (if a string) the name, else ``<file>:<line>``;
    - a ``.parquet`` file (needs ``pyarrow``): one document per row, same fields as JSONL;
    - ``"hf:<dataset>[:<config>][@<split>]"``: a split (default ``train``) of
      ``datasets.load_dataset(<dataset>, <config>)`` (needs ``datasets``; a hub name or a local
      dataset folder), same fields as JSONL.

    Texts are decoded as UTF-8. Bad input raises ``ValueError`` naming the file and record.
    """
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return _load_hf(source[len(HF_PREFIX):], text_field)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"document source {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"folder {path} contains no {'/'.join(TEXT_SUFFIXES)} files")
        return [Document(p.relative_to(path).as_posix(), _read_text(p)) for p in files]
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [Document(path.name, _read_text(path))]
    if suffix in JSONL_SUFFIXES:
        return _load_jsonl(path, text_field)
    if suffix == ".parquet":
        return _load_parquet(path, text_field)
    raise ValueError(
        f"cannot read documents from {path}: expected a folder, a {'/'.join(TEXT_SUFFIXES)}, "
        f"{'/'.join(JSONL_SUFFIXES)} or .parquet file, or '{HF_PREFIX}<dataset>[:<config>]"
        "[@<split>]'"
    )


def save_documents(docs: Iterable[Document], path: str | Path) -> None:
    """Write ``docs`` atomically as JSONL (``{"name", "text"}`` per line), readable by
    :func:`load_documents`."""
    with atomic_write(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"name": doc.name, "text": doc.text}, ensure_ascii=False) + "\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text: {e}") from None


def _record_document(record: Any, text_field: str, where: str) -> Document:
    """A document from one JSON-like record; ``where`` names the record in errors and is the
    default name."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with a {text_field!r} field, "
                         f"got {type(record).__name__}")
    if text_field not in record:
        raise ValueError(f"{where}: no field {text_field!r} (fields: {sorted(record)})")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    name = record.get("name")
    return Document(name if isinstance(name, str) else where, text)


def _load_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e})") from None
            docs.append(_record_document(record, text_field, where))
    return docs


def _load_parquet(path: Path, text_field: str) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs pyarrow: pip install 'titans-lm[parquet]'"
        ) from e
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {table.column_names})")
    columns = [text_field] + (["name"] if "name" in table.column_names else [])
    rows = table.select(columns).to_pylist()
    return [_record_document(row, text_field, f"{path.name}:{i}") for i, row in enumerate(rows)]


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``<dataset>[:<config>][@<split>]`` -> (dataset, config or None, split)."""
    rest, _, split = spec.partition("@")
    dataset, _, config = rest.partition(":")
    if not dataset or (":" in rest and not config) or ("@" in spec and not split):
        raise ValueError(f"bad dataset spec {HF_PREFIX}{spec!r}: expected "
                         f"'{HF_PREFIX}<dataset>[:<config>][@<split>]'")
    return dataset, config or None, split or "train"


def _load_hf(spec: str, text_field: str) -> list[Document]:
    dataset, config, split = _parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading {HF_PREFIX}{spec} needs the datasets package: pip install 'titans-lm[hf]'"
        ) from e
    data = datasets.load_dataset(dataset, config, split=split)
    if text_field not in data.column_names:
        raise ValueError(f"{HF_PREFIX}{spec}: no column {text_field!r} "
                         f"(columns: {data.column_names})")
    columns = [text_field] + (["name"] if "name" in data.column_names else [])
    return [_record_document(row, text_field, f"{dataset}:{split}:{i}")
            for i, row in enumerate(data.select_columns(columns))]
