"""Tokenizers behind one small interface: byte-level BPE trained on the corpus (``tokenizers``),
any Hugging Face ``tokenizer.json``, SentencePiece ``.model`` files, and Mistral's 32K
SentencePiece model fetched from PyPI."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from titans.data.corpus import Corpus, fingerprint_documents
from titans.data.fetch import check_sha256, pip_wheel, sha256_file
from titans.io import atomic_write, cache_dir, safe_filename

EOS = "<|endoftext|>"
DEFAULT_BPE_VOCAB = 8192
DEFAULT_TOKENIZER = f"bpe:{DEFAULT_BPE_VOCAB}"  # a config's tokenizer when it names none
# End-of-sequence tokens looked up, in order, in a tokenizer.json that is not ours.
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>")
MISTRAL_PACKAGE = "mistral-common==1.13.1"
MISTRAL_MEMBER = "mistral_common/data/tokenizer.model.v1"
MISTRAL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


class Tokenizer:
    """A text <-> token-id map with an end-of-sequence id, whatever the backend.

    ``name`` is short and filesystem-safe (it names token caches), ``vocab_size`` bounds every
    id, ``eos_id`` separates packed documents and is never produced by :meth:`encode` on text
    (a literal ``"<|endoftext|>"`` in the text is encoded as ordinary characters), and ``digest``
    is the sha256 of the model file, so caches notice a retrained tokenizer of the same name.
    Build one with :meth:`from_file`, :func:`train_bpe` or :func:`load_tokenizer`.
    """

    def __init__(self, backend: Any, name: str, eos_id: int, digest: str) -> None:
        self._backend = backend
        self._hf = isinstance(backend, tokenizers.Tokenizer)
        self.name = name
        self.vocab_size: int = (backend.get_vocab_size(with_added_tokens=True) if self._hf
                                else backend.get_piece_size())
        self.eos_id = eos_id
        self.digest = digest

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> Tokenizer:
        """Load a Hugging Face ``tokenizer.json`` (``.json``) or a SentencePiece model
        (``.model``, needs ``sentencepiece``); ``name`` defaults to the file's stem."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        name = safe_filename(name if name is not None else path.stem)
        if path.suffix == ".json":
            try:
                backend = tokenizers.Tokenizer.from_file(str(path))
            except Exception as e:  # the Rust library raises a bare Exception
                reason = " ".join(str(e).split())[:200]
                raise ValueError(f"{path} is not a readable tokenizer.json ({reason})") from None
            # Text that happens to contain a special token's string stays text, so the EOS id
            # only ever appears where pack_documents puts it.
            backend.encode_special_tokens = True
            eos = next((t for t in EOS_CANDIDATES if backend.token_to_id(t) is not None), None)
            if eos is None:
                raise ValueError(f"{path} has none of the end-of-sequence tokens {EOS_CANDIDATES}")
            return cls(backend, name, backend.token_to_id(eos), sha256_file(path))
        if path.suffix == ".model":
            return cls._from_sentencepiece(path, name)
        raise ValueError(f"unknown tokenizer file type {path}: expected .json (Hugging Face "
                         "tokenizers) or .model (SentencePiece)")

    @classmethod
    def _from_sentencepiece(cls, path: Path, name: str) -> Tokenizer:
        """Load the SentencePiece model at ``path``, whatever its file name."""
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError(f"{path} needs sentencepiece: "
                              "pip install 'titans-lm[sentencepiece]'") from e
        backend = sentencepiece.SentencePieceProcessor(model_file=str(path))
        if backend.eos_id() < 0:
            raise ValueError(f"SentencePiece model {path} has no end-of-sequence piece")
        return cls(backend, name, backend.eos_id(), sha256_file(path))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of each text (in parallel where the backend supports it)."""
        if self._hf:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._backend.encode(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; exact inverse of :meth:`encode` for byte-level BPE."""
        ids = [int(i) for i in ids]
        if self._hf:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self._backend.decode(ids)

    def to_json(self) -> str:
        """The Hugging Face ``tokenizer.json`` of this tokenizer (``tokenizers`` backends only:
        byte-level BPE and ``.json`` files; a SentencePiece model has no such form here)."""
        if not self._hf:
            raise ValueError(f"tokenizer {self.name!r} is a SentencePiece model, which has no "
                             "tokenizer.json form: use a bpe or .json tokenizer")
        return self._backend.to_str()

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style: any text encodes, decoding is exact) with
    ``vocab_size`` ids including the EOS token ``"<|endoftext|>"``, save it atomically as a
    ``tokenizer.json`` file at ``path`` and return it, named ``bpe<vocab_size>``."""
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size <= n_bytes:
        raise ValueError(f"vocab_size must exceed the {n_bytes} byte tokens plus EOS, "
                         f"got {vocab_size}")
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(texts, trainer)
    with atomic_write(path, "w") as f:
        f.write(backend.to_str())
    return Tokenizer.from_file(path, name=f"bpe{vocab_size}")


def bpe_vocab_size(spec: str) -> int | None:
    """The vocabulary size of a ``"bpe"`` / ``"bpe:<vocab>"`` tokenizer spec (without training
    it); None for any other spec."""
    match = re.fullmatch(r"bpe(?::(\d+))?", spec)
    return int(match.group(1) or DEFAULT_BPE_VOCAB) if match else None


def load_tokenizer(spec: str, corpus: Corpus | None = None, cache: Path | None = None) -> Tokenizer:
    """The tokenizer named by ``spec``:

    - ``"bpe"`` / ``"bpe:<vocab>"``: byte-level BPE (vocab :data:`DEFAULT_BPE_VOCAB` unless
      given, read by :func:`bpe_vocab_size`) trained on ``corpus.train``, cached in
      ``<cache>/tokenizers/`` by corpus name, vocab and a fingerprint of the training documents;
    - ``"<path>.json"``: a Hugging Face ``tokenizer.json``;
    - ``"<path>.model"``: a SentencePiece model;
    - ``"mistral"``: the 32K SentencePiece model of Mistral 7B, ``tokenizer.model.v1`` from the
      PyPI package mistral-common==1.13.1, fetched once with ``pip download`` into
      ``<cache>/tokenizers/mistral-common-1.13.1/`` and sha256-checked.

    ``cache`` defaults to :func:`~titans.io.cache_dir`.
    """
    root = cache if cache is not None else cache_dir()
    vocab_size = bpe_vocab_size(spec)
    if vocab_size is not None:
        if corpus is None:
            raise ValueError(f"tokenizer {spec!r} is trained on a corpus; pass corpus=")
        # Keyed by the training documents too, so a changed corpus never reuses a stale model.
        fingerprint = fingerprint_documents(corpus.train)[:16]
        path = (root / "tokenizers" /
                f"bpe{vocab_size}-{safe_filename(corpus.name)}-{fingerprint}.json")
        if path.exists():
            try:
                return Tokenizer.from_file(path, name=f"bpe{vocab_size}")
            except ValueError as e:
                raise ValueError(f"cached tokenizer damaged: {e}; delete it, and it is trained "
                                 "again from the same documents") from None
        return train_bpe((d.text for d in corpus.train), vocab_size, path)
    if spec == "mistral":
        return Tokenizer._from_sentencepiece(_mistral_model(root / "tokenizers"), "mistral")
    if spec.endswith((".json", ".model")):
        return Tokenizer.from_file(spec)
    raise ValueError(f"unknown tokenizer {spec!r}: expected 'bpe', 'bpe:<vocab>', 'mistral', "
                     "or a path to a .json (Hugging Face) or .model (SentencePiece) file")


def _mistral_model(root: Path) -> Path:
    """Path of the cached, sha256-checked Mistral SentencePiece model; fetch it if needed."""
    folder = root / MISTRAL_PACKAGE.replace("==", "-")
    model = folder / Path(MISTRAL_MEMBER).name
    if model.exists():
        check_sha256(model, MISTRAL_SHA256)
        return model
    wheel_path = pip_wheel(MISTRAL_PACKAGE, folder, (
        f"Fetch {MISTRAL_PACKAGE} on a connected machine (`pip download --no-deps "
        f"{MISTRAL_PACKAGE}`) and put the wheel in {folder}, or put its {MISTRAL_MEMBER} "
        f"(sha256 {MISTRAL_SHA256}) at {model}; it is then used without network access."))
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            data = wheel.read(MISTRAL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{wheel_path} is not a {MISTRAL_PACKAGE} wheel with {MISTRAL_MEMBER} "
                         f"({e}); delete it and run again") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MISTRAL_SHA256:
        raise ValueError(f"{MISTRAL_MEMBER} in {wheel_path} has sha256 {digest}, expected "
                         f"{MISTRAL_SHA256}; delete the wheel and run again")
    with atomic_write(model) as f:
        f.write(data)
    return model

