"""Measurement helpers shared by the benchmarks: peak memory, machine load, machine info, output.

Peak memory on Linux CPU is the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs), elsewhere on CPU ``ru_maxrss``, on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CLEAR_REFS, PROC_STAT = Path("/proc/self/clear_refs"), Path("/proc/stat")
REPO = Path(__file__).resolve().parents[1]

def cpu_memory_bytes(field: str) -> int:
    """Linux: ``field`` (VmRSS or VmHWM) of /proc/self/status; elsewhere ``ru_maxrss``. Bytes."""
    if not CLEAR_REFS.exists():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return rss * (1 if sys.platform == "darwin" else 1024)
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024
def reset_peak_memory(device: torch.device) -> int:
    """Start peak-memory tracking; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")  # Linux: resets VmHWM to the current VmRSS
    return cpu_memory_bytes("VmRSS")
def peak_memory(device: torch.device) -> int:
    """Peak bytes since ``reset_peak_memory`` (CPU: resident set, CUDA: allocated tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return cpu_memory_bytes("VmHWM")
def memory_method(device_name: str) -> str:
    """How ``peak_mem_mib`` was measured, for the report."""
    if device_name.startswith("cuda"):
        return "torch.cuda.max_memory_allocated() minus memory_allocated() before the runs"
    how = ("VmHWM minus VmRSS, the high-water mark reset via /proc/self/clear_refs"
           if CLEAR_REFS.exists() else "ru_maxrss at the end minus ru_maxrss")
    return f"{how} after model+input construction; a fresh subprocess per (impl, T, mode)"
def system_busy_s() -> float:
    """CPU-seconds that all processes (and the hypervisor, as steal) have used since boot."""
    if not PROC_STAT.exists():
        return 0.0
    ticks = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
def matmul_peak(device_name: str, size: int = 2048, repeats: int = 20) -> float:
    """Best fp32 GFLOP/s of a size x size @ size x size matmul."""
    device = torch.device(device_name)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first product is a warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
def machine_info(device_name: str) -> dict:
    """CPU/GPU model, core count, versions and the repository's commit."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device_name,
            "thread_env": {k: v for k, v in os.environ.items()
                           if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "titans"],
                           check=False).returncode != 0
    info["git"] = f"{head}{' (titans/ modified)' if dirty else ''}" if head else None
    if device_name.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device_name))
    return info
