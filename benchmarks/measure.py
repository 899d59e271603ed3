"""Measurement helpers shared by the benchmarks: device, timing, peak memory, machine load,
machine info, worker subprocesses and the results file.

Peak memory on Linux CPU is the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs), elsewhere on CPU ``ru_maxrss``, on CUDA ``torch.cuda.max_memory_allocated``;
on MPS it is not measured (None). The process-memory readings and the machine description are the
package's (:mod:`titans.machine`), which the evaluations use too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from titans.io import atomic_save_json
from titans.machine import CLEAR_REFS, describe_machine, process_memory_bytes, reset_process_peak

PROC_STAT = Path("/proc/stat")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUSY_LIMIT = 0.1  # cores used by other processes above which a timing is not worth reporting


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: cpu (default), cuda, cuda:N or mps; every measurement runs there."""
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, cuda:N or mps: models, inputs and timings "
                        "all on this device")


def check_device(name: str) -> torch.device:
    """``name`` as a usable device; exits with a one-line error if it is not available here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"--device {name}: not a device name; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            sys.exit(f"--device {name}: CUDA is not available ({why}; torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            sys.exit(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            sys.exit(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        sys.exit(f"--device {name}: use cpu, cuda, cuda:N or mps")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> int:
    """Start peak-memory tracking; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return 0
    reset_process_peak()
    return process_memory_bytes("VmRSS")


def peak_memory_mib(device: torch.device, base: int) -> float | None:
    """Peak MiB above ``base`` (from ``reset_peak_memory``) since that reset: CPU resident set,
    CUDA allocated tensors; None on MPS, which keeps no peak."""
    if device.type == "mps":
        return None
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else process_memory_bytes("VmHWM"))
    return (peak - base) / 2**20


def memory_method(device_name: str) -> str:
    """How ``peak_mem_mib`` was measured, for the report."""
    if device_name.startswith("cuda"):
        return "torch.cuda.max_memory_allocated() minus memory_allocated() before the runs"
    if device_name.startswith("mps"):
        return "not measured on MPS (null)"
    how = ("VmHWM minus VmRSS, the high-water mark reset via /proc/self/clear_refs"
           if CLEAR_REFS.exists() else "ru_maxrss at the end minus ru_maxrss")
    return f"{how} after model+input construction; a fresh subprocess per measurement"


def format_mib(mib: float | None, width: int) -> str:
    """A peak-memory cell: MiB with one decimal, or "-" where it was not measured."""
    return f"{'-' if mib is None else f'{mib:.1f}':>{width}}"


def system_busy_s() -> float:
    """CPU-seconds that all processes (and the hypervisor, as steal) have used since boot."""
    if not PROC_STAT.exists():
        return 0.0
    ticks = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


class OtherLoad:
    """Cores used on average by other processes between construction and :meth:`cores`."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall = system_busy_s(), time.process_time(), time.perf_counter()

    def cores(self) -> float:
        """Other processes' CPU time (all busy time minus this process's) per wall second."""
        others = system_busy_s() - self.busy - (time.process_time() - self.own)
        return max(others / (time.perf_counter() - self.wall), 0.0)


def time_runs(step: Callable[[], object], repeats: int,
              device: torch.device) -> tuple[list[float], float]:
    """One warm-up call of ``step``, then ``repeats`` timed ones, each followed by a device
    synchronisation. Returns the wall-clock seconds of each timed call and the cores used by
    other processes meanwhile."""
    step()
    synchronize(device)
    load, times = OtherLoad(), []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, load.cores()


def matmul_peak(device_name: str, size: int = 2048, repeats: int = 20) -> float:
    """Best fp32 GFLOP/s of a size x size @ size x size matmul."""
    device = torch.device(device_name)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    times, _ = time_runs(lambda: torch.mm(a, b), repeats, device)
    return 2 * size**3 / min(times) / 1e9


def run_worker_process(script: str | Path, argv: list[str], what: str) -> dict:
    """Run ``script argv`` in a fresh Python process; returns the JSON of its last output line.
    Exits with a one-line error naming ``what`` if the worker fails."""
    proc = subprocess.run([sys.executable, str(script), *argv], stdout=subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"worker failed ({what}): exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def warn_if_busy(results: list[dict]) -> None:
    """Explain the ``others`` column; warn if another process was busy during a timing."""
    print("others = cores used on average by other processes while timing (from /proc/stat)")
    if max((r["other_processes_cores"] for r in results), default=0.0) > BUSY_LIMIT:
        print(f"WARNING: other processes used > {BUSY_LIMIT} cores during some timings; "
              "those numbers are low")


def machine_info(device_name: str) -> dict:
    """CPU/GPU model, core count, versions and the repository's commit."""
    info = {**describe_machine(), "device": device_name,
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


def save_report(path: Path, device_name: str, config: dict, results: list[dict],
                **extra: object) -> dict:
    """Write the results file atomically: machine info (with the commit), the command line,
    ``config``, how peak memory was measured, ``extra`` entries and ``results``. Returns it."""
    report = {"machine": machine_info(device_name), "argv": sys.argv[1:], "config": config,
              "memory_method": memory_method(device_name), **extra, "results": results}
    atomic_save_json(report, path)
    return report
