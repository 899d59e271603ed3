"""FSDP2 training (``runtime.data_parallel: fsdp``) on the CPU with gloo, 2 processes under
torchrun: it trains like one process with the same global batch (losses, gradient norms,
weights), its checkpoints are a single process's files and resume either way, and its divergence
diagnosis names the same parameter; a bad strategy is a one-line error. (DDP:
tests/test_train.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from titans import TitansConfig, TitansLM
from titans.cli import main
from titans.distributed import DistEnv, parallelize
from titans.runs import read_metrics

WORKER = Path(__file__).with_name("fsdp_worker.py")
VOCAB = 64
PROCESSES = 2
BATCH = 4  # sequences per micro-batch over all processes
CLIP = 0.5  # below the gradient norms of these runs: clipping is at work


def model_config(variant: str) -> dict[str, Any]:
    # A tied LM head (MAC) and an untied one (the transformer).
    return TitansConfig(variant=variant, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_heads=2, segment_len=16, chunk_size=4,
                        tie_word_embeddings=variant == "mac").to_dict()


def run_spec(out_dir: Path, processes: int, variant: str = "mac", resume: bool = False,
             poison: bool = False, **train: Any) -> dict[str, Any]:
    """One run of fsdp_worker.py: the same global batch whatever the number of processes, and
    two micro-batches per step (gradients accumulated without synchronisation first)."""
    values = {**dict(out_dir=str(out_dir), seq_len=32, batch_size=BATCH // processes,
                     grad_accum=2, max_steps=4, warmup_steps=1, save_every=2, eval_every=2,
                     eval_batches=2, log_every=1, grad_clip=CLIP, progress=False), **train}
    runtime = {"data_parallel": "fsdp" if processes > 1 else "ddp"}
    return {"model": model_config(variant), "train": values, "runtime": runtime,
            "resume": resume, "poison": poison, "result": str(out_dir) + ".json"}


def start(tmp: Path, name: str, runs: list[dict[str, Any]], processes: int) -> subprocess.Popen:
    """Start fsdp_worker.py on ``runs``: under torchrun for several processes."""
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps({"train_tokens": str(tmp / "train.npy"),
                                "val_tokens": str(tmp / "val.npy"), "runs": runs}))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable])
    return subprocess.Popen([*launcher, str(WORKER), str(spec)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(*workers: subprocess.Popen) -> None:
    for worker in workers:
        _, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr[-4000:]


def save_tokens(tmp: Path) -> None:
    np.save(tmp / "train.npy", np.random.default_rng(0).integers(0, VOCAB, 20000).astype(np.uint16))
    np.save(tmp / "val.npy", np.random.default_rng(1).integers(0, VOCAB, 3000).astype(np.uint16))


def result(out_dir: Path) -> dict[str, Any]:
    return json.loads(Path(str(out_dir) + ".json").read_text())


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(out_dir / "model.safetensors")


def trainer(out_dir: Path) -> dict[str, Any]:
    return torch.load(out_dir / "trainer.pt", weights_only=True)


def assert_close_training(run: Path, reference: Path) -> None:
    """The same records (losses and gradient norms to float32 rounding) and weights up to what
    AdamW makes of that rounding."""
    records = read_metrics(run / "metrics.jsonl")
    expected = read_metrics(reference / "metrics.jsonl")
    assert [(r["step"], r["tokens"]) for r in records] == [(r["step"], r["tokens"])
                                                          for r in expected]
    for got, want in zip(records, expected, strict=True):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in want:  # seen: 1.2e-7 relative, one float32 rounding
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=0), (key, got["step"])
    got_weights, want_weights = weights(run), weights(reference)
    assert got_weights.keys() == want_weights.keys()
    # AdamW's first steps divide a gradient by its own size, which turns the rounding of a
    # near-zero entry into a visible step (seen: 1.3e-5, one transformer entry, after 4 steps;
    # MAC 3e-6). A lost gradient leaves its weights ~lr = 3e-3 per step behind, and a wrongly
    # scaled one shows in the gradient norms.
    for name, want in want_weights.items():
        torch.testing.assert_close(got_weights[name], want, rtol=0, atol=1e-4, msg=name)


def assert_same_training(run: Path, reference: Path) -> None:
    """Bit for bit the same weights and records (timings aside)."""
    def values(path: Path) -> list[tuple]:
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("val_loss"))
                for r in read_metrics(path / "metrics.jsonl")]

    assert values(run) == values(reference)
    got_weights, want_weights = weights(run), weights(reference)
    assert got_weights.keys() == want_weights.keys()
    for name, want in want_weights.items():
        assert torch.equal(got_weights[name], want), name


def assert_same_checkpoint_format(run: Path, reference: Path) -> None:
    """The same files, weights (full, unsharded) and optimizer ``state_dict()`` layout: keys,
    parameter groups (hyperparameters, indices, names), state shapes and dtypes."""
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    got_weights, want_weights = weights(run), weights(reference)
    assert {k: (v.shape, v.dtype) for k, v in got_weights.items()} == {
        k: (v.shape, v.dtype) for k, v in want_weights.items()}
    got, want = trainer(run), trainer(reference)
    assert got.keys() == want.keys() and got["step"] == want["step"]
    assert got["optimizer"].keys() == want["optimizer"].keys() == {"state", "param_groups"}
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    got_state, want_state = got["optimizer"]["state"], want["optimizer"]["state"]
    assert got_state.keys() == want_state.keys()
    for index, state in want_state.items():
        assert got_state[index].keys() == state.keys()
        for key, value in state.items():
            assert (got_state[index][key].shape, got_state[index][key].dtype) == (
                value.shape, value.dtype), (index, key)
            torch.testing.assert_close(got_state[index][key], value, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ FSDP against one process


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same runs with FSDP over 2 processes and in one process, side by side: MAC (tied
    embeddings) and the transformer (untied), 4 steps each; and a MAC whose final norm gets an
    inf gradient element (see fsdp_worker.poisoned_model)."""
    tmp = tmp_path_factory.mktemp("side_by_side")
    save_tokens(tmp)
    workers = []
    for processes, name in ((PROCESSES, "fsdp"), (1, "one")):
        runs = [run_spec(tmp / f"{name}-{variant}", processes, variant)
                for variant in ("mac", "transformer")]
        runs.append(run_spec(tmp / f"{name}-poisoned", processes, poison=True))
        workers.append(start(tmp, name, runs, processes))
    finish(*workers)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mac", "transformer"])
