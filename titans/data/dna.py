"""DNA as tokens: the single-nucleotide tokenizer, FASTA and GenBank readers, and files taken
out of Debian packages (``.deb``) in pure Python.

The tokenizer has one id per base, ``A C G T N``, and the end-of-sequence id that separates
packed documents; lowercase bases (soft-masked repeats, as in the UCSC dm3 files) are read as
their uppercase base, and any other character is a one-line ``ValueError`` naming it and where
it is. It is a :class:`titans.data.tokenizer.Tokenizer`, so the data pipeline and the training
loop use it like any other (``data.tokenizer: nucleotide``), and its ``tokenizer.json`` (a
Hugging Face word-level model) goes along with an exported model.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

from titans.data.fetch import DataUnavailableError, check_sha256, fetch
from titans.data.tokenizer import EOS, Tokenizer
from titans.io import atomic_write, cache_dir

NUCLEOTIDE_TOKENIZER = "nucleotide"  # the data config's tokenizer spec
BASES = "ACGTN"
# id -> token: EOS first (id 0, also the padding of classification batches), then the bases.
VOCAB = (EOS, *BASES)
_LOOKUP = np.full(256, -1, dtype=np.int64)  # byte -> id, -1 for anything that is not a base
for _id, _base in enumerate(BASES, start=1):
    _LOOKUP[ord(_base)] = _LOOKUP[ord(_base.lower())] = _id


def check_bases(sequence: str, where: str) -> None:
    """``ValueError`` naming the first character of ``sequence`` that is not one of ``ACGTN``
    (either case), its 0-based position and ``where`` (a file and record)."""
    encode_bases(sequence, where)


def encode_bases(sequence: str, where: str = "sequence") -> np.ndarray:
    """Token ids (int64, [len(sequence)]) of a DNA string; lowercase reads as uppercase. Any
    other character raises a one-line ``ValueError`` naming it, its position and ``where``."""
    raw = sequence.encode("utf-8")
    ids = _LOOKUP[np.frombuffer(raw, dtype=np.uint8)]
    if len(raw) != len(sequence) or (ids < 0).any():
        # Non-ASCII text has more bytes than characters: find the character itself.
        position = next(i for i, c in enumerate(sequence) if c.upper() not in BASES)
        raise ValueError(f"{where}: invalid nucleotide {sequence[position]!r} at position "
                         f"{position}; expected one of A, C, G, T, N (either case)")
    return ids


class NucleotideTokenizer(Tokenizer):
    """One token per nucleotide: id 0 is the end-of-sequence token ``"<|endoftext|>"``, ids 1-5
    are ``A C G T N``; ``vocab_size`` 6. :meth:`encode` maps lowercase to uppercase and
    raises ``ValueError`` (naming the character and its position) on anything else;
    :meth:`decode` gives uppercase text, so ``decode(encode(s)) == s.upper()``.

    Encoding is a table lookup (tens of millions of bases per second); the Hugging Face
    backend, which encodes the same way, is there for :meth:`to_json`.
    """

    def __init__(self) -> None:
        backend = tokenizers.Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}))
        backend.normalizer = normalizers.Sequence(
            [normalizers.Replace(b.lower(), b) for b in BASES])
        backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        backend.decoder = decoders.Fuse()
        digest = hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
        super().__init__(backend, NUCLEOTIDE_TOKENIZER, VOCAB.index(EOS), digest)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encode_bases(text, f"text {i}").tolist() for i, text in enumerate(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(VOCAB[int(i)] for i in ids)
        except IndexError:
            raise ValueError(f"token ids must lie in [0, {len(VOCAB)}), got "
                             f"{[int(i) for i in ids if not 0 <= int(i) < len(VOCAB)][:3]}"
                             ) from None


# --------------------------------------------------------------------------------------------
# FASTA and GenBank


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence of a FASTA or GenBank file: ``name`` (the FASTA header's first word or the
    GenBank LOCUS name), ``description`` (the rest of the header, or DEFINITION), the uppercase
    ``sequence`` and, from GenBank, its coding sequences ``cds`` (:class:`Feature`)."""

    name: str
    description: str
    sequence: str
    cds: tuple[Feature, ...] = ()


