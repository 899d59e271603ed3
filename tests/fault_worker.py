"""Run the ``titans`` command with a fault injected at a chosen point (a process of its own).

    python tests/fault_worker.py FAULT WHERE -- titans-args...

FAULT is what happens: ``sigint`` (Ctrl-C), ``sigkill`` (the process is killed) or ``enospc``
(the disk is full: the write raises ``OSError(ENOSPC)``). WHERE is when: ``save`` (the second
checkpoint save, after its weights are staged and before its config is), or ``pack`` (while
the training tokens are written to the cache, after the first block). Used by
``tests/test_faults.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import titans.data.packing
import titans.runs
from titans.cli import main


def fault(name: str, path: Path) -> None:
    if name == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    os.kill(os.getpid(), {"sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[name])


class FaultAfterFirstWrite:
    """A file whose first write reaches the disk and is then followed by the fault."""

    def __init__(self, file: IO, name: str, path: Path) -> None:
        self.file, self.name, self.path = file, name, path

    def write(self, data: bytes) -> int:
        written = self.file.write(data)
        self.file.flush()
        fault(self.name, self.path)
        return written


def inject(name: str, where: str) -> None:
    if where == "save":
        save_json, configs = titans.runs.atomic_save_json, []

        def faulty_save_json(obj: Any, path: str | Path) -> None:
            path = Path(path)
            if path.parent.name == titans.runs.STAGING_DIR:
                configs.append(path)
                if len(configs) == 2:  # the second checkpoint: the first one stays behind
                    fault(name, path)
            save_json(obj, path)

        titans.runs.atomic_save_json = faulty_save_json
    elif where == "pack":
        atomic_write = titans.data.packing.atomic_write

        @contextlib.contextmanager
        def faulty_atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
            with atomic_write(path, mode) as f:
                tokens = Path(path).suffix == ".bin"
                yield FaultAfterFirstWrite(f, name, Path(path)) if tokens else f

        titans.data.packing.atomic_write = faulty_atomic_write
    else:
        raise SystemExit(f"unknown fault point {where!r}")


if __name__ == "__main__":
    fault_name, fault_where, separator, *args = sys.argv[1:]
    assert separator == "--"
    inject(fault_name, fault_where)
    main(args)
