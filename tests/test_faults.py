"""Refused commands and faults lose nothing of a run. Each test runs ``titans`` as a user would
(a subprocess) and asserts the exit status, one line on stderr naming the problem, and that no
file of the run changed (the run directory is hashed before and after)."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch

from titans.cli import main
from titans.runs import read_metrics, saved_step

WORKER = Path(__file__).with_name("fault_worker.py")


def titans(*args: str, cwd: Path | None = None, fault: tuple[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """``titans *args`` in a new process (one thread: tiny models, a shared machine); with
    ``fault=(what, where)``, that fault is injected (``tests/fault_worker.py``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(WORKER), *fault, "--"] if fault else ["-m", "titans.cli"]
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def snapshot(run: Path) -> dict[str, str]:
    """Every file below ``run`` (relative path) -> the sha256 of its bytes."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and a single stderr line that contains ``message``, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.fixture
def trained(tmp_path, write_config, capsys):
    """(config, run): a tiny run trained for 3 steps, in this process (faster)."""
    config = write_config(max_steps=3)
    run = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(run)])
    capsys.readouterr()
    return config, run


@pytest.fixture
def other_docs(tmp_path, docs):
    """Another corpus: the documents of ``docs`` reversed word by word."""
    folder = tmp_path / "other"
    folder.mkdir()
    for path in docs.iterdir():
        (folder / path.name).write_text(" ".join(reversed(path.read_text().split())))
    return folder


def test_a_refused_fresh_run_changes_nothing(trained, other_docs):
    """A second fresh run into a run directory is refused before it writes anything: before,
    it recorded its own data config first, and later commands read the run with the wrong
    corpus and tokenizer."""
    config, run = trained
    before = snapshot(run)
    result = titans("train", "--config", str(config), "--out", str(run),
                    "--set", f"data.source={other_docs}")
    assert_refused(result, "already holds a checkpoint")
    assert snapshot(run) == before


def test_resuming_on_other_data_is_refused_and_changes_nothing(trained, other_docs):
    config, run = trained
    before = snapshot(run)
    result = titans("train", "--config", str(config), "--out", str(run), "--resume",
                    "--set", f"data.source={other_docs}", "--set", "train.max_steps=6")
    assert_refused(result, "would mix two corpora")
    assert snapshot(run) == before


@pytest.mark.slow  # a subprocess training run (>7 s)
def test_a_run_held_by_another_process_is_refused_and_changes_nothing(trained):
    config, run = trained
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from titans.runs import run_lock\n"
         f"with run_lock({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        result = titans("train", "--config", str(config), "--out", str(run), "--resume",
                        "--set", "train.max_steps=6")
        assert_refused(result, "is in use: another process is training into it")
        assert snapshot(run) == before
    finally:
        holder.communicate("", timeout=60)  # ends the holder, which releases the run
    result = titans("train", "--config", str(config), "--out", str(run), "--resume",
                    "--set", "train.max_steps=4")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow  # a subprocess training run (>7 s)
def test_a_relative_data_source_means_the_same_corpus_from_any_directory(tmp_path, docs,
                                                                         other_docs):
    """A run trained on ``source: docs`` (relative) is evaluated on those documents from
    anywhere, even from a directory where ``docs`` is another corpus."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    docs.rename(home / "docs")
    other_docs.rename(elsewhere / "docs")
    config = home / "run.yaml"
    config.write_text("model: {preset: tiny, variant: lmm, hidden_size: 32}\n"
                      "data: {source: docs, tokenizer: 'bpe:300'}\n"
                      "train: {seq_len: 32, batch_size: 2, max_steps: 2, progress: false}\n")
    assert titans("train", "--config", "run.yaml", "--out", "run", cwd=home).returncode == 0
    run = home / "run"
    assert json.loads((run / "data.json").read_text())["source"] == str(home / "docs")
    results = []
    for cwd in (home, elsewhere):
        result = titans("eval", "--run", str(run), "--context-lengths", "32",
                        "--max-tokens", "64", cwd=cwd)
        assert result.returncode == 0, result.stderr
        results.append(json.loads((run / "eval.json").read_text())["results"])
    assert results[0] == results[1]


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_weight(path: Path) -> None:
    tensors = safetensors.torch.load_file(path)
    tensors["norm.weight"][0] = float("nan")
    safetensors.torch.save_file(tensors, path)


@pytest.mark.slow  # a process per damaged file
@pytest.mark.parametrize(("file", "damage", "command", "message"), [
    ("model.safetensors", cut, "eval", "model.safetensors is damaged"),
    ("model.safetensors", nan_weight, "eval", "norm.weight holds NaN or infinite values"),
    ("trainer.pt", cut, "resume", "trainer.pt is damaged"),
    ("config.json", lambda p: p.write_text("{"), "eval", "config.json is damaged"),
    ("metrics.jsonl", lambda p: p.write_bytes(b"\xff\xfe\n" + p.read_bytes()), "resume",
     "metrics.jsonl is damaged (line 1 is not a metrics record"),
    ("data.json", lambda p: p.write_text('{"source": "default", "x": 1}'), "eval",
     "data.json is damaged (unknown keys in 'data': ['x']"),
])
def test_a_damaged_run_file_is_named_in_one_line_and_nothing_else_changes(
        trained, file, damage, command, message):
    config, run = trained
    damage(run / file)
    before = snapshot(run)
    args = (["eval", "--run", str(run), "--context-lengths", "32", "--max-tokens", "64"]
            if command == "eval" else
            ["train", "--config", str(config), "--out", str(run), "--resume",
             "--set", "train.max_steps=6"])
    result = titans(*args)
    assert_refused(result, message)
    assert str(run / file) in result.stderr
    assert snapshot(run) == before


