"""The paper's DNA experiment (§5.5, Table 4) at CPU scale (``titans dna``): nucleotide language
models pre-trained side by side, then each fine-tuned as a sequence classifier and scored.

1. Pre-training: every model of the ``models`` section (by default the memory alone, LMM, and
   a Transformer++ of matched size) trains as a nucleotide LM on the ``data`` corpus (default
   ``dna:dm3-upstream``, tokenizer ``nucleotide``) with the library's training loop
   (:func:`titans.train.train`: checkpoints, evaluation, resume), then is scored on held-out
   regions: loss and perplexity per nucleotide.
2. Fine-tuning: its weights start a :class:`~titans.models.classification.SequenceClassifier`
   trained on the ``task`` (default: coding vs non-coding windows of the Leptospira genome;
   ``genomic-benchmarks:<folder>``: a GenomicsBenchmarks data set), then scored by accuracy on
   the task's validation and test splits, next to the majority-class baseline.

``out`` holds one run directory per model (the LM checkpoint, ``finetune.json``) and the report
``results.json``. With ``resume`` a stage that has finished is read back, not run again; without
it an ``out`` that holds results is refused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from titans import runs
from titans.checks import check_bool, check_choice, check_int, check_number
from titans.config_files import DataConfig, build_dataclass, check_sections
from titans.data.dna import VOCAB, encode_bases
from titans.data.dna_tasks import (
    LabelledSequences,
    gc_threshold_accuracy,
    leptospira_coding_task,
    load_genomic_benchmark,
)
from titans.data.pipeline import prepare
from titans.distributed import resolve_device
from titans.evals import evaluate_perplexity
from titans.experiments.compare import model_configs
from titans.io import atomic_save_json
from titans.models import TitansLM, count_parameters
from titans.models.classification import POOLINGS, SequenceClassifier
from titans.runtime import RuntimeConfig
from titans.train import TrainConfig, lr_multiplier, param_groups, train

DNA_SECTIONS = ("models", "match_parameters", "data", "train", "task", "finetune", "runtime")
RESULTS_FILE = "results.json"
FINETUNE_FILE = "finetune.json"
SCRATCH_FILE = "finetune_scratch.json"
CODING_TASK = "coding:leptospira"
BENCHMARK_PREFIX = "genomic-benchmarks:"
PAD_ID = 0  # the EOS id: right padding, never read (see SequenceClassifier)


@dataclass
class DnaTaskConfig:
    """The classification task: ``source`` ``"coding:leptospira"`` (windows of ``length``
    bases every ``stride`` bases, split by genome blocks of ``block_len``; see
    :func:`titans.data.dna_tasks.coding_windows`) or ``"genomic-benchmarks:<folder>"`` (a
    GenomicsBenchmarks data set folder; ``validation_fraction`` of train held out). Sequences
    longer than ``max_length`` (None: no limit) keep their first ``max_length`` bases."""

    source: str = CODING_TASK
    length: int = 200
    stride: int = 50
    block_len: int = 20000
    validation_fraction: float = 0.1
    max_length: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not (
                self.source == CODING_TASK or (self.source.startswith(BENCHMARK_PREFIX)
                                               and len(self.source) > len(BENCHMARK_PREFIX))):
            raise ValueError(f"task.source must be {CODING_TASK!r} or "
                             f"'{BENCHMARK_PREFIX}<folder>', got {self.source!r}")
        for name in ("length", "stride", "block_len"):
            check_int(f"task.{name}", getattr(self, name), 1)
        check_int("task.max_length", self.max_length, 1, optional=True)
        check_int("task.seed", self.seed, 0)
        check_number("task.validation_fraction", self.validation_fraction, "in [0, 1)",
                     lambda f: 0 <= f < 1)


@dataclass
class FinetuneConfig:
    """Fine-tuning of each pre-trained model as a classifier: ``steps`` AdamW steps of
    ``batch_size`` sequences (a seeded shuffle, epoch after epoch), warmup + cosine schedule as
    in pre-training, gradient clipping at ``grad_clip``, the classifier's ``pooling``
    (:data:`~titans.models.classification.POOLINGS`). ``max_eval``: score at most this many
    sequences of each held-out split (a seeded subsample; None: all). ``scratch_baseline``:
    also fine-tune each model from a fresh initialisation (same config and settings, no
    pre-training), which shows what pre-training adds."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    pooling: str = "mean"
    eval_batch_size: int = 64
    max_eval: int | None = None
    log_every: int = 25
    seed: int = 0
    scratch_baseline: bool = False

    def __post_init__(self) -> None:
        check_bool("finetune.scratch_baseline", self.scratch_baseline)
        for name in ("steps", "batch_size", "eval_batch_size", "log_every"):
            check_int(f"finetune.{name}", getattr(self, name), 1)
        for name in ("warmup_steps", "seed"):
            check_int(f"finetune.{name}", getattr(self, name), 0)
        check_int("finetune.max_eval", self.max_eval, 1, optional=True)
        check_number("finetune.lr", self.lr, "> 0", lambda v: v > 0)
        check_number("finetune.min_lr_ratio", self.min_lr_ratio, "in [0, 1]",
                     lambda v: 0 <= v <= 1)
        for name in ("weight_decay", "grad_clip"):
            check_number(f"finetune.{name}", getattr(self, name), ">= 0", lambda v: v >= 0)
        check_choice("finetune.pooling", self.pooling, POOLINGS)


