"""titans.machine: the machine's description, and PeakMemory measures the peak resident set size
of its block (Linux)."""

import platform
from pathlib import Path

import torch

from titans.machine import PeakMemory, describe_machine, process_memory_bytes


def rss_mib():
    """Current resident set size, read independently of PeakMemory."""
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmRSS:"))
    return kib / 1024


def test_describe_machine_names_the_cpu_and_the_versions():
    info = describe_machine()
    assert list(info) == ["cpu", "cpu_count", "torch_threads", "torch", "python"]
    assert info["cpu"] and info["cpu_count"] >= 1
    assert info["torch_threads"] == torch.get_num_threads()
    assert (info["torch"], info["python"]) == (torch.__version__, platform.python_version())


def test_process_memory_is_the_resident_set_and_its_high_water_mark():
    rss = process_memory_bytes("VmRSS")
    assert rss > 0 and abs(rss / 2**20 - rss_mib()) < 10
    assert process_memory_bytes("VmHWM") >= rss  # read later: the mark is at least that high


def test_peak_memory_sees_a_freed_allocation():
    before = rss_mib()
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(50_000_000)  # 200 MB, every page touched
        assert float(block[::4096].sum()) == len(block[::4096])
        del block
    assert memory.kind == "rss"
    assert memory.peak_mib >= before + 150


def test_peak_memory_of_an_idle_block_is_the_current_rss():
    with PeakMemory(torch.device("cpu")) as warm:  # a big peak first, which must not carry over
        block = torch.ones(50_000_000)
        del block
    before = rss_mib()
    with PeakMemory(torch.device("cpu")) as memory:
        pass
    after = rss_mib()
    assert memory.kind == warm.kind == "rss"
    assert min(before, after) - 10 <= memory.peak_mib <= max(before, after) + 10
