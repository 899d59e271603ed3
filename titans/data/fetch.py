"""Verified downloads into the cache: sha256-checked, atomic, with a network timeout and a clear
way out (a manually placed file) when the machine is offline."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from titans.io import atomic_write

DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned


class DataUnavailableError(RuntimeError):
    """Data is neither cached nor downloadable; the message says what to fetch and where to put
    it so that the next run uses it."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, sha256: str) -> None:
    """Raise ``ValueError`` naming ``path`` if its sha256 is not ``sha256``."""
    actual = sha256_file(path)
    if actual != sha256:
        raise ValueError(
            f"{path} has sha256 {actual}, expected {sha256}: the file is corrupted or incomplete; "
            "delete it and run again to fetch it anew"
        )


def fetch(url: str, path: Path, sha256: str, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Return ``path``, downloading ``url`` to it first unless it already exists.

    An existing file (an earlier download, or one placed there by hand) and a fresh download must
    both have the given ``sha256``, else ``ValueError``; the download is checked before it is moved
    into place, so a corrupted or interrupted one never appears at ``path``. Network failures
    (including ``timeout`` seconds without data) raise :class:`DataUnavailableError` naming the
    URL, the sha256 and ``path``.
    """
    if path.exists():
        check_sha256(path, sha256)
        return path
    # Created up front so that a file downloaded by hand can simply be dropped in.
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(path) as f:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                f.write(block)
            if digest.hexdigest() != sha256:
                # Raised inside atomic_write, so the temporary file is removed, never renamed.
                raise ValueError(
                    f"download of {url} is corrupted or incomplete: sha256 {digest.hexdigest()}, "
                    f"expected {sha256}"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DataUnavailableError(
            f"could not download {url} ({e}). Download it by hand (sha256 {sha256}) and save it "
            f"as {path}; it is then used without network access."
        ) from e
    return path