def test_a_damaged_cached_tokenizer_is_named_in_one_line(trained, tmp_path):
    _, run = trained
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("*.json")
    cut(cached)
    before = snapshot(run)
    result = titans("eval", "--run", str(run), "--context-lengths", "32", "--max-tokens", "64")
    assert_refused(result, f"cached tokenizer damaged: {cached} is not a readable tokenizer")
    assert snapshot(run) == before


def training_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow  # four training processes per fault
@pytest.mark.parametrize("fault", ["sigint", "sigkill", "enospc"])
def test_a_fault_during_a_save_keeps_the_checkpoint_before_it(tmp_path, write_config, fault):
    """Ctrl-C, a kill or a full disk while the step-6 checkpoint is being written leave the
    step-3 one whole: the run resumes from it to the weights of a run never interrupted."""
    config = write_config(max_steps=9, save_every=3, eval_every=100)
    args = ["train", "--config", str(config), "--out"]
    result = titans(*args, str(tmp_path / "run"), fault=(fault, "save"))
    run = tmp_path / "run"
    if fault == "sigkill":
        assert result.returncode == -9
    elif fault == "sigint":
        assert result.returncode == 130
        assert result.stderr.strip() == (f"titans train: interrupted: --resume continues from "
                                          f"the checkpoint of step 3 in {run}")
    else:
        assert_refused(result, "No space left on device (the checkpoint of step 3 is kept)")
        assert "saving the checkpoint of step 6" in result.stderr
    assert saved_step(run) == 3
    assert not (run / ".checkpoint-staging").exists() or fault == "sigkill"
    resumed = titans(*args, str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert titans(*args, str(tmp_path / "whole")).returncode == 0
    assert snapshot(run)["model.safetensors"] == snapshot(tmp_path / "whole")["model.safetensors"]
    assert training_steps(run) == training_steps(tmp_path / "whole") == list(range(1, 10))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigint", "sigkill"])
def test_a_fault_while_packing_tokens_leaves_no_debris(tmp_path, write_config, fault):
    """Killed while writing the token cache, a run leaves a temporary file that the next run
    removes (its writer is gone); interrupted, it removes its own and says nothing was saved."""
    config = write_config(max_steps=2)
    args = ["train", "--config", str(config), "--out", str(tmp_path / "run")]
    result = titans(*args, fault=(fault, "pack"))
    temporaries = lambda: list((tmp_path / "cache").rglob("*.tmp"))  # noqa: E731
    if fault == "sigkill":
        assert result.returncode == -9 and len(temporaries()) == 1
    else:
        assert result.returncode == 130 and temporaries() == []
        assert result.stderr.strip() == (f"titans train: interrupted: no checkpoint in "
                                          f"{tmp_path / 'run'} yet: nothing to resume")
    assert titans(*args).returncode == 0
    assert temporaries() == []


@pytest.mark.slow
def test_two_runs_on_one_directory_the_second_is_refused(tmp_path, write_config):
    """The second process exits at once and writes nothing; the first trains on, every one of
    its metrics records kept (before the lock, 9 of 204 were lost and the checkpoint was the
    second run's)."""
    config = write_config(max_steps=400, save_every=100, eval_every=1000)
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "titans.cli", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not training_steps(run):  # training (and holding the run) has begun
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        second = titans(*args, "--resume")
        assert_refused(second, "is in use: another process is training into it")
    finally:
        assert first.wait(timeout=600) == 0, first.stderr.read()
    assert training_steps(run) == list(range(1, 401))
    assert saved_step(run) == 400


@pytest.mark.slow  # a process per command; tests/test_cli.py checks every message in-process
@pytest.mark.parametrize(("args", "message"), [
    (["train", "--resume", "--set", "model.memory_max_lr=.inf"],
     "memory_max_lr must be a finite number > 0, got inf"),
    (["train", "--resume", "--set", "train.lr=.nan"], "TrainConfig.lr must be a finite number"),
    (["train", "--resume", "--set", "train.seq_len=1"], "TrainConfig.seq_len must be an int >= 2"),
    (["train", "--resume", "--set", "x=[1,"], "is not valid YAML"),
    (["train", "--resume", "--set", "model=5"], "config section 'model' must be a mapping"),
    (["eval", "niah", "--items", "0"], "items per cell must be an int >= 1, got 0"),
    (["generate", "--prompt", "the", "--temperature", "nan"],
     "temperature must be a finite number >= 0, got nan"),
])
def test_bad_values_exit_in_one_line_and_change_nothing(trained, args, message):
    config, run = trained
    before = snapshot(run)
    where = (["--config", str(config), "--out", str(run)] if args[0] == "train"
             else ["--run", str(run)])
    result = titans(*args[:2 if args[1] == "niah" else 1], *where,
                    *args[2 if args[1] == "niah" else 1:])
    assert_refused(result, message)
    assert snapshot(run) == before
