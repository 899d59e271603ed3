"""Throughput, FLOP rate and peak memory of the ``NeuralMemory`` layer.

What is measured, for each sequence length T (default 1K, 4K, 16K; B=2, hidden 256, 4 heads x 64,
memory MLP depth 2 / expansion 4, chunk 16, float32):

* forward tokens/s under ``torch.no_grad()``, and forward+backward tokens/s with
  ``loss = y.float().pow(2).mean()`` back-propagated to every parameter. One warm-up run, then
  ``--repeats`` timed runs; best and median wall-clock times are reported, tokens/s = B*T / best.
* achieved GFLOP/s = FLOPs / best time, where FLOPs come from ``torch.utils.flop_counter.
  FlopCounterMode`` (it counts matmul/conv/attention FLOPs only, not elementwise ops), shown next to
  this machine's fp32 matmul peak (best of 20 timed 2048x2048 @ 2048x2048 products).
* peak memory of one forward+backward (and of one forward): each (implementation, T, mode) runs
  in a fresh subprocess. On Linux CPU it is the resident-set high-water mark (VmHWM, reset through
  /proc/self/clear_refs after model and input construction) minus the resident set at that reset;
  elsewhere on CPU ``ru_maxrss`` at the end minus ``ru_maxrss`` after construction; on CUDA
  ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the runs.
* how busy the rest of the machine was while timing (cores used by other processes, from
  /proc/stat): timings taken next to other work are not worth reporting.

``--compare`` also benchmarks ``titans_pytorch.NeuralMemory`` (PyPI ``titans-pytorch``) in the
same config, at every T or at the T given after it. Results are printed and written to ``--out``
(JSON, default benchmarks/results/memory_throughput.json).

    python benchmarks/memory_throughput.py [--compare [T ...]] [--seq-lens 1024 4096 16384]
    python benchmarks/memory_throughput.py --peak   # only the fp32 matmul peak
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from measure import (
    REPO,
    machine_info,
    matmul_peak,
    memory_method,
    peak_memory,
    reset_peak_memory,
    system_busy_s,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from titans.io import atomic_save_json

HIDDEN, HEADS, HEAD_DIM, DEPTH, EXPANSION, CHUNK = 256, 4, 64, 2, 4, 16
IMPLS = ("titans-lm", "titans-pytorch")
MODES = ("fwd", "fwd+bwd")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "memory_throughput.json"


def build_model(impl: str, compile_step: bool = False) -> nn.Module:
    """The layer of ``impl`` in the benchmark config; its forward returns ``(y, state)``."""
    if impl == "titans-lm":
        from titans import NeuralMemory

        return NeuralMemory(hidden_size=HIDDEN, num_heads=HEADS, head_dim=HEAD_DIM,
                            memory_depth=DEPTH, memory_expansion=EXPANSION, chunk_size=CHUNK,
                            compile_step=compile_step)
    from titans_pytorch import MemoryMLP
    from titans_pytorch import NeuralMemory as TPNeuralMemory

    model = TPNeuralMemory(dim=HIDDEN, heads=HEADS, dim_head=HEAD_DIM, chunk_size=CHUNK,
                           model=MemoryMLP(dim=HEAD_DIM, depth=DEPTH, expansion_factor=EXPANSION))
    # Its per-head memory weights are stride-0 views (einops.repeat of one head's weights):
    # give every parameter its own contiguous storage so backward and optimizers work on it.
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_contiguous():
                setattr(module, name, nn.Parameter(param.detach().contiguous()))
    return model


def make_step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One forward (no grad) or one forward+backward to all parameters."""
    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        y = model(x)[0]
        y.float().pow(2).mean().backward()

    return forward if mode == "fwd" else forward_backward


def conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int],
                        _bias: object, _stride: object, _padding: object, _dilation: object,
                        transposed: bool, _output_padding: object, _groups: object,
                        output_mask: list[bool], **_: object) -> int:
    """FLOPs of ``aten.convolution_backward``: grad_input and grad_weight cost one forward each.

    Replaces torch's formula, which ignores ``groups`` for grad_weight and so counts a depthwise
    convolution's weight gradient once per channel (768-fold for titans-lm's q/k/v conv).
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))












def run_worker(impl: str, seq_len: int, mode: str, batch: int, repeats: int,
               device_name: str, compile_step: bool) -> dict:
    """Time, count FLOPs and measure peak memory of one (impl, T, mode) in this process."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model(impl, compile_step).to(device)
    x = torch.randn(batch, seq_len, HIDDEN, device=device)
    step = make_step(model, x, mode)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    base = reset_peak_memory(device)
    step()  # warm-up (and, with --compile-step, compilation)
    sync()
    params = list(model.parameters())
    times = []
    busy, own, wall = system_busy_s(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    others = (system_busy_s() - busy - (time.process_time() - own)) / (time.perf_counter() - wall)
    peak = peak_memory(device) - base
    # FLOPs are counted after the peak memory was read: counting allocates too.
    flop_formulas = {torch.ops.aten.convolution_backward: conv_backward_flops}
    # Compiled kernels bypass the counter, so FLOPs are counted on the same layer run eagerly.
    torch.manual_seed(0)
    eager_step = make_step(build_model(impl).to(device), x, mode)
    with FlopCounterMode(display=False, custom_mapping=flop_formulas) as counter:
        eager_step()
    best, flops = min(times), counter.get_total_flops()
    return {
        "impl": impl, "seq_len": seq_len, "mode": mode, "batch": batch, "times_s": times,
        "best_s": best, "median_s": statistics.median(times),
        "tokens_per_s": batch * seq_len / best, "flops": flops, "gflops_per_s": flops / best / 1e9,
        "peak_mem_mib": peak / 2**20, "num_params": len(params),
        "other_processes_cores": max(others, 0.0),
        "params_with_grad": sum(p.grad is not None for p in params) if mode == "fwd+bwd" else None,
    }


def spawn_worker(args: argparse.Namespace, impl: str, seq_len: int, mode: str) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(seq_len), mode,
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
           "--device", args.device] + (["--compile-step"] if args.compile_step else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"worker failed ({impl}, T={seq_len}, {mode}): exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])






def ratios(num: dict[str, dict], den: dict[str, dict], key: str) -> str:
    """``num[mode][key] / den[mode][key]`` for each mode, as text."""
    return "  ".join(f"{m} {num[m][key] / den[m][key]:.2f}x" for m in MODES)


def print_report(report: dict) -> None:
    """Table, scaling ratios and, with --compare, titans-lm / titans-pytorch ratios."""
    runs: dict[tuple[str, int], dict[str, dict]] = {}
    for r in report["results"]:
        runs.setdefault((r["impl"], r["seq_len"]), {})[r["mode"]] = r
    peak = report["peak_matmul_gflops"]
    print(f"\nfp32 matmul peak: {peak:.1f} GFLOP/s. GFLOP = matmul/conv FLOPs counted by "
          "FlopCounterMode (elementwise ops not counted); tok/s and GFLOP/s use the best time.")
    print(f"peak memory: {report['memory_method']}\n")
    head = (f"{'impl':<15}{'T':>6}{'mode':>9}{'best ms':>11}{'median ms':>11}{'tok/s':>10}"
            f"{'GFLOP':>9}{'GFLOP/s':>9}{'% peak':>8}{'peak MiB':>10}{'others':>8}")
    print(head + "\n" + "-" * len(head))
    for r in report["results"]:
        print(f"{r['impl']:<15}{r['seq_len']:>6}{r['mode']:>9}{r['best_s'] * 1e3:>11.1f}"
              f"{r['median_s'] * 1e3:>11.1f}{r['tokens_per_s']:>10.0f}{r['flops'] / 1e9:>9.2f}"
              f"{r['gflops_per_s']:>9.2f}{100 * r['gflops_per_s'] / peak:>7.1f}%"
              f"{r['peak_mem_mib']:>10.1f}{r['other_processes_cores']:>8.2f}")
    print("others = cores used on average by other processes while timing (from /proc/stat)")
    if max(r["other_processes_cores"] for r in report["results"]) > 0.1:
        print("WARNING: other processes were busy during some timings; those numbers are low")
    print()
    for impl in IMPLS:
        lens = sorted(t for i, t in runs if i == impl)
        if not lens:
            continue
        grads = runs[(impl, lens[0])]["fwd+bwd"]
        print(f"{impl}: {grads['params_with_grad']}/{grads['num_params']} parameter tensors "
              "received a gradient")
        if len(lens) > 1:
            lo, hi = lens[0], lens[-1]
            target = "; target for fwd+bwd <= 18" if (lo, hi) == (1024, 16384) else ""
            print(f"{impl}: time(T={hi}) / time(T={lo}): "
                  f"{ratios(runs[(impl, hi)], runs[(impl, lo)], 'best_s')} "
                  f"(linear: {hi / lo:.0f}x{target})")
    for t in sorted(t for i, t in runs if i == IMPLS[1]):
        print(f"throughput titans-lm / titans-pytorch at T={t}: "
              f"{ratios(runs[(IMPLS[0], t)], runs[(IMPLS[1], t)], 'tokens_per_s')}")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--compare", type=int, nargs="*", metavar="T",
                        help="also benchmark titans-pytorch's NeuralMemory (at these T; "
                        "default: all --seq-lens)")
    parser.add_argument("--peak", action="store_true", help="only measure the fp32 matmul peak")
    parser.add_argument("--compile-step", action="store_true",
                        help="titans-lm with compile_step=True (torch.compile'd chunk step)")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "T", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        impl, seq_len, mode = args.worker
        print(json.dumps(run_worker(impl, int(seq_len), mode, args.batch_size, args.repeats,
                                    args.device, args.compile_step)))
        return
    peak = matmul_peak(args.device)
    print(f"fp32 matmul peak ({args.device}, 2048^3, best of 20): {peak:.1f} GFLOP/s")
    if args.peak:
        return
    if args.compare is not None and importlib.util.find_spec("titans_pytorch") is None:
        sys.exit("--compare needs titans-pytorch: run `pip install -e .[bench]`")
    compare_lens = args.seq_lens if args.compare == [] else args.compare or []

    results = []
    for seq_len in args.seq_lens:
        for impl in IMPLS if seq_len in compare_lens else IMPLS[:1]:
            for mode in MODES:
                r = spawn_worker(args, impl, seq_len, mode)
                print(f"{impl:<15} T={seq_len:<6} {mode:<8} best {r['best_s'] * 1e3:9.1f} ms  "
                      f"{r['tokens_per_s']:9.0f} tok/s  peak {r['peak_mem_mib']:8.1f} MiB",
                      flush=True)
                results.append(r)
    report = {"machine": machine_info(args.device), "argv": sys.argv[1:],
              "config": {"batch": args.batch_size, "hidden_size": HIDDEN, "num_heads": HEADS,
                         "head_dim": HEAD_DIM, "memory_depth": DEPTH,
                         "memory_expansion": EXPANSION, "chunk_size": CHUNK,
                         "repeats": args.repeats, "dtype": "float32",
                         "compile_step": args.compile_step},
              "peak_matmul_gflops": peak, "memory_method": memory_method(args.device),
              "results": results}
    print_report(report)
    atomic_save_json(report, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
