"""DNA data sets: the pre-training corpus, the offline classification task, and the
GenomicsBenchmarks folders of the paper's Table 4.

- :func:`dm3_upstream_corpus`: the 2 kb upstream regions of the Drosophila melanogaster (dm3)
  RefSeq genes, ``extdata/dm3_upstream2000.fa.gz`` of the Debian package ``r-bioc-biostrings``
  (UCSC ``upstream2000.fa.gz``); the data config's ``source: dna:dm3-upstream``.
- :func:`coding_windows`: coding vs non-coding windows of the annotated Leptospira kirschneri
  genome in Debian ``any2fasta-examples`` (NCBI RefSeq contigs with their CDS annotation).
- :func:`load_genomic_benchmark`: a GenomicsBenchmarks data set as its ``download_dataset``
  writes it, ``<dataset>/{train,test}/<class>/*.txt`` (one sequence per file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titans.checks import check_int, check_number
from titans.data.corpus import Corpus, Document
from titans.data.dna import (
    DebianFile,
    SequenceRecord,
    check_bases,
    debian_file,
    read_fasta,
    read_genbank,
)

DNA_PREFIX = "dna:"  # a data config's source naming a DNA corpus: dna:<name>
DEBIAN_POOL = "http://deb.debian.org/debian/pool/main"
DM3_UPSTREAM = DebianFile(
    url=f"{DEBIAN_POOL}/r/r-bioc-biostrings/r-bioc-biostrings_2.66.0-1_amd64.deb",
    sha256="94ba289411284aaf42501357cac6f50b559d23d5f9c1300fa1e4f2e91cd4fa12",
    member="./usr/lib/R/site-library/Biostrings/extdata/dm3_upstream2000.fa.gz",
    member_sha256="78076ae22e0084cfb4d6775b000ed9d8fadcefe2469aacce76b78f5a427a08f4",
)
LEPTOSPIRA = DebianFile(
    url=f"{DEBIAN_POOL}/a/any2fasta/any2fasta-examples_0.4.2-2_all.deb",
    sha256="7345afc5878efe867285622415a0ba70b9c32bbd57849df63c4600217c4502f9",
    member="./usr/share/doc/any2fasta/examples/test.gbk.gz",
    member_sha256="321919e452f88665a597b5c31813b7b99ab0f60ce3706e25eadd2309f9e3d93b",
)
DM3_SOURCE = (f"Debian r-bioc-biostrings 2.66.0-1 ({DM3_UPSTREAM.url}): {DM3_UPSTREAM.member}, "
              "UCSC dm3 upstream2000.fa.gz (2 kb upstream of each RefSeq transcript)")
DM3_LICENSE = "UCSC dm3 sequence data (freely usable); the package: Artistic-2.0"
SPLITS = ("train", "validation", "test")
CODING_CLASSES = ("non-coding", "coding")

# "chr2L:16764737-16766736" in a dm3 upstream header (a start before the chromosome is < 0)
_REGION = re.compile(r"(\S+):(-?\d+)-(-?\d+)")


def dm3_upstream_corpus(validation_fraction: float = 0.02, test_fraction: float = 0.02,
                        seed: int = 0, cache: Path | None = None) -> Corpus:
    """The dm3 upstream regions as a :class:`~titans.data.Corpus`, one document per region.

    The file's 26,454 records hold 17,286 distinct sequences (alternative transcripts of a
    gene share a promoter region): each distinct sequence is kept once, the first record's
    name naming it. Regions that overlap on the genome (either strand) form a cluster, and
    whole clusters go to one split, so no base of a held-out region was seen in training:
    a seeded shuffle of the clusters fills validation, then test, up to the fractions of the
    regions, and the rest is train.
    """
    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        check_number(name, value, "in [0, 0.5)", lambda f: 0 <= f < 0.5)
    path = debian_file(DM3_UPSTREAM, cache)
    records = _distinct(read_fasta(path))
    clusters = overlap_clusters([_region(r, path) for r in records])
    rng = np.random.default_rng(seed)
    split_of = assign_splits(np.bincount(clusters), (validation_fraction, test_fraction),
                             rng)[clusters]
    docs = [Document(r.name, r.sequence) for r in records]
    return Corpus(name="dm3-upstream2000",
                  train=[d for d, s in zip(docs, split_of, strict=True) if s == 0],
                  validation=[d for d, s in zip(docs, split_of, strict=True) if s == 1],
                  test=[d for d, s in zip(docs, split_of, strict=True) if s == 2],
                  source=DM3_SOURCE, license=DM3_LICENSE)


DNA_CORPORA = {"dm3-upstream": dm3_upstream_corpus}


def dna_corpus(source: str, cache: Path | None = None) -> Corpus:
    """The corpus of a data config's ``source: dna:<name>`` (:data:`DNA_CORPORA`)."""
    name = source[len(DNA_PREFIX):]
    if name not in DNA_CORPORA:
        raise ValueError(f"unknown DNA corpus {source!r}; known: "
                         f"{[DNA_PREFIX + n for n in DNA_CORPORA]}")
    return DNA_CORPORA[name](cache=cache)