@dataclass(frozen=True)
class Feature:
    """A feature's location: its ``parts`` as 0-based half-open ``(start, end)`` intervals in
    the order of the feature (a ``join``), and ``strand`` +1 or -1 (``complement``). Partial
    ends (``<``, ``>``) are kept as the bases the record holds."""

    parts: tuple[tuple[int, int], ...]
    strand: int


def _open_text(path: Path) -> io.TextIOBase:
    """A text handle of ``path``, gunzipped if it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="ascii") if gzipped else open(path, encoding="ascii")


def read_fasta(path: str | Path) -> list[SequenceRecord]:
    """The records of a FASTA file (plain or gzip): ``>name description`` then sequence lines.
    Sequences are uppercased; a character other than ACGTN raises ``ValueError`` naming the
    file, the record and the position in it."""
    path = Path(path)
    records: list[SequenceRecord] = []
    header: str | None = None
    lines: list[str] = []

    def close() -> None:
        if header is not None:
            name, _, description = header.partition(" ")
            sequence = "".join(lines)
            check_bases(sequence, f"{path}: record {name!r}")
            records.append(SequenceRecord(name, description.strip(), sequence.upper()))

    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if line.startswith(">"):
                    close()
                    header, lines = line[1:].strip(), []
                elif line:
                    if header is None:
                        raise ValueError(f"{path}:{line_no}: sequence before the first '>' "
                                         "header: not a FASTA file")
                    lines.append(line)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not an ASCII FASTA file ({e})") from None
    close()
    if not records:
        raise ValueError(f"{path} holds no FASTA records")
    return records


_SPAN = re.compile(r"<?(\d+)(?:\.\.>?(\d+))?")


def parse_location(location: str, length: int) -> Feature:
    """A GenBank location (``123..456``, ``complement(...)``, ``join(...)``/``order(...)``,
    partial ``<``/``>`` ends, single bases) -> :class:`Feature` of a record of ``length``
    bases. Anything else (a span in another record, ``123^124``) raises ``ValueError``."""
    text = location.replace(" ", "")
    strand = 1
    if text.startswith("complement(") and text.endswith(")"):
        text, strand = text[len("complement("):-1], -1
    inner_strands = set()
    if text.startswith(("join(", "order(")) and text.endswith(")"):
        pieces = text[text.index("(") + 1:-1].split(",")
    else:
        pieces = [text]
    parts = []
    for piece in pieces:
        if piece.startswith("complement(") and piece.endswith(")"):
            piece = piece[len("complement("):-1]
            inner_strands.add(-1)
        else:
            inner_strands.add(1)
        match = _SPAN.fullmatch(piece)
        if match is None:
            raise ValueError(f"unsupported GenBank location {location!r} (part {piece!r})")
        start, end = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= start <= end <= length:
            raise ValueError(f"GenBank location {location!r} lies outside the record's "
                             f"{length} bases")
        parts.append((start - 1, end))
    if len(inner_strands) > 1:
        raise ValueError(f"GenBank location {location!r} mixes strands")
    if inner_strands == {-1}:  # join(complement(a), complement(b)): the minus strand
        strand = -strand
    return Feature(tuple(parts), strand)


def read_genbank(path: str | Path) -> list[SequenceRecord]:
    """The records of a GenBank flat file (plain or gzip), each with its sequence (uppercased,
    checked like :func:`read_fasta`) and its CDS features' locations (:func:`parse_location`).
    Other feature types are skipped; a bad location raises ``ValueError`` naming the record."""
    path = Path(path)
    records = []
    with _open_text(path) as f:
        lines = iter(enumerate(f, start=1))
        for line_no, line in lines:
            if not line.startswith("LOCUS"):
                if line.strip():
                    raise ValueError(f"{path}:{line_no}: expected a LOCUS line, got "
                                     f"{line.strip()[:40]!r}")
                continue
            records.append(_read_genbank_record(path, line, lines))
    if not records:
        raise ValueError(f"{path} holds no GenBank records")
    return records


def _read_genbank_record(path: Path, locus: str, lines: enumerate) -> SequenceRecord:
    """One record from its LOCUS line to ``//``."""
    name = locus.split()[1]
    definition: list[str] = []
    locations: list[str] = []  # CDS locations, continuation lines joined
    sequence: list[str] = []
    section, in_cds = "", False
    for _, line in lines:
        if line.startswith("//"):
            seq = "".join(sequence)
            check_bases(seq, f"{path}: record {name!r}")
            try:
                cds = tuple(parse_location(loc, len(seq)) for loc in locations)
            except ValueError as e:
                raise ValueError(f"{path}: record {name!r}: {e}") from None
            return SequenceRecord(name, " ".join(definition), seq.upper(), cds)
        if line[:1] not in (" ", ""):  # a new top-level section
            section = line.split()[0]
            if section == "DEFINITION":
                definition.append(line[12:].strip())
            continue
        if section == "DEFINITION":
            definition.append(line.strip())
        elif section == "FEATURES":
            key, body = line[5:21].strip(), line[21:].strip()
            if key:  # a new feature: its location starts here
                in_cds = key == "CDS"
                if in_cds:
                    locations.append(body)
            elif in_cds and body.startswith("/"):
                in_cds = False  # the qualifiers follow the (complete) location
            elif in_cds:
                locations[-1] += body  # a long location continues on the next lines
        elif section == "ORIGIN":
            sequence.append("".join(line.split()[1:]))
    raise ValueError(f"{path}: record {name!r} does not end with '//' (truncated file?)")


