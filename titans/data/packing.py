"""Packing tokenized documents into flat, memory-mapped token files (``.bin`` + ``.json``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titans.data.corpus import SPLITS, Corpus, Document, DocumentHasher, fingerprint_documents
from titans.data.tokenizer import Tokenizer
from titans.io import atomic_save_json, atomic_write, cache_dir, safe_filename

logger = logging.getLogger(__name__)

BLOCK_CHARS = 1 << 22  # characters tokenized per batch: bounds memory, keeps batches parallel
FORMAT_VERSION = 1


@dataclass
class TokenFile:
    """A packed token stream on disk: every document's tokens followed by the EOS id.

    ``path`` is the ``<name>.bin`` file of raw little-endian ids (``<name>.json`` next to it
    describes it); ``tokens`` is a read-only 1-D ``np.memmap`` over it (a plain empty array
    when there are no tokens), ``uint16`` when the vocabulary fits, else ``uint32``;
    ``num_bytes`` is the UTF-8 size of the packed texts, for bits per byte.
    """

    path: Path
    tokens: np.ndarray
    num_bytes: int
    num_documents: int
    tokenizer: str

    @classmethod
    def open(cls, path: Path) -> TokenFile:
        """Open the token file ``path`` (``.bin``) described by its ``.json`` sidecar."""
        path = Path(path)
        meta = _read_sidecar(path)
        if meta is None:
            raise FileNotFoundError(f"{path} or its sidecar {path.with_suffix('.json')} is "
                                    "missing or unreadable; build it with pack_documents")
        dtype = np.dtype(meta["dtype"])
        expected = meta["num_tokens"] * dtype.itemsize
        if path.stat().st_size != expected:
            raise ValueError(f"{path} has {path.stat().st_size} bytes, its sidecar says "
                             f"{meta['num_tokens']} {dtype} tokens ({expected} bytes)")
        # np.memmap cannot map an empty file.
        tokens = (np.memmap(path, dtype=dtype, mode="r", shape=(meta["num_tokens"],))
                  if meta["num_tokens"] else np.empty(0, dtype=dtype))
        return cls(path, tokens, meta["num_bytes"], meta["num_documents"], meta["tokenizer"])

    def __len__(self) -> int:
        return len(self.tokens)


def pack_documents(docs: Iterable[Document], tokenizer: Tokenizer, path: Path) -> TokenFile:
    """Tokenize ``docs`` into the token file ``path`` (``<name>.bin`` + ``<name>.json``).

    Each document's tokens are followed by ``tokenizer.eos_id``. Documents are tokenized in
    blocks of about ``BLOCK_CHARS`` characters and appended to the file, so a corpus larger than
    memory works; the file is written atomically. If ``path`` already holds a token file with
    the same fingerprint (tokenizer name, vocabulary and model digest; every document's name
    and text) it is returned as is. ``docs`` may be a one-shot iterator, but then it can only be
    read once, so the file is always rebuilt.
    """
    path = Path(path)
    if path.suffix != ".bin":
        raise ValueError(f"token file path must end in .bin, got {path}")
    salt = (tokenizer.name, str(tokenizer.vocab_size), tokenizer.digest)
    if not isinstance(docs, Iterator):
        meta = _read_sidecar(path)
        if meta is not None and meta.get("fingerprint") == fingerprint_documents(docs, *salt):
            try:
                return TokenFile.open(path)
            except ValueError:
                logger.info("rebuilding %s: its size does not match its sidecar", path)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    hasher = DocumentHasher(*salt)
    num_tokens = num_bytes = num_documents = 0
    # The old sidecar goes first: a crash mid-way must not leave it describing a new .bin.
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_write(path) as f:
        for block in _blocks(docs):
            for doc, ids in zip(block, tokenizer.encode_batch([d.text for d in block]),
                                strict=True):
                hasher.update(doc)
                ids.append(tokenizer.eos_id)
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                num_tokens += len(ids)
                num_bytes += len(doc.text.encode("utf-8"))
                num_documents += 1
    atomic_save_json({"format_version": FORMAT_VERSION, "dtype": dtype.name,
                      "num_tokens": num_tokens, "num_bytes": num_bytes,
                      "num_documents": num_documents, "tokenizer": tokenizer.name,
                      "vocab_size": tokenizer.vocab_size, "fingerprint": hasher.hexdigest()},
                     path.with_suffix(".json"))
    return TokenFile.open(path)


def prepare_data(corpus: Corpus, tokenizer: Tokenizer,
                 cache: Path | None = None) -> dict[str, TokenFile]:
    """Pack every split of ``corpus`` with ``tokenizer`` into
    ``<cache>/tokens/<corpus>-<tokenizer>/<split>.bin`` (``cache`` defaults to
    :func:`~titans.io.cache_dir`), reusing files that are up to date; returns
    ``{"train", "validation", "test"}`` -> :class:`TokenFile`."""
    root = cache if cache is not None else cache_dir()
    folder = root / "tokens" / safe_filename(f"{corpus.name}-{tokenizer.name}")
    files = {}
    for split in SPLITS:
        logger.info("packing %s split of %s with %s", split, corpus.name, tokenizer.name)
        files[split] = pack_documents(corpus.split(split), tokenizer, folder / f"{split}.bin")
    return files


def _blocks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    """Consecutive runs of documents of about ``BLOCK_CHARS`` characters (at least one each)."""
    block: list[Document] = []
    chars = 0
    for doc in docs:
        block.append(doc)
        chars += len(doc.text)
        if chars >= BLOCK_CHARS:
            yield block
            block, chars = [], 0
    if block:
        yield block


def _read_sidecar(path: Path) -> dict | None:
    """The sidecar of token file ``path`` if it and the ``.bin`` exist and it is readable."""
    sidecar = path.with_suffix(".json")
    if not (path.exists() and sidecar.exists()):
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return meta if meta.get("format_version") == FORMAT_VERSION else None