def test_fsdp_trains_like_one_process(side_by_side: Path, variant: str) -> None:
    fsdp, one = side_by_side / f"fsdp-{variant}", side_by_side / f"one-{variant}"
    assert_close_training(fsdp, one)
    # Every step accumulated two micro-batches and clipped its gradient.
    assert all(r["grad_norm"] > CLIP for r in read_metrics(fsdp / "metrics.jsonl")
               if "grad_norm" in r)
    assert_same_checkpoint_format(fsdp, one)
    summary, expected = result(fsdp)["summary"], result(one)["summary"]
    assert summary["steps"] == expected["steps"] == 4
    assert summary["num_parameters"] == expected["num_parameters"]
    assert summary["final_val_loss"] == pytest.approx(expected["final_val_loss"], rel=1e-5)


@pytest.mark.slow
def test_fsdp_divergence_names_the_same_parameter(side_by_side: Path) -> None:
    """The inf is in the last process's shard only: the other process learns of it from the
    combined flags, and both stop before the optimizer steps. The memory's health in the message
    is of rank 0's own rows (half the batch), so it differs."""
    def without_health(message: str) -> str:
        assert "; memory in that step: weight norm max " in message
        return re.sub(r"; memory in that step: [^;]*", "", message)

    fsdp = result(side_by_side / "fsdp-poisoned")["error"]
    one = result(side_by_side / "one-poisoned")["error"]
    assert fsdp.startswith("training diverged at step 1: the gradient is non-finite (norm inf; "
                           "first non-finite gradient: norm.weight) while the loss is finite (")
    assert without_health(fsdp).replace("fsdp-poisoned", "one-poisoned") == without_health(one)
    assert not (side_by_side / "fsdp-poisoned" / "trainer.pt").exists()


# ------------------------------------------------------------------ checkpoints across strategies


@pytest.mark.slow
def test_fsdp_checkpoints_resume_in_one_process_and_back(tmp_path: Path) -> None:
    """A checkpoint of 2 steps under FSDP resumes in one process, and one of a single process
    resumes under FSDP: both reach step 4 as the uninterrupted run does. FSDP resumed under
    FSDP continues bit for bit."""
    save_tokens(tmp_path)
    halfway = {"max_steps": 2}
    first = [start(tmp_path, "fsdp", [
        run_spec(tmp_path / "fsdp-full", PROCESSES),
        run_spec(tmp_path / "fsdp-resumed", PROCESSES, **halfway),
        run_spec(tmp_path / "fsdp-resumed", PROCESSES, resume=True),
        run_spec(tmp_path / "to-one", PROCESSES, **halfway),
    ], PROCESSES), start(tmp_path, "one", [
        run_spec(tmp_path / "one-full", 1),
        run_spec(tmp_path / "to-fsdp", 1, **halfway),
    ], 1)]
    finish(*first)
    assert_same_training(tmp_path / "fsdp-resumed", tmp_path / "fsdp-full")
    # Both checkpoints of step 2 are a single process's files.
    shutil.copytree(tmp_path / "to-fsdp", tmp_path / "one-halfway")
    assert_same_checkpoint_format(tmp_path / "to-one", tmp_path / "one-halfway")

    finish(start(tmp_path, "to-fsdp", [run_spec(tmp_path / "to-fsdp", PROCESSES, resume=True)],
                 PROCESSES),
           start(tmp_path, "to-one", [run_spec(tmp_path / "to-one", 1, resume=True)], 1))
    for resumed in ("to-fsdp", "to-one"):
        assert result(tmp_path / resumed)["summary"]["steps"] == 4
        assert_close_training(tmp_path / resumed, tmp_path / "one-full")
    assert trainer(tmp_path / "to-one")["world_size"] == 1
    assert trainer(tmp_path / "to-fsdp")["world_size"] == PROCESSES


# ------------------------------------------------------------------ without processes


def test_a_bad_strategy_is_a_one_line_config_error(tmp_path: Path, write_config: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(write_config()), "--out", str(out),
              "--set", "runtime.data_parallel=zero3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == ("titans train: error: RuntimeConfig.data_parallel must be one of "
                           "('ddp', 'fsdp'), got 'zero3'"), err
    assert not out.exists()


def test_one_process_is_left_as_it_is() -> None:
    """A world of one process trains the plain model, whatever the strategy."""
    model = TitansLM(TitansConfig.from_dict(model_config("mac")))
    env = DistEnv(0, 1, torch.device("cpu"))
    before = [id(p) for p in model.parameters()]
    for strategy in ("ddp", "fsdp"):
        assert parallelize(model, env, strategy) is model
    assert [id(p) for p in model.parameters()] == before
    with pytest.raises(ValueError, match=r"strategy must be one of \('ddp', 'fsdp'\), got 'zero'"):
        parallelize(model, env, "zero")