def load_task(cfg: DnaTaskConfig) -> dict[str, LabelledSequences]:
    """The task's ``{"train", "validation", "test"}`` labelled sequences."""
    if cfg.source == CODING_TASK:
        task = leptospira_coding_task(cfg.length, cfg.stride, cfg.block_len, cfg.seed)
    else:
        task = load_genomic_benchmark(cfg.source[len(BENCHMARK_PREFIX):],
                                      cfg.validation_fraction, cfg.seed)
    if cfg.max_length is not None:
        task = {split: LabelledSequences([s[:cfg.max_length] for s in d.sequences], d.labels,
                                         d.classes) for split, d in task.items()}
    return task


def encode_task(data: LabelledSequences) -> list[np.ndarray]:
    """Every sequence's token ids (int64)."""
    return [encode_bases(s, f"sequence {i}") for i, s in enumerate(data.sequences)]


def pad_batch(encoded: list[np.ndarray], rows: np.ndarray,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of ``encoded`` right-padded with :data:`PAD_ID`: ids [B, T_max] and
    lengths [B]."""
    lengths = np.array([len(encoded[i]) for i in rows])
    ids = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
    for row, i in enumerate(rows):
        ids[row, :lengths[row]] = encoded[i]
    return torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)


@torch.no_grad()
def accuracy(classifier: SequenceClassifier, encoded: list[np.ndarray], labels: np.ndarray,
             batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``classifier`` on the encoded sequences (eval mode; sequences of
    similar length batched together, which changes no result)."""
    was_training = classifier.training
    classifier.eval()
    order = np.argsort([len(e) for e in encoded], kind="stable")
    correct = 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, lengths = pad_batch(encoded, rows, device)
        predicted = classifier(ids, lengths).argmax(-1).cpu().numpy()
        correct += int((predicted == labels[rows]).sum())
    classifier.train(was_training)
    return correct / len(order)


def finetune(classifier: SequenceClassifier, task: dict[str, LabelledSequences],
             cfg: FinetuneConfig, device: torch.device, name: str = "") -> dict[str, Any]:
    """Train ``classifier`` on ``task["train"]`` for ``cfg.steps`` steps (cross-entropy), then
    score it on the held-out splits. Returns ``{"train_loss" (mean of the last ``log_every``
    steps), "accuracy": {"validation", "test"}, "eval_sequences": {split: n}, "steps",
    "train_time_s", "eval_time_s"}``; prints a progress line every ``log_every`` steps."""
    torch.manual_seed(cfg.seed)
    classifier.to(device).train()
    encoded = {split: encode_task(d) for split, d in task.items()}
    labels = {split: d.labels for split, d in task.items()}
    rng = np.random.default_rng(cfg.seed)
    for split in ("validation", "test"):  # the seeded subsample of each held-out split
        if cfg.max_eval is not None and len(encoded[split]) > cfg.max_eval:
            keep = np.sort(rng.choice(len(encoded[split]), cfg.max_eval, replace=False))
            encoded[split] = [encoded[split][i] for i in keep]
            labels[split] = labels[split][keep]
    optimizer = torch.optim.AdamW(param_groups(classifier, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.95))
    n_train = len(encoded["train"])
    order = np.concatenate([rng.permutation(n_train)
                            for _ in range(math.ceil(cfg.steps * cfg.batch_size / n_train))])
    start, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        lr = cfg.lr * lr_multiplier(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        ids, lengths = pad_batch(encoded["train"], rows, device)
        target = torch.from_numpy(labels["train"][rows]).to(device)
        loss = F.cross_entropy(classifier(ids, lengths), target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning {name} diverged at step {step + 1}: loss "
                                     f"{loss.item()} (try a lower finetune.lr)")
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - start
            print(f"  finetune {name} step {step + 1}/{cfg.steps}: loss "
                  f"{np.mean(losses[-cfg.log_every:]):.4f}, lr {lr:.2e}, {elapsed:.0f} s",
                  flush=True)
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    scores = {split: accuracy(classifier, encoded[split], labels[split], cfg.eval_batch_size,
                              device) for split in ("validation", "test")}
    return {"train_loss": float(np.mean(losses[-cfg.log_every:])), "accuracy": scores,
            "eval_sequences": {split: len(encoded[split]) for split in scores},
            "steps": cfg.steps, "train_time_s": train_time,
            "eval_time_s": time.perf_counter() - start}


def finetune_stage(path: Path, backbone: TitansLM, task: dict[str, LabelledSequences],
                   cfg: FinetuneConfig, settings: dict[str, Any], device: torch.device,
                   name: str, resume: bool) -> dict[str, Any]:
    """:func:`finetune` a classifier on ``backbone`` and save its result (with the ``settings``
    it was made with) atomically at ``path``; with ``resume``, a result already at ``path`` is
    read back instead, if it was made with the same settings (else ``ValueError``)."""
    if resume and path.exists():
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("settings") != settings:
            raise ValueError(f"{path} was fine-tuned with other task or finetune settings than "
                             "these: choose another --out (or delete it to fine-tune again)")
        print(f"  fine-tuning read back from {path}", flush=True)
    else:
        classifier = SequenceClassifier(backbone, len(task["train"].classes), cfg.pooling)
        result = finetune(classifier, task, cfg, device, name)
        result.update(classifier_parameters=classifier.num_parameters(), settings=settings)
        atomic_save_json(result, path)
    print(f"  {name} accuracy: validation {result['accuracy']['validation']:.4f}, test "
          f"{result['accuracy']['test']:.4f}", flush=True)
    return result


@dataclass
class DnaJob:
    """A DNA config's sections, validated: the pre-training ``data``, the ``task``, the
    ``finetune`` settings, the ``runtime``, the ``train`` values (a :class:`TrainConfig` without
    its ``out_dir``, which each model's run directory sets), the ``models`` sections and
    whether their parameter counts are matched."""

    data: DataConfig
    task: DnaTaskConfig
    finetune: FinetuneConfig
    runtime: RuntimeConfig
    train: dict[str, Any]
    models: dict[str, Any]
    match_parameters: bool


def build_dna_job(values: dict[str, Any]) -> DnaJob:
    """The sections of a DNA config (see the module docstring) as a :class:`DnaJob`; every
    section, each model's included (with a placeholder vocabulary), is checked now, before any
    data is fetched or prepared."""
    check_sections(values, DNA_SECTIONS)
    if not isinstance(values.get("models"), dict) or not values["models"]:
        raise ValueError("titans dna needs a 'models' section: name -> model settings")
    match = values.get("match_parameters", True)
    check_bool("match_parameters", match)
    train_values = dict(values.get("train") or {})
    build_dataclass(TrainConfig, dict(train_values), "train")
    model_configs(values["models"], len(VOCAB), match)
    return DnaJob(
        data=build_dataclass(DataConfig, values.get("data") or {
            "source": "dna:dm3-upstream", "tokenizer": "nucleotide"}, "data"),
        task=build_dataclass(DnaTaskConfig, values.get("task"), "task"),
        finetune=build_dataclass(FinetuneConfig, values.get("finetune"), "finetune"),
        runtime=build_dataclass(RuntimeConfig, values.get("runtime"), "runtime"),
        train=train_values, models=values["models"], match_parameters=match)


def run_dna(values: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    """Pre-train, fine-tune and score the models of a DNA config's sections (see the module
    docstring) into ``out``; returns the report also written to ``out/results.json``."""
    start = time.perf_counter()
    job = build_dna_job(values)
    out = Path(out)
    if (out / RESULTS_FILE).exists() and not resume:
        raise FileExistsError(f"{out} already holds {RESULTS_FILE}: pass --resume to reuse "
                              "its finished stages, or choose another --out")
    data, task_cfg, ft_cfg, runtime = job.data, job.task, job.finetune, job.runtime
    train_values = job.train
    device = resolve_device(build_dataclass(TrainConfig, dict(train_values), "train").device)

    task = load_task(task_cfg)  # first: a bad task folder fails before any data is prepared
    tokenizer, files = prepare(data)
    classes = task["train"].classes
    print(f"pre-training data: {data.source}, {len(files['train']):,} training tokens; task "
          f"{task_cfg.source}: " + ", ".join(f"{s} {len(d):,}" for s, d in task.items())
          + f" sequences, classes {list(classes)} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    report: dict[str, Any] = {
        "data": asdict(data), "task": asdict(task_cfg), "finetune": asdict(ft_cfg),
        "task_sizes": {s: len(d) for s, d in task.items()}, "classes": list(classes),
        "majority_accuracy": {s: task[s].majority_accuracy() for s in ("validation", "test")},
        "results": []}
    if len(classes) == 2:
        report["gc_threshold_accuracy"] = {
            s: gc_threshold_accuracy(task["train"], task[s]) for s in ("validation", "test")}
    configs = model_configs(job.models, tokenizer.vocab_size, job.match_parameters)
    for name, cfg in configs.items():
        run = out / name
        train_cfg = build_dataclass(TrainConfig, {**train_values, "out_dir": str(run)}, "train")
        print(f"\n== {name}: {cfg.variant}, {count_parameters(cfg):,} parameters", flush=True)
        summary = train(cfg, train_cfg, files["train"].tokens, files["validation"].tokens,
                        resume=resume and runs.has_checkpoint(run), runtime=runtime, data=data)
        model, _ = runs.load_checkpoint(run, runtime)
        # Test regions (never seen, nor used to monitor training) at the training length: loss
        # per nucleotide (token; the EOS between regions, one in 2,001 tokens, is scored too).
        lm_eval = evaluate_perplexity(model.to(device), files["test"].tokens,
                                      [train_cfg.seq_len], max_tokens=1 << 17)[0]
        lm_eval["bits_per_token"] = lm_eval["nll"] / math.log(2)
        print(f"  test regions: nll {lm_eval['nll']:.4f} nats/nt, ppl {lm_eval['ppl']:.3f}, "
              f"{lm_eval['bits_per_token']:.3f} bits/nt", flush=True)
        settings = {"task": asdict(task_cfg), "finetune": {
            k: v for k, v in asdict(ft_cfg).items() if k != "scratch_baseline"}}
        result = finetune_stage(run / FINETUNE_FILE, model.train(), task, ft_cfg, settings,
                                device, name, resume)
        entry = {"name": name, "variant": cfg.variant, "parameters": count_parameters(cfg),
                 "pretrain": summary, "lm_eval": lm_eval, "finetune": result}
        if ft_cfg.scratch_baseline:
            torch.manual_seed(ft_cfg.seed)
            entry["finetune_scratch"] = finetune_stage(
                run / SCRATCH_FILE, TitansLM(cfg), task, ft_cfg, settings, device,
                f"{name} (from scratch)", resume)
        report["results"].append(entry)
        atomic_save_json(report, out / RESULTS_FILE)  # each finished model is kept at once
    report["wall_time_s"] = time.perf_counter() - start
    atomic_save_json(report, out / RESULTS_FILE)
    print_dna_table(report)
    print(f"\nresults: {out / RESULTS_FILE}; total {report['wall_time_s'] / 60:.1f} min")
    return report


def print_dna_table(report: dict[str, Any]) -> None:
    """Pre-training and classification, one line per model (and its from-scratch fine-tuning),
    then the baselines: majority class and (two classes) the GC-content threshold."""
    head = (f"{'model':<24}{'params':>10}{'LM nll/nt':>11}{'ppl/nt':>8}{'pretrain s':>12}"
            f"{'finetune s':>12}{'val acc':>9}{'test acc':>10}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in report["results"]:
        for key, label, lm in (("finetune", r["name"], True),
                               ("finetune_scratch", f"{r['name']} (scratch)", False)):
            if key not in r:
                continue
            ft = r[key]
            lm_cells = (f"{r['lm_eval']['nll']:>11.4f}{r['lm_eval']['ppl']:>8.3f}"
                        f"{r['pretrain']['wall_time']:>12.0f}" if lm else f"{'-':>11}{'-':>8}"
                                                                         f"{'-':>12}")
            print(f"{label:<24}{r['parameters']:>10,}{lm_cells}{ft['train_time_s']:>12.0f}"
                  f"{ft['accuracy']['validation']:>9.4f}{ft['accuracy']['test']:>10.4f}")
    for key, label in (("majority_accuracy", "majority class"),
                       ("gc_threshold_accuracy", "GC-content threshold")):
        if key in report:
            print(f"{label:<24}{'':>53}{report[key]['validation']:>9.4f}"
                  f"{report[key]['test']:>10.4f}")
