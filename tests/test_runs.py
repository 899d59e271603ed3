"""titans.runs: the run directory's files, checkpoints saved atomically and loaded back (tied head
stored once), interrupted saves repaired, RNG states, the metrics log, the data config and the
evaluation results. (Checkpoints inside training runs: tests/test_train.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from titans import NeuralMemory, TitansConfig, TitansLM
from titans.config_files import DataConfig
from titans.layers.attention import Attention
from titans.runs import (
    CONFIG_FILE,
    DATA_FILE,
    EVAL_FILE,
    FORMER_MODEL_DEFAULTS,
    METRICS_FILE,
    STAGING_DIR,
    TRAINER_FILE,
    WEIGHTS_FILE,
    MetricsLog,
    RunInUseError,
    commit_checkpoint,
    has_checkpoint,
    load_checkpoint,
    load_weights,
    read_config,
    read_data_config,
    read_metrics,
    read_trainer_state,
    rng_state,
    run_lock,
    save_checkpoint,
    save_data_config,
    save_eval_results,
    set_rng_state,
)
from titans.runtime import RuntimeConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(**overrides) -> TitansLM:
    torch.manual_seed(0)
    values = dict(variant="mac", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2,
                  segment_len=16, chunk_size=4)
    return TitansLM(TitansConfig(**{**values, **overrides}))


# Not the defaults, so that loading can be seen to apply the run's own.
RUNTIME = RuntimeConfig(compile="memory", memory_checkpoint_chunks=None, attention_block_size=8)


def save(out: Path, model: TitansLM, step: int = 3) -> dict:
    trainer = {"step": step, "tokens": 96, "optimizer": {"lr": torch.tensor([0.5])}}
    save_checkpoint(out, model, {"seq_len": 8, "lr": 0.1}, RUNTIME, trainer)
    return trainer


def test_the_file_names_are_the_documented_layout():
    assert (WEIGHTS_FILE, CONFIG_FILE, TRAINER_FILE, METRICS_FILE, DATA_FILE, EVAL_FILE) == (
        "model.safetensors", "config.json", "trainer.pt", "metrics.jsonl", "data.json",
        "eval.json")


@pytest.mark.parametrize("tied", [True, False])
def test_a_checkpoint_loads_back_as_it_was_saved(tmp_path, tied):
    model = tiny_model(tie_word_embeddings=tied)
    out = tmp_path / "run"
    assert not has_checkpoint(out)
    trainer = save(out, model)
    assert has_checkpoint(out) and not (out / STAGING_DIR).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE,
                                                            TRAINER_FILE])
    with safetensors.safe_open(out / WEIGHTS_FILE, "pt") as f:
        assert f.metadata() == {"step": "3"}
        names = set(f.keys())
    assert ("lm_head.weight" in names) is not tied  # a tied head is stored once
    loaded, config = load_checkpoint(out)
    assert config == {"model": model.config.to_dict(), "train": {"seq_len": 8, "lr": 0.1},
                      "runtime": dataclasses.asdict(RUNTIME)}
    assert read_config(out) == config
    assert not loaded.training
    assert (loaded.lm_head.weight is loaded.embed_tokens.weight) is tied
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    state = read_trainer_state(out)
    assert state.keys() == trainer.keys() and state["step"] == 3
    assert torch.equal(state["optimizer"]["lr"], trainer["optimizer"]["lr"])


def block_sizes_and_chunks(model: TitansLM) -> tuple[set, set]:
    return ({m.block_size for m in model.modules() if isinstance(m, Attention)},
            {m.checkpoint_chunks for m in model.modules() if isinstance(m, NeuralMemory)})


def test_a_loaded_model_runs_with_the_saved_runtime_or_the_one_given(tmp_path):
    save(tmp_path, tiny_model())
    assert block_sizes_and_chunks(load_checkpoint(tmp_path)[0]) == ({8}, {None})
    given = RuntimeConfig(memory_checkpoint_chunks=3, attention_block_size=5)
    loaded, config = load_checkpoint(tmp_path, given)
    assert block_sizes_and_chunks(loaded) == ({5}, {3})
    assert config["runtime"] == dataclasses.asdict(RUNTIME)  # what the run saved


def test_a_config_json_from_before_the_runtime_section_is_read_into_one(tmp_path):
    """Such a config.json kept the knobs in the model config (and the compile switch in train):
    they are read into the runtime, and the model loads with them."""
    model = tiny_model()
    save(tmp_path, model)
    former = {"model": {**model.config.to_dict(), "attention_block_size": 4,
                        "memory_checkpoint_chunks": 2, "compile_memory": True},
              "train": {"seq_len": 8, "lr": 0.1, "compile": False}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(former))
    expected = {"model": model.config.to_dict(), "train": {"seq_len": 8, "lr": 0.1},
                "runtime": {"compile": "memory", "memory_checkpoint_chunks": 2,
                            "attention_block_size": 4, "data_parallel": "ddp"}}
    assert read_config(tmp_path) == expected
    loaded, config = load_checkpoint(tmp_path)
    assert config == expected and block_sizes_and_chunks(loaded) == ({4}, {2})
    assert all(m.compile_step for m in loaded.modules() if isinstance(m, NeuralMemory))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize(("name", "saved"), [
    ("mac_memory_input", None), ("mac_memory_input", "attention"), ("mac_memory_input", "residual"),
    ("mal_memory_skip", None), ("mal_memory_skip", False), ("mal_memory_skip", True),
])
def test_a_run_from_before_a_field_loads_with_the_behaviour_it_was_trained_with(tmp_path, name,
                                                                                saved):
    """Runs saved before mac_memory_input / mal_memory_skip existed were MACs whose memory
    learned from the attention output and MALs without the skip, which are no longer the
    defaults: they load as such; a saved value is kept."""
    model = tiny_model(variant="mal" if name == "mal_memory_skip" else "mac")
    save(tmp_path, model)
    values = {**model.config.to_dict(), name: saved}
    if saved is None:
        del values[name]
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "model": values}))
    expected = FORMER_MODEL_DEFAULTS[name] if saved is None else saved
    assert expected != getattr(TitansConfig(variant="mac"), name) or saved is not None
    assert read_config(tmp_path)["model"][name] == expected
    assert getattr(load_checkpoint(tmp_path)[0].config, name) == expected


def test_without_a_checkpoint_reading_names_the_missing_files(tmp_path):
    message = f"no checkpoint in {tmp_path}: missing model.safetensors, config.json, trainer.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        read_config(tmp_path)
    save(tmp_path, tiny_model())
    (tmp_path / TRAINER_FILE).unlink()  # mid-commit, as a reader may see it
    with pytest.raises(FileNotFoundError, match=r"missing trainer\.pt \("):
        load_checkpoint(tmp_path)


def test_weights_of_another_model_are_refused(tmp_path):
    save(tmp_path, tiny_model())
    with pytest.raises(ValueError, match=r"model\.safetensors does not match the model: missing "
                                         r"\[\], unexpected \['layers\.1\."):
        load_weights(tiny_model(num_hidden_layers=1), tmp_path)


def test_an_interrupted_save_is_discarded_or_rolled_forward(tmp_path):
    save(tmp_path, tiny_model(), step=2)
    # Incomplete staging (no trainer.pt yet): discarded, the old checkpoint stays.
    staging = tmp_path / STAGING_DIR
    staging.mkdir()
    (staging / WEIGHTS_FILE).write_bytes(b"half a file")
    commit_checkpoint(tmp_path)
    assert not staging.exists() and read_trainer_state(tmp_path)["step"] == 2
    load_checkpoint(tmp_path)
    # Complete staging whose weights were already moved in: the rest is moved in.
    staging.mkdir()
    (tmp_path / TRAINER_FILE).rename(staging / TRAINER_FILE)
    (tmp_path / CONFIG_FILE).rename(staging / CONFIG_FILE)
    assert not has_checkpoint(tmp_path)
    commit_checkpoint(tmp_path)
    assert not staging.exists() and has_checkpoint(tmp_path)
    assert read_trainer_state(tmp_path)["step"] == 2
    commit_checkpoint(tmp_path)  # nothing staged: nothing to do


def test_rng_states_restore_every_generator():
    def draws() -> tuple:
        return random.random(), np.random.rand(), torch.rand(()).item()

    state = rng_state()
    first = draws()
    buffer = io.BytesIO()  # as in trainer.pt: plain values and tensors only
    torch.save(state, buffer)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert draws() == first


def test_the_metrics_log_continues_without_duplicates(tmp_path):
    log = MetricsLog(tmp_path, keep_until=0)
    assert log.path == tmp_path / METRICS_FILE and read_metrics(log.path) == []
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')  # a line cut by a crash
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2, 3]
    resumed = MetricsLog(tmp_path, keep_until=2)  # the checkpoint was of step 2
    resumed.write({"step": 3, "loss": 0.25})
    assert read_metrics(log.path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                                      {"step": 3, "loss": 0.25}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_the_data_config_and_the_evaluation_are_kept_in_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = DataConfig(source="docs/", tokenizer="tok/tokenizer.json")
    save_data_config(tmp_path / "run", data)
    # Local paths are kept absolute: the run means the same corpus from any directory.
    assert read_data_config(tmp_path / "run") == DataConfig(
        source=str(tmp_path / "docs"), tokenizer=str(tmp_path / "tok" / "tokenizer.json"))
    for named in (DataConfig(), DataConfig(source="hf:wikitext", tokenizer="mistral")):
        save_data_config(tmp_path / "named", named)
        assert read_data_config(tmp_path / "named") == named
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} has no data.json: was it trained")):
        read_data_config(tmp_path)
    rows = [{"context_length": 16, "ppl": 2.5}]
    save_eval_results(tmp_path / "run", "test", rows)
    assert json.loads((tmp_path / "run" / EVAL_FILE).read_text()) == {"split": "test",
                                                                      "results": rows}


def test_resuming_with_other_data_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_data_config(tmp_path / "run", DataConfig(source="docs", tokenizer="bpe:300"))
    before = (tmp_path / "run" / "data.json").read_bytes()
    # The same config, a relative path given from the same directory: accepted.
    save_data_config(tmp_path / "run", DataConfig(source="./docs", tokenizer="bpe:300"), True)
    for other in (DataConfig(source="other", tokenizer="bpe:300"),
                  DataConfig(source="docs", tokenizer="bpe:400")):
        with pytest.raises(ValueError, match="would mix two corpora"):
            save_data_config(tmp_path / "run", other, resume=True)
        assert (tmp_path / "run" / "data.json").read_bytes() == before
    # A fresh run (not a resume) records its own data.
    save_data_config(tmp_path / "run", DataConfig(source="other"))
    assert read_data_config(tmp_path / "run").source == str(tmp_path / "other")


@pytest.mark.parametrize("text", ['{"source": "default", "extra": 1}', "{not json", "[1, 2]",
                                  b"\xff\xfe\x00garbage"])
def test_a_damaged_data_config_is_named_in_one_line(tmp_path, text):
    (tmp_path / "data.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as info:
        read_data_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data.json'} is damaged") and "\n" not in message


def test_a_run_directory_has_one_writer_at_a_time(tmp_path):
    with run_lock(tmp_path / "run"):
        with (pytest.raises(RunInUseError, match="is in use: another process is training"),
              run_lock(tmp_path / "run")):
            pass
        assert list((tmp_path / "run").iterdir()) == []  # the lock writes nothing
    with run_lock(tmp_path / "run"):  # released at the end of the block
        pass


def one_line_error(call, start: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(start) and "\n" not in str(info.value), info.value


@pytest.mark.parametrize("damage", ["cut", "garbage", "nan", "inf"])
def test_damaged_or_non_finite_weights_are_refused_in_one_line(tmp_path, damage):
    model = tiny_model()
    save(tmp_path, model)
    path = tmp_path / WEIGHTS_FILE
    if damage in ("nan", "inf"):
        tensors = safetensors.torch.load_file(path)
        tensors["norm.weight"][5] = float(damage)
        safetensors.torch.save_file(tensors, path)
        start = f"{path} is damaged (norm.weight holds NaN or infinite values)"
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "cut" else b"\x00garbage" * 50)
        start = f"{path} is damaged ("
    one_line_error(lambda: load_weights(tiny_model(), tmp_path), start)
    one_line_error(lambda: load_checkpoint(tmp_path), start)


def test_weights_of_another_shape_are_named(tmp_path):
    save(tmp_path, tiny_model())
    one_line_error(lambda: load_weights(tiny_model(hidden_size=64), tmp_path),
                   f"{tmp_path / WEIGHTS_FILE} does not match the model")


@pytest.mark.parametrize(("name", "content"), [
    (CONFIG_FILE, b"{not json"), (CONFIG_FILE, b"[1]"), (CONFIG_FILE, b"\xff\xfe"),
    (TRAINER_FILE, None), (TRAINER_FILE, b"garbage")])
def test_a_damaged_config_or_trainer_state_is_named_in_one_line(tmp_path, name, content):
    save(tmp_path, tiny_model())
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:40] if content is None else content)
    read = read_config if name == CONFIG_FILE else read_trainer_state
    one_line_error(lambda: read(tmp_path), f"{path} is damaged (")


@pytest.mark.parametrize("stray", [b'{"loss": 1.0}', b"5", b"\xff\xfe\x00 binary", b"[]"])
def test_a_stray_metrics_line_is_named_with_its_number(tmp_path, stray):
    path = tmp_path / METRICS_FILE
    path.write_bytes(b'{"step": 1}\n' + stray + b'\n{"step": 2}\n')
    one_line_error(lambda: read_metrics(path), f"{path} is damaged (line 2 is not a metrics "
                                               "record")
    with pytest.raises(ValueError, match="line 2"):
        MetricsLog(tmp_path, keep_until=1)
    assert path.read_bytes().startswith(b'{"step": 1}\n' + stray)  # left as it was
