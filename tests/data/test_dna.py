"""DNA data: the nucleotide tokenizer, FASTA/GenBank readers, .deb extraction and caching, the
coding-window task and its split, the dm3 corpus split, and the GenomicsBenchmarks loader."""

import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest

from titans.config_files import DataConfig
from titans.data import DataUnavailableError, Tokenizer
from titans.data.dna import (
    DebianFile,
    NucleotideTokenizer,
    SequenceRecord,
    deb_member,
    debian_file,
    parse_location,
    read_fasta,
    read_genbank,
)
from titans.data.dna_tasks import (
    DM3_UPSTREAM,
    LEPTOSPIRA,
    SPLITS,
    LabelledSequences,
    coding_windows,
    dm3_upstream_corpus,
    gc_threshold_accuracy,
    load_genomic_benchmark,
    overlap_clusters,
)
from titans.data.pipeline import load_corpus
from titans.io import cache_dir
from titans.runs import absolute_data_config

# Real sequence: the first 100 bases of the dm3 upstream region of NM_078863 (chr2L:16764737-),
# soft-masked (lowercase) in the file, and of the Leptospira contig NZ_AHMY02000075.
DM3_BASES = ("gttggtggcccaccagtgccaaaatacacaagaagaagaaacagcatctt"
             "gacactaaaatgcaaaaattgctttgcgtcaatgactcaaaacgaaaatg")
LEPTOSPIRA_BASES = ("aacaaaagctcgaattacagagatattcttttcggccatttgagaatgattggatagaac"
                    "ttaaaagactcgcctttctacacggagtttcgatgtgtaa")
FASTA = (f">NM_078863_up_2000_chr2L_16764737_f chr2L:16764737-16766736\n{DM3_BASES[:50]}\n"
         f"{DM3_BASES[50:]}\n>second chr2L:1-10\nACGTNacgtn\n")
GENBANK = f"""LOCUS       NZ_TEST                  100 bp    DNA     linear   CON 23-NOV-2017
DEFINITION  Leptospira kirschneri str. H1 ctg7180000004940, whole genome
            shotgun sequence.
FEATURES             Location/Qualifiers
     source          1..100
                     /organism="Leptospira kirschneri str. H1"
     gene            <1..30
                     /locus_tag="A"
     CDS             <1..30
                     /locus_tag="A"
                     /note="incomplete; missing start; Derived by automated
                     computational analysis"
     CDS             complement(41..>60)
                     /translation="MKK
                     LLV"
     CDS             join(61..70,
                     70..80)
     tRNA            85..95
CONTIG      join(AHMY02000075.1:1..100)
ORIGIN
        1 {LEPTOSPIRA_BASES[:60]}
       61 {LEPTOSPIRA_BASES[60:]}
//
"""


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_round_trip_maps_lowercase_to_uppercase():
    tokenizer = NucleotideTokenizer()
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.name) == (6, 0, "nucleotide")
    ids = tokenizer.encode("ACGTNacgtn")
    assert ids == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    assert tokenizer.decode(ids) == "ACGTNACGTN"
    assert tokenizer.decode(tokenizer.encode(DM3_BASES)) == DM3_BASES.upper()
    assert tokenizer.decode([2, 0, 3]) == "C<|endoftext|>G"


def test_tokenizer_json_encodes_alike(tmp_path):
    """The exported tokenizer.json (Hugging Face backend) gives the same ids and EOS."""
    path = tmp_path / "nucleotide.json"
    path.write_text(NucleotideTokenizer().to_json())
    exported = Tokenizer.from_file(path)
    assert exported.eos_id == 0
    assert exported.encode("acgtNNTG") == NucleotideTokenizer().encode("acgtNNTG")


@pytest.mark.parametrize("text, char, position", [("ACGX", "X", 3), ("AC-GT", "-", 2),
                                                   ("ACé", "é", 2), ("AC GT", " ", 2)])
def test_tokenizer_rejects_other_characters(text, char, position):
    with pytest.raises(ValueError, match=f"invalid nucleotide {char!r} at position {position}"):
        NucleotideTokenizer().encode(text)


def test_run_records_a_dna_source_by_name():
    """A run trained on dna:<name> is evaluated on that corpus from any directory."""
    data = DataConfig(source="dna:dm3-upstream", tokenizer="nucleotide")
    assert absolute_data_config(data) == data


