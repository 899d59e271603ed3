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
(JSON, default benchmarks/results/memory_throughput.json). The summary gives, for fwd+bwd, the
titans-lm / titans-pytorch ratio at each compared T, the % of the matmul peak at each T and
time(longest T) / time(shortest T), then issue 11's targets (>= 8x titans-pytorch and >= 45% of
the peak at T=4K, time(16K) / time(1K) <= 17) with the measured values.

``--device`` (cpu by default; cuda, cuda:N or mps) puts the layer, its input and the matmul-peak
product on that device in every worker and synchronises it around each timed run; a device this
machine does not have is a one-line error.

    python benchmarks/memory_throughput.py [--compare [T ...]] [--seq-lens 1024 4096 16384]
    python benchmarks/memory_throughput.py --device cuda --compare 1024 4096
    python benchmarks/memory_throughput.py --peak   # only the fp32 matmul peak
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from measure import (
    RESULTS,
    add_device_argument,
    check_device,
    format_mib,
    matmul_peak,
    peak_memory_mib,
    reset_peak_memory,
    run_worker_process,
    save_report,
    time_runs,
    warn_if_busy,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

HIDDEN, HEADS, HEAD_DIM, DEPTH, EXPANSION, CHUNK = 256, 4, 64, 2, 4, 16
IMPLS = ("titans-lm", "titans-pytorch")
MODES = ("fwd", "fwd+bwd")
DEFAULT_OUT = RESULTS / "memory_throughput.json"
# Issue 11's targets, all for titans-lm's fwd+bwd: tokens/s over titans-pytorch's and % of the
# fp32 matmul peak at TARGET_T, and time(long) / time(short).
TARGET_T, TARGET_SPEEDUP, TARGET_PEAK_PCT = 4096, 8.0, 45.0
TARGET_SCALING = (1024, 16384, 17.0)


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
    base = reset_peak_memory(device)
    # The warm-up run also compiles, with --compile-step.
    times, others = time_runs(make_step(model, x, mode), repeats, device)
    peak = peak_memory_mib(device, base)
    params = list(model.parameters())
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
        "peak_mem_mib": peak, "num_params": len(params), "other_processes_cores": others,
        "params_with_grad": sum(p.grad is not None for p in params) if mode == "fwd+bwd" else None,
    }


def spawn_worker(args: argparse.Namespace, impl: str, seq_len: int, mode: str) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    argv = ["--worker", impl, str(seq_len), mode, "--batch-size", str(args.batch_size),
            "--repeats", str(args.repeats), "--device", args.device]
    argv += ["--compile-step"] if args.compile_step else []
    return run_worker_process(Path(__file__).resolve(), argv, f"{impl}, T={seq_len}, {mode}")


def ratios(num: dict[str, dict], den: dict[str, dict], key: str) -> str:
    """``num[mode][key] / den[mode][key]`` for each mode, as text."""
    return "  ".join(f"{m} {num[m][key] / den[m][key]:.2f}x" for m in MODES)


def print_report(report: dict) -> None:
    """Table, scaling ratios, with --compare titans-lm / titans-pytorch ratios, and the targets."""
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
              f"{format_mib(r['peak_mem_mib'], 10)}{r['other_processes_cores']:>8.2f}")
    warn_if_busy(report["results"])
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
            print(f"{impl}: time(T={hi}) / time(T={lo}): "
                  f"{ratios(runs[(impl, hi)], runs[(impl, lo)], 'best_s')} "
                  f"(linear: {hi / lo:.0f}x)")
        print(f"{impl}: % of the fp32 matmul peak, fwd+bwd: " + "  ".join(
            f"T={t} {100 * runs[(impl, t)]['fwd+bwd']['gflops_per_s'] / peak:.1f}%"
            for t in lens))
    for t in sorted(t for i, t in runs if i == IMPLS[1]):
        print(f"throughput titans-lm / titans-pytorch at T={t}: "
              f"{ratios(runs[(IMPLS[0], t)], runs[(IMPLS[1], t)], 'tokens_per_s')}")
    print_targets(runs, peak, report["config"]["compile_step"])


def print_targets(runs: dict[tuple[str, int], dict[str, dict]], peak: float,
                  compile_step: bool) -> None:
    """Issue 11's three layer targets (titans-lm fwd+bwd), each measured value and whether it is
    met; a target whose runs are missing says which runs it needs."""
    def fwd_bwd(impl: str, t: int) -> dict | None:
        return runs.get((impl, t), {}).get("fwd+bwd")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lm, tp = fwd_bwd(IMPLS[0], TARGET_T), fwd_bwd(IMPLS[1], TARGET_T)
    lo, hi, max_scaling = TARGET_SCALING
    short, long = fwd_bwd(IMPLS[0], lo), fwd_bwd(IMPLS[0], hi)
    lines = []
    if lm and tp:
        speedup = lm["tokens_per_s"] / tp["tokens_per_s"]
        lines.append(f"tokens/s over titans-pytorch at T={TARGET_T}: {speedup:.2f}x "
                     f"(target >= {TARGET_SPEEDUP:g}x: {verdict(speedup >= TARGET_SPEEDUP)})")
    else:
        lines.append(f"tokens/s over titans-pytorch at T={TARGET_T}: not measured "
                     f"(needs --seq-lens {TARGET_T} and --compare {TARGET_T})")
    if lm:
        pct = 100 * lm["gflops_per_s"] / peak
        lines.append(f"% of the fp32 matmul peak at T={TARGET_T}: {pct:.1f}% "
                     f"(target >= {TARGET_PEAK_PCT:g}%: {verdict(pct >= TARGET_PEAK_PCT)})")
    else:
        lines.append(f"% of the fp32 matmul peak at T={TARGET_T}: not measured")
    if short and long:
        scaling = long["best_s"] / short["best_s"]
        lines.append(f"time(T={hi}) / time(T={lo}): {scaling:.2f} "
                     f"(target <= {max_scaling:g}: {verdict(scaling <= max_scaling)})")
    else:
        lines.append(f"time(T={hi}) / time(T={lo}): not measured (needs --seq-lens {lo} {hi})")
    build = "compile_step=True" if compile_step else "eager (the layer's default)"
    print(f"\ntargets (issue 11), titans-lm {build}, fwd+bwd:")
    for line in lines:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--compare", type=int, nargs="*", metavar="T",
                        help="also benchmark titans-pytorch's NeuralMemory (at these T; "
                        "default: all --seq-lens)")
    parser.add_argument("--peak", action="store_true", help="only measure the fp32 matmul peak")
    parser.add_argument("--compile-step", action="store_true",
                        help="titans-lm with compile_step=True (torch.compile'd chunk step)")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "T", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_device(args.device)
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
                      f"{r['tokens_per_s']:9.0f} tok/s  peak"
                      f"{format_mib(r['peak_mem_mib'], 9)} MiB", flush=True)
                results.append(r)
    config = {"batch": args.batch_size, "hidden_size": HIDDEN, "num_heads": HEADS,
              "head_dim": HEAD_DIM, "memory_depth": DEPTH, "memory_expansion": EXPANSION,
              "chunk_size": CHUNK, "repeats": args.repeats, "dtype": "float32",
              "compile_step": args.compile_step}
    report = save_report(args.out, args.device, config, results, peak_matmul_gflops=peak)
    print_report(report)
    print(f"\nwrote {args.out}")

if __name__ == "__main__":
    main()
