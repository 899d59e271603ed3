"""Where a result was measured and how much memory it took: the machine's description and the
process's peak memory, shared by the evaluations and ``benchmarks/``.

Peak memory on CUDA is the caching allocator's peak of allocated tensor memory. On Linux CPU it
is the process's resident-set high-water mark (VmHWM), which ``/proc/self/clear_refs`` resets to
the current resident set; elsewhere ``getrusage``'s lifetime maximum (``ru_maxrss``), which
cannot be reset.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")  # exists on Linux only


def describe_machine() -> dict[str, Any]:
    """The CPU model (from /proc/cpuinfo where there is one), the core count, torch's thread
    count and the torch and Python versions."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def process_memory_bytes(field: str) -> int:
    """This process's memory in bytes: on Linux ``field`` (``"VmRSS"``, the resident set, or
    ``"VmHWM"``, its high-water mark) of /proc/self/status; elsewhere ``ru_maxrss`` whatever the
    field (the lifetime peak: the only figure there is)."""
    if not CLEAR_REFS.exists():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return rss * (1 if sys.platform == "darwin" else 1024)
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_process_peak() -> None:
    """Linux: reset the high-water mark VmHWM to the current resident set. Elsewhere nothing
    (``ru_maxrss`` cannot be reset)."""
    if CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")


class PeakMemory:
    """Peak memory of a ``with`` block, in MiB (``.peak_mib`` after the block).

    On CUDA: the caching allocator's peak of allocated tensor memory (``kind="cuda_allocated"``).
    On any other device, the process's memory: on Linux its peak resident set size
    (``kind="rss"``), the high-water mark reset when the block starts; elsewhere ``ru_maxrss``
    (``kind="max_rss"``), which never goes down between blocks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.kind = "cuda_allocated" if device.type == "cuda" else (
            "rss" if CLEAR_REFS.exists() else "max_rss")

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_process_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_allocated":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mib = process_memory_bytes("VmHWM") / 2**20