def test_data_config_uses_the_nucleotide_tokenizer(tmp_path, monkeypatch):
    """data.tokenizer: nucleotide goes through the pipeline like any other tokenizer."""
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "cache"))
    for i in range(3):
        (tmp_path / f"region{i}.txt").write_text(DM3_BASES[i * 10:])
    corpus, tokenizer = load_corpus(DataConfig(source=str(tmp_path), tokenizer="nucleotide"))
    assert isinstance(tokenizer, NucleotideTokenizer)
    assert len(corpus.train) + len(corpus.validation) + len(corpus.test) == 3


# --------------------------------------------------------------------------------------------
# FASTA and GenBank


@pytest.mark.parametrize("compress", [False, True])
def test_read_fasta(tmp_path, compress):
    path = tmp_path / ("x.fa.gz" if compress else "x.fa")
    path.write_bytes(gzip.compress(FASTA.encode()) if compress else FASTA.encode())
    records = read_fasta(path)
    assert [r.name for r in records] == ["NM_078863_up_2000_chr2L_16764737_f", "second"]
    assert records[0].description == "chr2L:16764737-16766736"
    assert records[0].sequence == DM3_BASES.upper()
    assert records[1].sequence == "ACGTNACGTN"


def test_read_fasta_errors(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text(">ok\nACGT\n>bad one\nACGTACGU\n")
    with pytest.raises(ValueError, match=r"record 'bad': invalid nucleotide 'U' at position 7"):
        read_fasta(path)
    path.write_text("ACGT\n")
    with pytest.raises(ValueError, match="before the first '>'"):
        read_fasta(path)


def test_read_genbank_cds_locations(tmp_path):
    path = tmp_path / "x.gbk.gz"
    path.write_bytes(gzip.compress(GENBANK.encode()))
    (record,) = read_genbank(path)
    assert record.name == "NZ_TEST"
    assert record.description.startswith("Leptospira kirschneri") and "shotgun" in \
        record.description
    assert record.sequence == LEPTOSPIRA_BASES.upper()
    # Three CDS (the gene and tRNA are not), 0-based half-open, partial ends kept.
    assert [(f.parts, f.strand) for f in record.cds] == [
        (((0, 30),), 1), (((40, 60),), -1), (((60, 70), (69, 80)), 1)]


@pytest.mark.parametrize("location, parts, strand", [
    ("5..9", ((4, 9),), 1), ("7", ((6, 7),), 1),
    ("complement(join(1..3,5..8))", ((0, 3), (4, 8)), -1),
    ("join(complement(5..8),complement(1..3))", ((4, 8), (0, 3)), -1),
    ("order(1..2, 4..5)", ((0, 2), (3, 5)), 1)])
def test_parse_location(location, parts, strand):
    feature = parse_location(location, 10)
    assert (feature.parts, feature.strand) == (parts, strand)


@pytest.mark.parametrize("location", ["3^4", "ABC01.1:1..5", "1..11",
                                      "join(1..3,complement(5..6))"])
def test_parse_location_errors(location):
    with pytest.raises(ValueError, match="location"):
        parse_location(location, 10)


def test_read_genbank_rejects_a_truncated_record(tmp_path):
    path = tmp_path / "cut.gbk"
    path.write_text(GENBANK.replace("//\n", ""))
    with pytest.raises(ValueError, match="does not end with '//'"):
        read_genbank(path)


# --------------------------------------------------------------------------------------------
# Debian packages


def make_deb(path, files, compression="xz"):
    """A Debian binary package as dpkg-deb builds it: an ar archive of debian-binary,
    control.tar.xz and data.tar.<compression> holding ``files`` (member path -> bytes)."""
    def tar_bytes(entries, mode):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode=mode) as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    members = [("debian-binary", b"2.0\n"),
               ("control.tar.xz", tar_bytes({"./control": b"Package: x\n"}, "w:xz")),
               (f"data.tar.{compression}", tar_bytes(files, f"w:{compression}"))]
    out = bytearray(b"!<arch>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_deb_member(tmp_path):
    fasta = gzip.compress(FASTA.encode())
    for compression in ("xz", "gz"):
        deb = make_deb(tmp_path / f"p-{compression}.deb",
                       {"./usr/share/x/odd.txt": b"abc", "./usr/share/x/r.fa.gz": fasta},
                       compression)
        assert deb_member(deb, "./usr/share/x/r.fa.gz") == fasta
        assert deb_member(deb, "./usr/share/x/odd.txt") == b"abc"  # odd-sized ar members
    with pytest.raises(ValueError, match=r"has no file \./missing"):
        deb_member(deb, "./missing")
    (tmp_path / "not.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not a Debian package"):
        deb_member(tmp_path / "not.deb", "./x")


def test_debian_file_fetches_extracts_and_caches_only_the_file(tmp_path):
    fasta = gzip.compress(FASTA.encode())
    deb = make_deb(tmp_path / "src" / "pkg_1.0_all.deb", {"./usr/r.fa.gz": fasta})
    spec = DebianFile(deb.as_uri(), sha256(deb.read_bytes()), "./usr/r.fa.gz", sha256(fasta))
    cache = tmp_path / "cache"
    path = debian_file(spec, cache)
    assert path == cache / "debian" / "pkg_1.0_all" / "r.fa.gz"
    assert path.read_bytes() == fasta
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.fa.gz"]  # the .deb is gone
    deb.unlink()  # offline from now on: the cached file is enough
    assert read_fasta(debian_file(spec, cache))[1].sequence == "ACGTNACGTN"
    with pytest.raises(DataUnavailableError, match=r"(?s)pkg_1.0_all.deb.*put its file "
                                                   r"./usr/r.fa.gz .*at .*r.fa.gz"):
        debian_file(spec, tmp_path / "empty-cache")
    path.write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="sha256"):
        debian_file(spec, cache)


