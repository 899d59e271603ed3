"""Training and inference speed, state size and peak memory of every TitansLM variant.

For each variant (default: all six at preset "small", float32), each measurement in a fresh
subprocess:

* train:  forward+backward of the LM loss on [B, T] random tokens, at every ``--seq-len`` T.
  B = max(1, ``--tokens-per-step`` // T) (default 4096: B=4 at T=1024, B=1 from T=4096 on), so
  the work per step stays comparable as T grows. tokens/s = B*T / best time of ``--repeats`` runs
  after one warm-up; peak memory of one step.
* decode: prefill P tokens (every ``--prefill`` P) in pieces of ``--piece-len`` with the carried
  state and the logits of the last token only, then ``--decode-tokens`` one-token steps under
  ``torch.no_grad()``; tokens/s of the steps, ``--batch-size`` sequences at a time (default 4).
* latency (``--latency [P ...]``, default P=1024): the same decode at B=1; the median and 90th
  percentile of the single steps' times (all timed repeats pooled).
* state:  bytes held by the model state after the prefill.
* ``--stream L ...``: one stream of L random tokens through ``titans.stream`` in pieces of
  ``--piece-len`` with per-token losses; tokens/s and peak memory. Peak memory that does not grow
  with L is the constant-memory claim; the full-attention baseline's KV cache grows with L.

With Transformer++ ("transformer") among the variants, the summary gives every variant's tok/s
relative to it: train at each T, with the crossover length (the smallest measured T at which the
variant trains at least as fast, or "none up to" the largest T), decode at each P and the
single-step latency at each P; then issue 11's targets with the measured values. ``--plot``
writes tok/s against T (and decode tok/s against P) to docs/benchmarks/tok_s_vs_T.png, as
``benchmarks/plot_throughput.py`` does from a results file.

``--device`` (cpu by default; cuda, cuda:N or mps) builds models and inputs on that device in
every worker and synchronises it around each timed step; a device this machine does not have is a
one-line error.

    python benchmarks/model_throughput.py [--variants mac swa] [--seq-len 1024 8192]
    python benchmarks/model_throughput.py --no-train --prefill 1024 8192 32768 --latency 1024
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
    REPO,
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
from plot_throughput import DEFAULT_PNG, plot_tok_s_vs_length

from titans import TitansConfig, TitansLM, stream
from titans.models import VARIANTS
from titans.models.lm import TitansOutput

DEFAULT_OUT = RESULTS / "model_throughput.json"
BASELINE = "transformer"  # Transformer++: what the ratios are relative to
# Issue 11's targets: (mode, length, variants, bound, "min" or "max") on tok/s relative to
# Transformer++ (train, decode) or on the step-time ratio (latency).
TARGETS = (("train", 1024, ("mac", "mag", "mal"), 0.6, "min"),
           ("train", 8192, ("mac", "mag", "mal"), 1.0, "min"),
           ("decode", 1024, ("mac", "mag", "mal", "lmm"), 1.0, "min"),
           ("decode", 32768, ("mac", "mag", "mal", "lmm"), 3.0, "min"),
           ("latency", 1024, ("lmm",), 2.0, "max"))


def train_batch(seq_len: int, tokens_per_step: int) -> int:
    """The training batch size at length ``seq_len``: max(1, tokens_per_step // seq_len)."""
    return max(1, tokens_per_step // seq_len)


def prefill(model: TitansLM, ids: torch.Tensor, piece_len: int) -> TitansOutput:
    """Feed ``ids`` [B, P] through ``model`` in pieces of ``piece_len`` with the carried state,
    keeping only the last position's logits, so that memory stays bounded for any P (but for
    the full-attention KV cache itself)."""
    out = None
    with torch.no_grad():
        for piece in ids.split(piece_len, dim=1):
            out = model(piece, None if out is None else out.state, logits_to_keep=1)
    return out


def run_worker(args: argparse.Namespace, variant: str, mode: str, length: int,
               batch: int) -> dict:
    """One measurement in this process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.from_preset(args.preset, variant)).to(device)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    result = {"variant": variant, "mode": mode, "length": length, "batch_size": batch,
              "num_parameters": model.num_parameters()}
    if mode == "stream":
        tokens = torch.randint(0, vocab, (batch, length), generator=gen)
        base = reset_peak_memory(device)
        load, start = OtherLoad(), time.perf_counter()
        state = None
        for piece in stream(model, tokens, piece_len=args.piece_len):
            state = piece.state
        synchronize(device)
        elapsed = time.perf_counter() - start
        result.update(tokens_per_s=batch * length / elapsed, seconds=elapsed,
                      state_mib=state.num_bytes() / 2**20, other_processes_cores=load.cores())
    elif mode == "train":
        ids = torch.randint(0, vocab, (batch, length), generator=gen).to(device)

        def train_step() -> None:
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()

        base = reset_peak_memory(device)
        times, others = time_runs(train_step, args.repeats, device)
        result.update(tokens_per_s=batch * length / min(times), best_s=min(times),
                      median_s=statistics.median(times), other_processes_cores=others)
    else:  # decode, latency
        ids = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
        start = time.perf_counter()
        prefilled = prefill(model, ids, args.piece_len)
        synchronize(device)
        result.update(prefill_tokens_per_s=batch * length / (time.perf_counter() - start),
                      state_mib=prefilled.state.num_bytes() / 2**20)
        nxt, step_s = ids[:, -1:], []

        def decode() -> None:
            state = prefilled.state  # every run decodes from the same prefill
            with torch.no_grad():
                for _ in range(args.decode_tokens):
                    t0 = time.perf_counter()
                    state = model(nxt, state, logits_to_keep=1).state
                    synchronize(device)
                    step_s.append(time.perf_counter() - t0)

        base = reset_peak_memory(device)
        times, others = time_runs(decode, args.repeats, device)
        steps = step_s[args.decode_tokens:]  # without the warm-up run
        p90 = statistics.quantiles(steps, n=10)[-1] if len(steps) > 1 else steps[0]
        result.update(tokens_per_s=batch * args.decode_tokens / min(times), best_s=min(times),
                      median_s=statistics.median(times), other_processes_cores=others,
                      step_ms_median=1e3 * statistics.median(steps), step_ms_p90=1e3 * p90)
    result["peak_mem_mib"] = peak_memory_mib(device, base)
    return result


def spawn(args: argparse.Namespace, variant: str, mode: str, length: int, batch: int) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    argv = ["--worker", variant, mode, str(length), str(batch), "--preset", args.preset,
            "--repeats", str(args.repeats), "--decode-tokens", str(args.decode_tokens),
            "--piece-len", str(args.piece_len), "--device", args.device]
    return run_worker_process(Path(__file__).resolve(), argv,
                              f"{variant}, {mode}, length {length}, B={batch}")


def jobs(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(mode, length, batch) of every measurement asked for, per variant."""
    todo = [] if args.no_train else [("train", t, train_batch(t, args.tokens_per_step))
                                     for t in args.seq_len]
    todo += [] if args.no_decode else [("decode", p, args.batch_size) for p in args.prefill]
    if args.latency is not None:
        todo += [("latency", p, 1) for p in args.latency or [1024]]
    return todo + [("stream", n, 1) for n in args.stream]


def summarize(results: list[dict]) -> dict:
    """Every variant's ratio to Transformer++ per (mode, length): tok/s ratios for train, decode
    and stream, the median step-time ratio for latency; the train crossover length per variant
    (None: Transformer++ stays faster at every measured T). Empty without Transformer++."""
    base = {(r["mode"], r["length"]): r for r in results if r["variant"] == BASELINE}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        b = base.get((r["mode"], r["length"]))
        if b is None:
            continue
        value = (r["step_ms_median"] / b["step_ms_median"] if r["mode"] == "latency"
                 else r["tokens_per_s"] / b["tokens_per_s"])
        ratios.setdefault(r["mode"], {}).setdefault(r["variant"], {})[str(r["length"])] = value
    crossover = {v: next((int(t) for t, x in sorted(by_t.items(), key=lambda i: int(i[0]))
                          if x >= 1.0), None)
                 for v, by_t in ratios.get("train", {}).items() if v != BASELINE}
    return {"baseline": BASELINE, "ratios": ratios, "train_crossover": crossover}


def print_report(report: dict) -> None:
    """The table of every measurement, the ratios to Transformer++ and issue 11's targets."""
    results, config = report["results"], report["config"]
    head = (f"{'variant':<12}{'params':>9}{'mode':>9}{'length':>9}{'B':>4}{'tok/s':>10}"
            f"{'ms/step':>9}{'peak MiB':>10}{'state MiB':>11}{'others':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        state = f"{r['state_mib']:.2f}" if "state_mib" in r else "-"
        step = f"{r['step_ms_median']:.1f}" if "step_ms_median" in r else "-"
        print(f"{r['variant']:<12}{r['num_parameters'] / 1e6:>8.2f}M{r['mode']:>9}"
              f"{r['length']:>9}{r['batch_size']:>4}{r['tokens_per_s']:>10.0f}{step:>9}"
              f"{format_mib(r['peak_mem_mib'], 10)}{state:>11}{r['other_processes_cores']:>8.2f}")
    print("ms/step = median time of one decode step (decode, latency)")
    warn_if_busy(results)
    summary = report["summary"]
    if not summary["ratios"]:
        print(f"\nno ratios: {BASELINE} (Transformer++) was not measured")
        return
    titles = {"train": "train tok/s / Transformer++ at T "
                       f"(B = max(1, {config['tokens_per_step']} // T))",
              "decode": "decode tok/s / Transformer++ after a prefill of P "
                        f"(B={config['batch_size']})",
              "latency": "single-step decode time / Transformer++'s after a prefill of P (B=1)",
              "stream": "stream tok/s / Transformer++ over L tokens (B=1)"}
    for mode, by_variant in summary["ratios"].items():
        lengths = sorted({int(t) for by_t in by_variant.values() for t in by_t})
        extra = "  crossover" if mode == "train" else ""
        print(f"\n{titles[mode]}\n{'variant':<12}" + "".join(f"{t:>9}" for t in lengths) + extra)
        for variant, by_t in by_variant.items():
            if variant == BASELINE:
                continue
            cells = "".join(f"{by_t[str(t)]:>8.2f}x" if str(t) in by_t else f"{'-':>9}"
                            for t in lengths)
            if mode == "train":
                cross = summary["train_crossover"][variant]
                cells += f"  {cross}" if cross else f"  none up to {max(map(int, by_t))}"
            print(f"{variant:<12}{cells}")
    print_targets(summary["ratios"])


def print_targets(ratios: dict[str, dict[str, dict[str, float]]]) -> None:
    """Issue 11's model-level targets with the measured ratios; a target none of whose runs was
    made names the option that makes them."""
    print("\ntargets (issue 11):")
    names = {"train": "train tok/s at T={} / Transformer++'s",
             "decode": "decode tok/s after P={} / Transformer++'s",
             "latency": "B=1 decode step time after P={} / Transformer++'s"}
    options = {"train": "--seq-len", "decode": "--prefill", "latency": "--latency"}
    for mode, length, variants, bound, kind in TARGETS:
        measured = {v: ratios.get(mode, {}).get(v, {}).get(str(length)) for v in variants}
        cells = []
        for v, x in measured.items():
            ok = x is not None and (x >= bound if kind == "min" else x <= bound)
            cells.append(f"{v} not measured" if x is None
                         else f"{v} {x:.2f}x {'met' if ok else 'NOT met'}")
        if all(x is None for x in measured.values()):
            cells = [f"not measured (needs {options[mode]} {length} and {BASELINE})"]
        sign = ">=" if kind == "min" else "<="
        print(f"  {names[mode].format(length)} {sign} {bound:g}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[1024], metavar="T",
                        help="training lengths (default 1024)")
    parser.add_argument("--tokens-per-step", type=int, default=4096, metavar="N",
                        help="training batch at length T: max(1, N // T) (default 4096)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="decode batch (default 4; latency runs at 1)")
    parser.add_argument("--prefill", type=int, nargs="+", default=[1024], metavar="P",
                        help="decode after prefills of these lengths (default 1024)")
    parser.add_argument("--latency", type=int, nargs="*", metavar="P",
                        help="also time single decode steps at B=1 after these prefills "
                        "(default 1024)")
    parser.add_argument("--piece-len", type=int, default=1024,
                        help="prefill and stream piece length (default 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--stream", type=int, nargs="*", default=[], metavar="L",
                        help="also stream L tokens (B=1) per variant and report peak memory")
    parser.add_argument("--no-train", action="store_true", help="skip the training runs")
    parser.add_argument("--no-decode", action="store_true", help="skip the B>1 decode runs")
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, nargs="?", const=DEFAULT_PNG, metavar="PNG",
                        help="also plot tok/s against length (default path: "
                        f"{DEFAULT_PNG.relative_to(REPO)})")
    parser.add_argument("--worker", nargs=4, metavar=("VARIANT", "MODE", "LENGTH", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_device(args.device)
    if args.worker:
        variant, mode, length, batch = args.worker
        print(json.dumps(run_worker(args, variant, mode, int(length), int(batch))))
        return

    todo = jobs(args)
    if not args.no_train:
        print("train batch per T: " + ", ".join(
            f"T={t}: B={b}" for m, t, b in todo if m == "train")
            + f" (B = max(1, {args.tokens_per_step} // T))")
    results = []
    for mode, length, batch in todo:  # all variants of one length back to back
        for variant in args.variants:
            r = spawn(args, variant, mode, length, batch)
            step = f"  step {r['step_ms_median']:7.1f} ms" if mode == "latency" else ""
            print(f"{variant:<12} {mode:<8} {length:>8} B={batch:<3} {r['tokens_per_s']:9.0f} "
                  f"tok/s  peak{format_mib(r['peak_mem_mib'], 9)} MiB{step}", flush=True)
            results.append(r)
    config = {"preset": args.preset, "seq_lens": args.seq_len,
              "tokens_per_step": args.tokens_per_step, "batch_size": args.batch_size,
              "prefill_lens": args.prefill, "piece_len": args.piece_len,
              "repeats": args.repeats, "decode_tokens": args.decode_tokens, "dtype": "float32"}
    report = save_report(args.out, args.device, config, results, summary=summarize(results))
    print_report(report)
    print(f"\nwrote {args.out}")
    if args.plot is not None:
        try:
            plot_tok_s_vs_length(report, args.plot)
            print(f"wrote {args.plot}")
        except ValueError as err:
            print(f"no plot: {err}")


if __name__ == "__main__":
    main()