def _distinct(records: list[SequenceRecord]) -> list[SequenceRecord]:
    """The first record of each distinct sequence, in file order."""
    seen: set[str] = set()
    kept = []
    for record in records:
        if record.sequence not in seen:
            seen.add(record.sequence)
            kept.append(record)
    return kept


def _region(record: SequenceRecord, path: Path) -> tuple[str, int, int]:
    match = _REGION.fullmatch(record.description)
    if match is None:
        raise ValueError(f"{path}: record {record.name!r} has no 'chrom:start-end' region in "
                         f"its header (got {record.description!r})")
    return match.group(1), int(match.group(2)), int(match.group(3))


def assign_splits(sizes: np.ndarray, fractions: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each of ``len(sizes)`` units (regions,
    genome blocks): in a ``rng`` shuffle of the units, validation takes units until it holds
    ``fractions[0]`` of the total size, then test until ``fractions[1]``; the rest is train."""
    split_of = np.zeros(len(sizes), dtype=np.int64)
    limits = np.cumsum(fractions) * sizes.sum()
    done = 0
    for unit in rng.permutation(len(sizes)):
        split_of[unit] = 1 if done < limits[0] else 2 if done < limits[1] else 0
        done += sizes[unit]
    return split_of


def overlap_clusters(regions: list[tuple[str, int, int]]) -> np.ndarray:
    """Cluster ids ([len(regions)], 0-based) of inclusive ``(chrom, start, end)`` regions:
    regions that overlap, directly or through others, share a cluster."""
    clusters = np.empty(len(regions), dtype=np.int64)
    cluster, chrom, end = -1, None, -1
    for i in sorted(range(len(regions)), key=lambda i: regions[i]):
        c, s, e = regions[i]
        if c != chrom or s > end:
            cluster, chrom, end = cluster + 1, c, e
        end = max(end, e)
        clusters[i] = cluster
    return clusters


# --------------------------------------------------------------------------------------------
# Classification data


@dataclass
class LabelledSequences:
    """DNA sequences with class labels: ``sequences`` (uppercase strings), ``labels`` (int64
    [n], indices into ``classes``) and ``classes`` (class names)."""

    sequences: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.labels):
            raise ValueError(f"{len(self.sequences)} sequences but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.sequences)

    def majority_accuracy(self) -> float:
        """Accuracy of always answering the most frequent class (the floor to beat)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return float(counts.max() / counts.sum()) if len(self) else float("nan")

    def gc_fraction(self) -> np.ndarray:
        """Each sequence's fraction of G and C bases ([n] float64; N counts as a base)."""
        return np.array([(s.count("G") + s.count("C")) / len(s) for s in self.sequences])


def gc_threshold_accuracy(train: LabelledSequences, held_out: LabelledSequences) -> float:
    """Accuracy on ``held_out`` of the best rule "class 1 iff the GC fraction exceeds t" (or
    its reverse), with t and the direction chosen on ``train``: what base composition alone
    gets on a two-class task (the baseline a sequence model must beat to have learnt more)."""
    if len(train.classes) != 2:
        raise ValueError(f"the GC-threshold baseline needs two classes, got {len(train.classes)}")
    gc, labels = train.gc_fraction(), train.labels
    thresholds = np.unique(np.quantile(gc, np.linspace(0, 1, 201)))
    above = (gc[None, :] > thresholds[:, None]) == labels[None, :].astype(bool)
    scores = above.mean(1)  # [thresholds]; the reverse rule scores 1 - this
    best = int(np.argmax(np.maximum(scores, 1 - scores)))
    reverse = scores[best] < 0.5
    predicted = (held_out.gc_fraction() > thresholds[best]) != reverse
    return float(np.mean(predicted == held_out.labels.astype(bool)))


@dataclass(frozen=True)
class Window:
    """Where a window of the genome lies: ``record`` index, 0-based ``start``, ``block`` (the
    genome block that holds it, whose split is its split)."""

    record: int
    start: int
    block: int


def coding_windows(records: list[SequenceRecord], length: int = 200, stride: int = 50,
                   block_len: int = 20000, fractions: tuple[float, float] = (0.1, 0.1),
                   seed: int = 0) -> tuple[dict[str, LabelledSequences], dict[str, list[Window]]]:
    """Coding vs non-coding windows of an annotated genome, split by genome block.

    Labels: a window of ``length`` bases is *coding* (1) if every base lies in an annotated CDS
    (either strand; the window may start in any frame), *non-coding* (0) if no base does; mixed
    windows are left out. Splits: every record is cut into consecutive blocks of ``block_len``
    bases (the last one shorter); a seeded shuffle of the blocks gives validation, then test,
    up to ``fractions`` of the bases, and the rest to train. Windows start every ``stride``
    bases and lie wholly inside one block, so overlapping windows never straddle two splits
    (nor, as a block boundary cuts a gene, does one CDS's interior). Each split is then
    balanced by a seeded subsample of its larger class.

    Returns ``({split: LabelledSequences}, {split: [Window]})``, the windows in the order of
    the sequences (for checking where each came from).
    """
    check_int("length", length, 1)
    check_int("stride", stride, 1)
    check_int("block_len", block_len, length)
    if len(fractions) != 2 or min(fractions) < 0 or sum(fractions) >= 1:
        raise ValueError(f"fractions (validation, test) must be >= 0 and sum below 1, got "
                         f"{fractions}")
    blocks = [(r, start, min(start + block_len, len(rec.sequence)))
              for r, rec in enumerate(records) for start in range(0, len(rec.sequence), block_len)]
    rng = np.random.default_rng(seed)
    split_of = assign_splits(np.array([end - start for _, start, end in blocks]), fractions,
                             rng)
    coding_counts = [_coding_prefix(rec) for rec in records]
    found: dict[int, list[list[Window]]] = {s: [[], []] for s in range(3)}
    for b, (r, block_start, block_end) in enumerate(blocks):
        starts = np.arange(block_start, block_end - length + 1, stride)
        covered = coding_counts[r][starts + length] - coding_counts[r][starts]
        for label, hit in ((0, covered == 0), (1, covered == length)):
            found[split_of[b]][label] += [Window(r, int(s), b) for s in starts[hit]]
    data, where = {}, {}
    for s, split in enumerate(SPLITS):
        negative, positive = found[s]
        n = min(len(negative), len(positive))
        if n == 0:
            missing = CODING_CLASSES[1] if not positive else CODING_CLASSES[0]
            raise ValueError(f"the {split} split has no {missing} windows of {length} bases: "
                             "use shorter windows or smaller blocks")
        chosen = [(w, label) for label, pool in ((0, negative), (1, positive))
                  for w in (pool[i] for i in sorted(rng.choice(len(pool), n, replace=False)))]
        order = rng.permutation(len(chosen))
        chosen = [chosen[i] for i in order]
        where[split] = [w for w, _ in chosen]
        data[split] = LabelledSequences(
            [records[w.record].sequence[w.start:w.start + length] for w, _ in chosen],
            np.array([label for _, label in chosen], dtype=np.int64), CODING_CLASSES)
    return data, where


def _coding_prefix(record: SequenceRecord) -> np.ndarray:
    """Prefix sums [len + 1] of a record's CDS mask: bases in [a, b) coding = p[b] - p[a]."""
    mask = np.zeros(len(record.sequence), dtype=np.int64)
    for feature in record.cds:
        for start, end in feature.parts:
            mask[start:end] = 1
    return np.concatenate([[0], np.cumsum(mask)])


def leptospira_coding_task(length: int = 200, stride: int = 50, block_len: int = 20000,
                           seed: int = 0, cache: Path | None = None
                           ) -> dict[str, LabelledSequences]:
    """:func:`coding_windows` of the Leptospira kirschneri str. H1 draft genome (75 RefSeq
    contigs, 4.59 Mbp, 4,162 CDS) from Debian ``any2fasta-examples`` (fetched and cached)."""
    return coding_windows(read_genbank(debian_file(LEPTOSPIRA, cache)), length, stride,
                          block_len, seed=seed)[0]


def load_genomic_benchmark(folder: str | Path, validation_fraction: float = 0.1,
                           seed: int = 0) -> dict[str, LabelledSequences]:
    """A GenomicsBenchmarks data set as ``genomic_benchmarks.loc2seq.download_dataset`` leaves
    it (``~/.genomic_benchmarks/<dataset>/``): ``train/<class>/*.txt`` and
    ``test/<class>/*.txt``, one sequence per file. Classes are the sorted class folder names
    (label = index), as the benchmark's own loaders number them. The benchmark has no
    validation split: a seeded ``validation_fraction`` of train is held out as one."""
    folder = Path(folder).expanduser()
    check_number("validation_fraction", validation_fraction, "in [0, 1)",
                 lambda f: 0 <= f < 1)
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise ValueError(f"{folder} is not a GenomicsBenchmarks data set: expected "
                         "train/<class>/*.txt and test/<class>/*.txt (as download_dataset "
                         "writes them)")
    classes = tuple(sorted(p.name for p in (folder / "train").iterdir() if p.is_dir()))
    test_classes = tuple(sorted(p.name for p in (folder / "test").iterdir() if p.is_dir()))
    if len(classes) < 2 or classes != test_classes:
        raise ValueError(f"{folder}: train has classes {list(classes)} and test "
                         f"{list(test_classes)}; expected the same two or more")
    splits = {split: _read_class_folders(folder / split, classes) for split in ("train", "test")}
    train = splits["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = round(validation_fraction * len(train))
    parts = {"validation": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}
    return {**{name: LabelledSequences([train.sequences[i] for i in idx], train.labels[idx],
                                       classes) for name, idx in parts.items()},
            "test": splits["test"]}


def _read_class_folders(root: Path, classes: tuple[str, ...]) -> LabelledSequences:
    sequences, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        if not files:
            raise ValueError(f"{root / name} holds no .txt sequence files")
        for path in files:
            sequence = "".join(path.read_text(encoding="ascii", errors="replace").split())
            if not sequence:
                raise ValueError(f"{path} is empty")
            check_bases(sequence, str(path))
            sequences.append(sequence.upper())
            labels.append(label)
    return LabelledSequences(sequences, np.array(labels, dtype=np.int64), classes)