def test_pinned_packages():
    assert DM3_UPSTREAM.url.startswith("http://deb.debian.org/debian/pool/main/r/")
    assert LEPTOSPIRA.package == "any2fasta-examples_0.4.2-2_all.deb"


# --------------------------------------------------------------------------------------------
# Classification data and splits


def annotated_genome(rng, lengths=(30000, 17000)):
    """Records of random bases with CDS runs of 300-1500 bases and gaps of 50-400."""
    records = []
    for length in lengths:
        features, pos = [], int(rng.integers(0, 200))
        while pos < length - 400:
            end = min(length, pos + int(rng.integers(300, 1500)))
            features.append(parse_location(
                f"complement({pos + 1}..{end})" if rng.random() < 0.5 else f"{pos + 1}..{end}",
                length))
            pos = end + int(rng.integers(50, 400))
        bases = "".join(rng.choice(list("ACGT"), length))
        records.append(SequenceRecord(f"contig{len(records)}", "", bases, tuple(features)))
    return records


def test_coding_windows_labels_and_block_split():
    rng = np.random.default_rng(0)
    records = annotated_genome(rng)
    data, where = coding_windows(records, length=60, stride=10, block_len=2000,
                                 fractions=(0.2, 0.2), seed=1)
    masks = [np.zeros(len(r.sequence), bool) for r in records]
    for mask, record in zip(masks, records, strict=True):
        for feature in record.cds:
            for start, end in feature.parts:
                mask[start:end] = True
    covered = {}
    for split in SPLITS:
        d, windows = data[split], where[split]
        assert np.bincount(d.labels).tolist() == [len(d) // 2] * 2  # balanced
        assert d.majority_accuracy() == 0.5
        for sequence, label, w in zip(d.sequences, d.labels, windows, strict=True):
            assert sequence == records[w.record].sequence[w.start:w.start + 60]
            inside = masks[w.record][w.start:w.start + 60]
            assert inside.all() if label == 1 else not inside.any()
            # Wholly inside its block: the block of its first and last base agree.
            assert w.start // 2000 == (w.start + 59) // 2000
            covered.setdefault(split, set()).update(
                (w.record, b) for b in range(w.start, w.start + 60))
    # No base (hence no overlapping window) is shared by two splits.
    assert not covered["train"] & covered["validation"]
    assert not covered["train"] & covered["test"]
    assert not covered["validation"] & covered["test"]
    again, _ = coding_windows(records, length=60, stride=10, block_len=2000,
                              fractions=(0.2, 0.2), seed=1)
    assert again["test"].sequences == data["test"].sequences  # seeded


def test_coding_windows_needs_both_classes():
    record = SequenceRecord("all-coding", "", "ACGT" * 500, (parse_location("1..2000", 2000),))
    with pytest.raises(ValueError, match="no non-coding windows"):
        coding_windows([record], length=50, stride=10, block_len=500)


def test_gc_threshold_baseline():
    """The threshold and its direction come from train; held-out accuracy is then counted."""
    train = LabelledSequences(["AATT", "ATAT", "GCGA", "GGCC"], np.array([1, 1, 0, 0]), ("a", "b"))
    held_out = LabelledSequences(["TTTA", "CCGA", "CCCC", "AAAA"], np.array([1, 0, 1, 1]),
                                 ("a", "b"))
    assert train.gc_fraction().tolist() == [0, 0, 0.75, 1]
    # Learnt rule: class 1 iff GC fraction <= 0 (the reverse direction): right on 3 of 4
    # (CCCC, labelled 1, is called 0).
    assert gc_threshold_accuracy(train, held_out) == 0.75
    assert gc_threshold_accuracy(train, train) == 1.0
    with pytest.raises(ValueError, match="two classes"):
        gc_threshold_accuracy(LabelledSequences(["A"], np.array([0]), ("a", "b", "c")), train)


def test_overlap_clusters():
    regions = [("chr1", 100, 200), ("chr2", 150, 160), ("chr1", 190, 300), ("chr1", 301, 400),
               ("chr1", 50, 99), ("chr1", 280, 310)]
    clusters = overlap_clusters(regions)
    assert clusters[0] == clusters[2] == clusters[3] == clusters[5]  # chained overlaps
    assert len({clusters[0], clusters[1], clusters[4]}) == 3


def write_benchmark(root, files):
    """A GenomicsBenchmarks folder: {(split, class): [sequence, ...]}."""
    for (split, cls), sequences in files.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, sequence in enumerate(sequences):
            (root / split / cls / f"{i}.txt").write_text(sequence)


def test_genomic_benchmark_loader(tmp_path):
    root = tmp_path / "human_nontata_promoters"
    write_benchmark(root, {
        ("train", "positive"): ["ACGT", "acgg", "TTTN"], ("train", "negative"): ["GGGA", "CC"],
        ("test", "positive"): ["AAAA"], ("test", "negative"): ["CCCC\n", "GGGG"]})
    data = load_genomic_benchmark(root, validation_fraction=0.2, seed=0)
    assert data["test"].classes == ("negative", "positive")  # sorted: label = index
    test = data["test"]
    assert sorted(zip(test.sequences, test.labels.tolist(), strict=True)) == [
        ("AAAA", 1), ("CCCC", 0), ("GGGG", 0)]
    assert len(data["validation"]) == 1 and len(data["train"]) == 4
    both = data["train"].sequences + data["validation"].sequences
    assert sorted(both) == ["ACGG", "ACGT", "CC", "GGGA", "TTTN"]
    labels = dict(zip(both, [*data["train"].labels, *data["validation"].labels], strict=True))
    assert labels == {"ACGT": 1, "ACGG": 1, "TTTN": 1, "GGGA": 0, "CC": 0}


def test_genomic_benchmark_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="not a GenomicsBenchmarks data set"):
        load_genomic_benchmark(tmp_path)
    write_benchmark(tmp_path, {("train", "a"): ["ACGT"], ("train", "b"): ["ACGT"],
                               ("test", "a"): ["ACGT"], ("test", "c"): ["ACGT"]})
    with pytest.raises(ValueError, match="expected the same"):
        load_genomic_benchmark(tmp_path)
    write_benchmark(tmp_path, {("test", "b"): ["ACGZ"]})
    (tmp_path / "test" / "c" / "0.txt").unlink()
    (tmp_path / "test" / "c").rmdir()
    with pytest.raises(ValueError, match=r"b/0.txt: invalid nucleotide 'Z' at position 3"):
        load_genomic_benchmark(tmp_path)


