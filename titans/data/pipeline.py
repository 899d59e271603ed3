"""From a config file's ``data`` section (:class:`titans.config_files.DataConfig`) to data: the
corpus and tokenizer it names and the packed token files of every split, all cached, so every
command that names the same data config reads the same tokens.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from titans.config_files import DataConfig
from titans.data.corpus import Corpus, corpus_from_documents
from titans.data.dna import NUCLEOTIDE_TOKENIZER, NucleotideTokenizer
from titans.data.dna_tasks import DNA_PREFIX, dna_corpus
from titans.data.packing import TokenFile, prepare_data
from titans.data.sources import DEFAULT_SOURCE, HF_PREFIX, load_documents
from titans.data.stdlib import default_corpus
from titans.data.tokenizer import Tokenizer, bpe_vocab_size, load_tokenizer
from titans.io import safe_filename


def source_name(source: str) -> str:
    """A cache-safe name for a data source: its base name and a short hash of where it is."""
    if source.startswith(HF_PREFIX):
        stem = source[len(HF_PREFIX):]
    else:
        path = Path(source).expanduser().resolve()
        source, stem = str(path), path.stem
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return f"{safe_filename(stem)}-{digest}"


def load_corpus(data: DataConfig) -> tuple[Corpus, Tokenizer]:
    """The data config's corpus (split by document) and tokenizer (both cached). A source
    ``dna:<name>`` is a DNA corpus (:func:`titans.data.dna_tasks.dna_corpus`), and the tokenizer
    ``nucleotide`` the single-nucleotide one (:class:`titans.data.dna.NucleotideTokenizer`)."""
    if data.source == DEFAULT_SOURCE:
        corpus = default_corpus()
    elif data.source.startswith(DNA_PREFIX):
        corpus = dna_corpus(data.source)
    else:
        docs = load_documents(data.source, data.text_field)
        corpus = corpus_from_documents(source_name(data.source), docs)
    if data.tokenizer == NUCLEOTIDE_TOKENIZER:
        return corpus, NucleotideTokenizer()
    return corpus, load_tokenizer(data.tokenizer, corpus)


def prepare(data: DataConfig) -> tuple[Tokenizer, dict[str, TokenFile]]:
    """Corpus -> tokenizer -> packed token files for train/validation/test (all cached)."""
    corpus, tokenizer = load_corpus(data)
    return tokenizer, prepare_data(corpus, tokenizer)


def vocab_size(data: DataConfig) -> int:
    """The tokenizer's vocabulary size, without training it when the spec says it."""
    size = bpe_vocab_size(data.tokenizer)
    return size if size is not None else prepare(data)[0].vocab_size
