"""File-system helpers shared by the package: atomic writes and the cache directory.

Every file the package writes (checkpoints, configs, corpora, tokenizers, token streams) goes
through :func:`atomic_write`, so an interrupted run never leaves a truncated file that a later run
would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from titans.checks import check_choice

CACHE_ENV = "TITANS_CACHE"
# This machine's name as it goes into temporary file names (no dots: they separate the fields).
_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success flush, fsync and
    ``os.replace`` it onto ``path``, on error remove it and re-raise.

    The temporary file lives in the same directory (created if missing) so the final rename stays
    on one file system and is atomic: readers see either the old file or the complete new one.
    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text).
    """
    check_choice("atomic_write mode", mode, ("wb", "w"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The name says which process writes it, so that a later writer can tell an orphan (its
    # writer killed) from a file another live process is writing.
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # Mode 0o666 filtered by the umask, as open() gives (mkstemp would give 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left next to ``path`` when its
    writing process was killed (SIGKILL, power loss): those of this host whose process is gone.
    A temporary of a live process, or of another host (a shared file system), is kept. Returns
    the deleted paths."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        host, _, rest = tmp.name[len(path.name) + 2:].partition(".")
        pid = rest.partition(".")[0]
        if host == _HOST and pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours (EPERM), or the platform cannot tell
        return True
    return True


def atomic_save_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def cache_dir() -> Path:
    """The cache root: ``$TITANS_CACHE`` if set, else ``~/.cache/titans``; created if missing."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "titans"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_filename(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by ``_``, so that it can be used as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