# --------------------------------------------------------------------------------------------
# The real files, when cached (the experiment fetches them; tests do not download 20 MB)


def cached(spec):
    path = cache_dir() / "debian" / spec.package[:-len(".deb")] / spec.member.rsplit("/")[-1]
    if not path.exists():
        pytest.skip(f"{path} not cached (titans dna fetches it)")
    return path


@pytest.mark.slow
def test_dm3_upstream_corpus_from_cache():
    cached(DM3_UPSTREAM)
    corpus = dm3_upstream_corpus()
    sizes = [len(corpus.split(s)) for s in SPLITS]
    assert sum(sizes) == 17286 and sizes[1] >= 0.02 * 17286 and sizes[2] >= 0.02 * 17286
    train = {d.text for d in corpus.train}
    assert not train & {d.text for d in corpus.validation + corpus.test}
    assert all(len(d.text) == 2000 and set(d.text) <= set("ACGTN") for d in corpus.test)


@pytest.mark.slow
def test_leptospira_genbank_from_cache():
    records = read_genbank(cached(LEPTOSPIRA))
    assert len(records) == 75
    assert sum(len(r.cds) for r in records) == 4162
    assert sum(len(r.sequence) for r in records) == 4594734
    assert records[0].sequence.startswith(LEPTOSPIRA_BASES.upper())
