"""The recipe experiments of docs/long-context.md ("Why the models did not retrieve"): train one
model from scratch on task items (loss on the answers) with ``titans.train.train``, then score it
with ``titans.evals.evaluate_task`` at several lengths (needle depths 0.1 / 0.5 / 0.9).

    python docs/long-context/recipe_runs.py --name deep-n1-128 --variant lmm --seq-len 128 \
        --window 32 --steps 600 --tasks niah1 --eval-lengths 128 512 2048 8192 \
        --set memory_max_lr=16.0 memory_conv_init='"induction"'
    python docs/long-context/recipe_runs.py --name deep-cur-1k --init runs/recipe/deep-n1-128 \
        --seq-len 1024 --batch 8 --steps 200 ... (the same model flags)

Writes ``<out>/<name>/`` (the run directory, which ``titans eval niah --run`` reads too) and
``<out>/<name>.json`` (settings, training time, throughput, final loss and the accuracy per task
and length). ``--set`` takes TitansConfig fields as ``key=JSON``.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from titans.config_files import DataConfig
from titans.evals.long_context import evaluate_task
from titans.evals.tasks import TaskBatches, needs_depth
from titans.experiments.long_context import task_generators
from titans.models import TitansConfig, TitansLM, count_parameters
from titans.runs import load_weights
from titans.train import TrainConfig, train


class CopyBatches:
    """The dense copy probe as training batches (``--tasks copy``): each row is spans of
    ``span`` random token ids, each followed by its exact repeat, with the loss on the repeats
    (labels -100 on the first copy). Attention learns it in a few hundred steps, so it can warm
    up the copying (induction) a model needs before the sparse needle signal (``--init``)."""

    def __init__(self, vocab_size: int, span: int = 32) -> None:
        self.vocab_size, self.span = vocab_size, span

    def __call__(self, seq_len: int, batch_size: int, step: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step * world_size + rank)
        pairs = -(-seq_len // (2 * self.span))
        spans = torch.randint(0, self.vocab_size, (batch_size, pairs, 1, self.span), generator=g)
        ids = spans.expand(-1, -1, 2, -1).reshape(batch_size, -1)[:, :seq_len]
        labels = ids.clone().view(batch_size, -1)
        first = (torch.arange(labels.shape[1]) // self.span) % 2 == 0
        labels[:, first] = -100
        return ids.contiguous(), labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="runs/recipe")
    p.add_argument("--variant", default="lmm")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=64, help="window_size and segment_len")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tasks", nargs="+", default=["niah1", "niah2"])
    p.add_argument("--weights", nargs="+", type=float, default=None)
    p.add_argument("--eval-tasks", nargs="+", default=None, help="default: --tasks")
    p.add_argument("--eval-lengths", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--items", type=int, default=4, help="items per (length, depth) cell")
    p.add_argument("--set", nargs="*", default=[], help="TitansConfig fields, key=JSON")
    p.add_argument("--init", default=None,
                   help="start from this run's weights (TrainConfig.init_from): a curriculum")
    p.add_argument("--score-context", action="store_true",
                   help="loss on every token of an item, not only its answers")
    a = p.parse_args()

    data = DataConfig(source="default", tokenizer="bpe:8192")
    tokenizer, generators = task_generators(data)
    extra = {key: json.loads(value) for key, value in (kv.split("=", 1) for kv in a.set)}
    cfg = TitansConfig(variant=a.variant, vocab_size=tokenizer.vocab_size, hidden_size=a.hidden,
                       num_hidden_layers=a.layers, num_heads=a.heads, window_size=a.window,
                       segment_len=a.window, chunk_size=16, **extra)
    out = Path(a.out) / a.name
    shutil.rmtree(out, ignore_errors=True)
    train_cfg = TrainConfig(out_dir=str(out), seq_len=a.seq_len, batch_size=a.batch,
                            max_steps=a.steps, lr=a.lr, warmup_steps=50, eval_every=10**6,
                            save_every=10**6, log_every=25, progress=False,
                            init_from=a.init)
    start = time.time()
    batches = (CopyBatches(tokenizer.vocab_size) if a.tasks == ["copy"]
               else TaskBatches(generators["train"], a.tasks, a.weights, a.score_context))
    # data= records data.json, which makes the run usable by `titans eval niah|babi --run`.
    summary = train(cfg, train_cfg, batches, data=data)
    result = {"name": a.name, "args": vars(a), "parameters": count_parameters(cfg),
              "train_s": time.time() - start, "tokens_per_s": summary["tokens_per_s"],
              "final_loss": summary["final_train_loss"], "accuracy": {}}
    print(f"{a.name}: trained {result['train_s']:.0f} s, final loss "
          f"{result['final_loss']:.3f}, {result['tokens_per_s']:.0f} tok/s", flush=True)
    model = TitansLM(cfg)
    load_weights(model, out)
    model.eval()
    for task in a.eval_tasks or [t for t in a.tasks if t != "copy"]:
        depths = [0.1, 0.5, 0.9] if needs_depth(task) else None  # bAbI scatters its facts
        rows = evaluate_task(model, generators["test"], task, a.eval_lengths, depths, a.items)
        for length in a.eval_lengths:
            here = [r for r in rows if r["length"] == length]
            result["accuracy"][f"{task}@{length}"] = (sum(r["correct"] for r in here)
                                                      / sum(r["items"] for r in here))
        print(task, {k: round(v, 2) for k, v in result["accuracy"].items()
                     if k.startswith(task)}, flush=True)
    (Path(a.out) / f"{a.name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
