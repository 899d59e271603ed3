"""Training and inference speed, state size and peak memory of every TitansLM variant.

For each variant (default: all six at preset "small", float32), each measurement in a fresh
subprocess:

* train:  forward+backward of the LM loss on [B, T] random tokens; tokens/s = B*T / best time of
  ``--repeats`` runs after one warm-up; peak memory of one step.
* decode: prefill T tokens, then ``--decode-tokens`` one-token steps with the carried state under
  ``torch.no_grad()``; tokens/s of the steps (B sequences at a time).
* state:  bytes held by the model state after T tokens.
* ``--stream L ...``: one stream of L random tokens through ``titans.stream`` in pieces of 1024
  with per-token losses; tokens/s and peak memory. Peak memory that does not grow with L is the
  constant-memory claim; the full-attention baseline's KV cache grows with L.

    python benchmarks/model_throughput.py [--variants mac swa] [--seq-len 1024] [--batch-size 4]
    python benchmarks/model_throughput.py --stream 16384 131072
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from measure import (
    RESULTS,
    OtherLoad,
    add_device_argument,
    check_device,
    format_mib,
    peak_memory_mib,
    reset_peak_memory,
    run_worker_process,
    save_report,
    synchronize,
    time_runs,
    warn_if_busy,
)

from titans import TitansConfig, TitansLM, stream
from titans.models import VARIANTS

DEFAULT_OUT = RESULTS / "model_throughput.json"


def build(args: argparse.Namespace, variant: str) -> TitansLM:
    torch.manual_seed(0)
    return TitansLM(TitansConfig.from_preset(args.preset, variant)).to(args.device)


def run_worker(args: argparse.Namespace, variant: str, mode: str, length: int) -> dict:
    """One measurement in this process."""
    device = torch.device(args.device)
    model = build(args, variant)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    result = {"variant": variant, "mode": mode, "length": length,
              "num_parameters": model.num_parameters()}
    if mode == "stream":
        tokens = torch.randint(0, vocab, (length,), generator=gen)
        base = reset_peak_memory(device)
        load, start = OtherLoad(), time.perf_counter()
        state = None
        for piece in stream(model, tokens, piece_len=1024):
            state = piece.state
        synchronize(device)
        elapsed = time.perf_counter() - start
        result.update(tokens_per_s=length / elapsed, seconds=elapsed,
                      state_mib=state.num_bytes() / 2**20, other_processes_cores=load.cores())
    else:
        ids = torch.randint(0, vocab, (args.batch_size, length), generator=gen).to(device)
        if mode == "train":
            def step() -> None:
                model.zero_grad(set_to_none=True)
                model(ids, labels=ids).loss.backward()
            tokens = args.batch_size * length
        else:
            with torch.no_grad():
                prefill = model(ids)
            result["state_mib"] = prefill.state.num_bytes() / 2**20
            nxt = ids[:, -1:]

            def step() -> None:
                out = prefill
                with torch.no_grad():
                    for _ in range(args.decode_tokens):
                        out = model(nxt, out.state, logits_to_keep=1)
            tokens = args.batch_size * args.decode_tokens
        base = reset_peak_memory(device)
        times, others = time_runs(step, args.repeats, device)
        result.update(tokens_per_s=tokens / min(times), best_s=min(times),
                      median_s=statistics.median(times), other_processes_cores=others)
    result["peak_mem_mib"] = peak_memory_mib(device, base)
    return result


def spawn(args: argparse.Namespace, variant: str, mode: str, length: int) -> dict:
    argv = ["--worker", variant, mode, str(length), "--preset", args.preset, "--batch-size",
            str(args.batch_size), "--repeats", str(args.repeats), "--decode-tokens",
            str(args.decode_tokens), "--device", args.device]
    return run_worker_process(Path(__file__).resolve(), argv, f"{variant}, {mode}, {length}")


def print_report(results: list[dict]) -> None:
    head = (f"{'variant':<12}{'params':>9}{'mode':>8}{'length':>9}{'tok/s':>10}{'peak MiB':>10}"
            f"{'state MiB':>11}{'others':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        state = f"{r['state_mib']:.2f}" if "state_mib" in r else "-"
        print(f"{r['variant']:<12}{r['num_parameters'] / 1e6:>8.2f}M{r['mode']:>8}"
              f"{r['length']:>9}{r['tokens_per_s']:>10.0f}{format_mib(r['peak_mem_mib'], 10)}"
              f"{state:>11}{r['other_processes_cores']:>8.2f}")
    warn_if_busy(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--stream", type=int, nargs="*", default=[], metavar="L",
                        help="also stream L tokens (B=1) per variant and report peak memory")
    parser.add_argument("--no-train", action="store_true", help="skip train and decode")
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "MODE", "LENGTH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_device(args.device)
    if args.worker:
        variant, mode, length = args.worker
        print(json.dumps(run_worker(args, variant, mode, int(length))))
        return

    jobs = [] if args.no_train else [(m, args.seq_len) for m in ("train", "decode")]
    jobs += [("stream", n) for n in args.stream]
    results = []
    for variant in args.variants:
        for mode, length in jobs:
            r = spawn(args, variant, mode, length)
            print(f"{variant:<12} {mode:<7} {length:>8}  {r['tokens_per_s']:9.0f} tok/s  "
                  f"peak{format_mib(r['peak_mem_mib'], 9)} MiB", flush=True)
            results.append(r)
    print_report(results)
    config = {"preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "repeats": args.repeats, "decode_tokens": args.decode_tokens, "dtype": "float32"}
    save_report(args.out, args.device, config, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