# --------------------------------------------------------------------------------------------
# Files from Debian packages


@dataclass(frozen=True)
class DebianFile:
    """One file of a Debian package: the package's pool ``url`` and ``sha256``, the ``member``
    path inside its data archive and that file's own ``member_sha256``."""

    url: str
    sha256: str
    member: str
    member_sha256: str

    @property
    def package(self) -> str:
        """The package file's name, e.g. ``any2fasta-examples_0.4.2-2_all.deb``."""
        return self.url.rsplit("/", 1)[-1]


def deb_member(deb: str | Path, member: str) -> bytes:
    """The bytes of ``member`` (a path such as ``./usr/share/...``) in a ``.deb`` package: an
    ``ar`` archive whose ``data.tar.{xz,gz,bz2}`` holds the files (``.zst`` needs a zstd
    decompressor Python lacks before 3.14: ``ValueError``)."""
    deb = Path(deb)
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb} is not a Debian package (no ar archive header)")
        while header := f.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii"))
            if not name.startswith("data.tar"):
                f.seek(size + (size & 1), io.SEEK_CUR)  # members are 2-byte aligned
                continue
            if name.endswith(".zst"):
                raise ValueError(f"{deb}: {name} is zstd-compressed, which this Python cannot "
                                 "read")
            data = f.read(size)
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise KeyError(member)
                    return handle.read()
            except KeyError:
                raise ValueError(f"{deb} has no file {member}") from None
            except tarfile.TarError as e:
                raise ValueError(f"{deb}: {name} is not a readable tar archive ({e})") from None
    raise ValueError(f"{deb} has no data.tar member: not a Debian binary package")


def debian_file(spec: DebianFile, cache: Path | None = None) -> Path:
    """The cached, sha256-checked file ``spec.member`` of a Debian package, at
    ``<cache>/debian/<package stem>/<file name>`` (``cache`` defaults to
    :func:`~titans.io.cache_dir`). Missing, the package is fetched from ``spec.url`` (or taken
    from a copy put next to it by hand), the file extracted and the package deleted, so only the
    file stays. Offline with neither: :class:`~titans.data.DataUnavailableError` saying what to
    fetch and where to put it."""
    root = (cache if cache is not None else cache_dir()) / "debian" / spec.package[:-len(".deb")]
    path = root / Path(spec.member).name
    if path.exists():
        check_sha256(path, spec.member_sha256)
        return path
    try:
        deb = fetch(spec.url, root / spec.package, spec.sha256)
    except DataUnavailableError as e:
        raise DataUnavailableError(f"{e} Or put its file {spec.member} (sha256 "
                                   f"{spec.member_sha256}) at {path}.") from e
    data = deb_member(deb, spec.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.member_sha256:
        raise ValueError(f"{spec.member} in {deb} has sha256 {digest}, expected "
                         f"{spec.member_sha256}; delete {deb} and run again")
    with atomic_write(path) as f:
        f.write(data)
    deb.unlink()
    return path
