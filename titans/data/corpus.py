"""Documents, corpora split by document, and content fingerprints that key the caches."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass

from titans.checks import check_number

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Document:
    """One document: a unique ``name`` (file, speech, dataset row) and its full ``text``."""

    name: str
    text: str


@dataclass
class Corpus:
    """Documents split into train / validation / test, with where they came from and their
    licence. A document is never cut across splits, so held-out text is unseen in training."""

    name: str
    train: list[Document]
    validation: list[Document]
    test: list[Document]
    source: str
    license: str

    def split(self, name: str) -> list[Document]:
        """The documents of split ``name``: ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def corpus_from_documents(name: str, docs: list[Document], validation_fraction: float = 0.02,
                          test_fraction: float = 0.02, seed: int = 0) -> Corpus:
    """Split ``docs`` by document into a :class:`Corpus`.

    A seeded shuffle picks ``round(fraction * len(docs))`` documents for validation and for test
    (at least one when the fraction is positive); the rest is train. Each split keeps the input
    order, and the same documents, fractions and seed always give the same split.
    """
    for field, value in (("validation_fraction", validation_fraction),
                         ("test_fraction", test_fraction)):
        check_number(field, value, "in [0, 1)", lambda f: 0 <= f < 1)
    if not docs:
        raise ValueError(f"corpus {name!r} has no documents")
    n = len(docs)
    n_val = max(1, round(validation_fraction * n)) if validation_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise ValueError(
            f"corpus {name!r}: {n} documents cannot give {n_val} validation and {n_test} test "
            "documents and still leave training documents; the split is by document, so split "
            "a single large file into several (e.g. a folder of .txt files) or lower the fractions"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    test_idx = set(order[n_val:n_val + n_test])
    return Corpus(
        name=name,
        train=[d for i, d in enumerate(docs) if i not in val_idx and i not in test_idx],
        validation=[d for i, d in enumerate(docs) if i in val_idx],
        test=[d for i, d in enumerate(docs) if i in test_idx],
        source="user-supplied documents",
        license="unknown (user-supplied)",
    )


class DocumentHasher:
    """Incremental sha256 over documents' names and texts, salted with ``salt`` strings (e.g. a
    tokenizer's identity). Two document sequences hash alike only if equal and in equal order."""

    def __init__(self, *salt: str) -> None:
        self._digest = hashlib.sha256()
        for part in salt:
            self._update(part.encode("utf-8"))

    def _update(self, data: bytes) -> None:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently.
        self._digest.update(len(data).to_bytes(8, "little"))
        self._digest.update(data)

    def update(self, doc: Document) -> None:
        """Add one document."""
        self._update(doc.name.encode("utf-8"))
        self._update(doc.text.encode("utf-8"))

    def hexdigest(self) -> str:
        """Hex sha256 of everything added so far."""
        return self._digest.hexdigest()


def fingerprint_documents(docs: Iterable[Document], *salt: str) -> str:
    """Hex sha256 of ``docs`` (names and texts, in order) and ``salt`` (see
    :class:`DocumentHasher`)."""
    hasher = DocumentHasher(*salt)
    for doc in docs:
        hasher.update(doc)
    return hasher.hexdigest()
