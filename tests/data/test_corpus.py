"""Corpus, corpus_from_documents (a deterministic split by document) and document
fingerprints."""

import pytest

from titans.data import Corpus, Document, corpus_from_documents, fingerprint_documents

DOCS = [Document(f"doc{i}", f"text of document {i} " * (i + 1)) for i in range(100)]


def names(docs):
    return [d.name for d in docs]


def test_split_sizes_partition_and_order():
    corpus = corpus_from_documents("c", DOCS, validation_fraction=0.05, test_fraction=0.1)
    assert (len(corpus.train), len(corpus.validation), len(corpus.test)) == (85, 5, 10)
    all_names = names(corpus.train) + names(corpus.validation) + names(corpus.test)
    assert sorted(all_names) == sorted(names(DOCS))  # every document exactly once
    for split in ("train", "validation", "test"):  # each split keeps the input order
        positions = [names(DOCS).index(n) for n in names(corpus.split(split))]
        assert positions == sorted(positions)
    assert corpus.name == "c"


def test_split_is_deterministic_and_seeded():
    a = corpus_from_documents("c", DOCS, seed=1)
    assert a == corpus_from_documents("c", DOCS, seed=1)
    b = corpus_from_documents("c", DOCS, seed=2)
    assert names(a.test) != names(b.test)


def test_small_positive_fraction_gives_one_document():
    corpus = corpus_from_documents("c", DOCS[:5])
    assert (len(corpus.train), len(corpus.validation), len(corpus.test)) == (3, 1, 1)


def test_zero_fraction_gives_empty_split():
    corpus = corpus_from_documents("c", DOCS[:5], validation_fraction=0.0, test_fraction=0.0)
    assert corpus.train == DOCS[:5]
    assert corpus.validation == corpus.test == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"validation_fraction": -0.1}, "validation_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"validation_fraction": 0.5, "test_fraction": 0.5}, "training documents"),
])
def test_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        corpus_from_documents("c", DOCS[:10], **kwargs)


def test_too_few_documents_explains_split_by_document():
    with pytest.raises(ValueError, match="split a single large file"):
        corpus_from_documents("c", DOCS[:2])
    with pytest.raises(ValueError, match="no documents"):
        corpus_from_documents("c", [])


def test_corpus_split_by_name():
    corpus = Corpus("c", DOCS[:1], DOCS[1:2], DOCS[2:3], source="s", license="l")
    assert corpus.split("validation") == DOCS[1:2]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.split("dev")


def test_fingerprint_depends_on_names_texts_order_and_salt():
    base = fingerprint_documents(DOCS[:3], "tok")
    assert base == fingerprint_documents(list(DOCS[:3]), "tok")
    assert base == fingerprint_documents(iter(DOCS[:3]), "tok")
    variants = [
        fingerprint_documents(DOCS[:3], "tok2"),
        fingerprint_documents(DOCS[:3]),
        fingerprint_documents([DOCS[1], DOCS[0], DOCS[2]], "tok"),
        fingerprint_documents([DOCS[0], DOCS[1], Document("doc2", DOCS[2].text + "!")], "tok"),
        fingerprint_documents([DOCS[0], DOCS[1], Document("docX", DOCS[2].text)], "tok"),
        # Moving text across the boundary of two documents changes the fingerprint.
        fingerprint_documents([Document("a", "xy"), Document("b", "z")]),
    ]
    assert len({base, *variants}) == 7
    assert fingerprint_documents([Document("a", "x"), Document("b", "yz")]) != variants[-1]
