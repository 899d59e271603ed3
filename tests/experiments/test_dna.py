"""titans dna: configs, batching, fine-tuning, and the command end to end on small real-format
inputs (a folder of DNA text files as the corpus, a GenomicsBenchmarks folder as the task)."""

import json

import numpy as np
import pytest
import torch

from titans.cli import main
from titans.data.dna_tasks import LabelledSequences
from titans.experiments.dna import (
    DnaTaskConfig,
    FinetuneConfig,
    accuracy,
    build_dna_job,
    finetune,
    pad_batch,
)
from titans.models import TitansConfig, TitansLM
from titans.models.classification import SequenceClassifier

TINY = {"vocab_size": 6, "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2,
        "chunk_size": 8, "segment_len": 16, "window_size": 16}


def run_cli(argv, capsys):
    """Exit status and stderr of ``titans <argv>``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_config_errors():
    with pytest.raises(ValueError, match=r"task\.source"):
        DnaTaskConfig(source="coding:ecoli")
    with pytest.raises(ValueError, match=r"task\.length"):
        DnaTaskConfig(length=0)
    with pytest.raises(ValueError, match=r"finetune\.pooling"):
        FinetuneConfig(pooling="max")
    with pytest.raises(ValueError, match=r"finetune\.lr"):
        FinetuneConfig(lr=0)


def test_a_job_checks_every_section_before_any_data_is_read():
    job = build_dna_job({"models": {"lmm": {"variant": "lmm"}}, "finetune": {"steps": 5}})
    assert job.data.source == "dna:dm3-upstream" and job.finetune.steps == 5
    assert job.match_parameters is True
    with pytest.raises(ValueError, match="variant"):
        build_dna_job({"models": {"lmm": {"variant": "mamba"}}})
    with pytest.raises(ValueError, match="match_parameters"):
        build_dna_job({"models": {"lmm": {}}, "match_parameters": "yes"})
    with pytest.raises(ValueError, match=r"TrainConfig\.lr"):
        build_dna_job({"models": {"lmm": {}}, "train": {"lr": -1}})


def test_pad_batch():
    encoded = [np.array([1, 2, 3]), np.array([4]), np.array([2, 2])]
    ids, lengths = pad_batch(encoded, np.array([1, 0]), torch.device("cpu"))
    assert ids.tolist() == [[4, 0, 0], [1, 2, 3]] and lengths.tolist() == [1, 3]


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {lmm: {variant: lmm}}\nmodel: {}\n")
    code, err = run_cli(["dna", "--config", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("titans dna: error: unknown config sections ['model']")
    config = tmp_path / "ok.yaml"
    config.write_text("models: {lmm: {variant: lmm}}\n")
    code, err = run_cli(["dna", "--config", str(config), "--out", str(tmp_path / "o"),
                         "--benchmark", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "is not a GenomicsBenchmarks data set" in err
    assert err.count("\n") == 1
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    code, err = run_cli(["dna", "--config", str(config), "--out", str(tmp_path / "done")],
                        capsys)
    assert code == 2 and "already holds results.json: pass --resume" in err


def separable_task(rng, n):
    """Class 0: sequences of A and C; class 1: of G and T (lengths 10-20)."""
    labels = rng.integers(0, 2, n)
    sequences = ["".join(rng.choice(list("ACGT"[2 * y:2 * y + 2]), rng.integers(10, 21)))
                 for y in labels]
    return LabelledSequences(sequences, labels.astype(np.int64), ("ac", "gt"))


@pytest.mark.slow
def test_finetune_learns_a_separable_task():
    rng = np.random.default_rng(0)
    task = {split: separable_task(rng, n) for split, n in
            (("train", 64), ("validation", 32), ("test", 32))}
    torch.manual_seed(0)
    model = SequenceClassifier(TitansLM(TitansConfig(variant="transformer", **TINY)), 2)
    before = accuracy(model, [np.array([1])] * 2, np.array([0, 1]), 2, torch.device("cpu"))
    assert before == 0.5  # one input, two labels: one of them is wrong
    result = finetune(model, task, FinetuneConfig(steps=40, batch_size=16, lr=3e-3,
                                                  warmup_steps=4, log_every=20),
                      torch.device("cpu"), "tiny")
    assert result["accuracy"] == {"validation": 1.0, "test": 1.0}
    assert result["eval_sequences"] == {"validation": 32, "test": 32}
    assert result["train_loss"] < 0.1


def write_inputs(tmp_path):
    """A corpus folder of real-format DNA text files and a GenomicsBenchmarks folder."""
    rng = np.random.default_rng(1)
    corpus = tmp_path / "regions"
    corpus.mkdir()
    for i in range(12):  # lowercase runs, as in soft-masked genome files
        (corpus / f"r{i}.txt").write_text("".join(rng.choice(list("ACGTacgt"), 600)))
    bench = tmp_path / "dummy_benchmark"
    for split, n in (("train", 24), ("test", 8)):
        task = separable_task(rng, n)
        for i, (sequence, label) in enumerate(zip(task.sequences, task.labels, strict=True)):
            folder = bench / split / ("negative", "positive")[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.txt").write_text(sequence)
    config = tmp_path / "dna.yaml"
    models = {name: {"variant": name, **{k: v for k, v in TINY.items() if k != "vocab_size"}}
              for name in ("lmm", "transformer")}
    config.write_text(json.dumps({  # JSON is YAML
        "models": models, "data": {"source": str(corpus), "tokenizer": "nucleotide"},
        "train": {"seq_len": 32, "batch_size": 4, "max_steps": 4, "warmup_steps": 1,
                  "eval_every": 2, "eval_batches": 1, "save_every": 2, "log_every": 2},
        "finetune": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 3,
                     "scratch_baseline": True}}))
    return config, bench


@pytest.mark.slow
def test_titans_dna_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "cache"))
    config, bench = write_inputs(tmp_path)
    out = tmp_path / "run"
    main(["dna", "--config", str(config), "--out", str(out), "--benchmark", str(bench)])
    printed = capsys.readouterr().out
    assert "majority class" in printed and "lmm (scratch)" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["task"]["source"] == f"genomic-benchmarks:{bench}"
    assert report["classes"] == ["negative", "positive"]
    assert report["task_sizes"] == {"train": 22, "validation": 2, "test": 8}
    lmm, transformer = report["results"]
    # Matched sizes: the Transformer++'s MLP is widened to the LMM's count.
    assert abs(transformer["parameters"] - lmm["parameters"]) < 0.02 * lmm["parameters"]
    for result in (lmm, transformer):
        assert result["pretrain"]["steps"] == 4
        assert result["lm_eval"]["context_length"] == 32 and result["lm_eval"]["nll"] > 0
        assert 0 <= result["finetune"]["accuracy"]["test"] <= 1
        assert 0 <= result["finetune_scratch"]["accuracy"]["test"] <= 1
        assert (out / result["name"] / "finetune.json").exists()
    # A resumed run reads finished stages back instead of running them again.
    main(["dna", "--config", str(config), "--out", str(out), "--benchmark", str(bench),
          "--resume"])
    printed = capsys.readouterr().out
    assert printed.count("fine-tuning read back") == 4
    again = json.loads((out / "results.json").read_text())
    assert [r["finetune"] for r in again["results"]] == [lmm["finetune"],
                                                          transformer["finetune"]]
    # ... but not results made with other settings.
    code, err = run_cli(["dna", "--config", str(config), "--out", str(out), "--benchmark",
                         str(bench), "--resume", "--set", "finetune.lr=1e-4"], capsys)
    assert code == 2 and "fine-tuned with other task or finetune settings" in err
