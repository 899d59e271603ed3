"""Config files: YAML and TOML map onto the dataclasses; --set overrides; clear errors."""

import re

import pytest

from titans.config_files import (
    COMPARE_SECTIONS,
    RUN_SECTIONS,
    DataConfig,
    EvalConfig,
    TaskConfig,
    apply_overrides,
    build_dataclass,
    check_sections,
    load_values,
    model_config,
    read_config_file,
)
from titans.data.tokenizer import DEFAULT_BPE_VOCAB, bpe_vocab_size
from titans.evals.tasks import TASKS
from titans.runtime import RuntimeConfig


def test_yaml_and_toml_give_the_same_values(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  preset: tiny\n  variant: mag\ntrain:\n  lr: 3e-3\n")
    (tmp_path / "a.toml").write_text(
        '[model]\npreset = "tiny"\nvariant = "mag"\n[train]\nlr = 3e-3\n')
    assert read_config_file(tmp_path / "a.yaml") == read_config_file(tmp_path / "a.toml")


def test_shipped_configs_parse_and_build(tmp_path):
    """Every file in configs/ names only known sections and keys and builds a model config
    (forecast-* and dna configs: the jobs of their commands)."""
    from pathlib import Path

    from titans.experiments.dna import DNA_SECTIONS, build_dna_job
    from titans.experiments.forecast import FORECAST_SECTIONS, build_job
    from titans.train import TrainConfig

    files = sorted(Path(__file__).resolve().parents[1].glob("configs/*.*"))
    assert len(files) >= 3
    for path in files:
        values = read_config_file(path)
        if path.stem.startswith("forecast"):
            check_sections(values, FORECAST_SECTIONS)
            assert build_job(values).horizons == [96, 192, 336, 720]
            continue
        if path.stem.startswith("dna"):
            check_sections(values, DNA_SECTIONS)
            assert build_dna_job(values).data.tokenizer == "nucleotide"
            continue
        check_sections(values, COMPARE_SECTIONS if "models" in values else RUN_SECTIONS)
        if "task" in values:
            build_dataclass(TaskConfig, values["task"], "task")
        build_dataclass(DataConfig, values.get("data"), "data")
        build_dataclass(EvalConfig, values.get("eval"), "eval")
        build_dataclass(TrainConfig, values.get("train"), "train")
        build_dataclass(RuntimeConfig, values.get("runtime"), "runtime")
        for section in values.get("models", {"": values.get("model")}).values():
            assert model_config(section, 8192).vocab_size == 8192


def test_overrides_parse_values_as_yaml_and_do_not_mutate_the_input():
    values = {"train": {"lr": 1.0}}
    out = apply_overrides(values, ["train.lr=3e-4", "eval.context_multipliers=[1, 2]",
                                   "model.use_decay=false", "data.source=/tmp/x"])
    assert out["train"]["lr"] == 3e-4 and values["train"]["lr"] == 1.0
    assert apply_overrides({}, ["train.lr=3e-4"])["train"]["lr"] == 3e-4
    assert out["eval"]["context_multipliers"] == [1, 2]
    assert out["model"]["use_decay"] is False and out["data"]["source"] == "/tmp/x"
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=1"])


def test_load_values_reads_the_file_applies_overrides_and_checks_sections(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  lr: 3e-3\n")
    assert load_values(path, ["train.lr=1e-3", "data.source=x"], RUN_SECTIONS) == {
        "model": {"preset": "tiny"}, "train": {"lr": 1e-3}, "data": {"source": "x"}}
    assert load_values(None, None, RUN_SECTIONS) == {}
    assert load_values(None, ["model.variant=mag"], RUN_SECTIONS) == {"model": {"variant": "mag"}}
    with pytest.raises(ValueError, match=r"unknown config sections \['models'\]"):
        load_values(None, ["models.a.variant=mac"], RUN_SECTIONS)
    assert load_values(None, ["models.a.variant=mac"], COMPARE_SECTIONS) == {
        "models": {"a": {"variant": "mac"}}}


def test_a_runtime_section_in_run_and_compare_configs(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[runtime]\ncompile = "memory"\nmemory_checkpoint_chunks = 4\n')
    values = load_values(path, ["runtime.attention_block_size=64"], RUN_SECTIONS)
    assert build_dataclass(RuntimeConfig, values["runtime"], "runtime") == RuntimeConfig(
        compile="memory", memory_checkpoint_chunks=4, attention_block_size=64)
    assert load_values(None, ["runtime.compile=model"], COMPARE_SECTIONS) == {
        "runtime": {"compile": "model"}}


@pytest.mark.parametrize(("override", "message"), [
    ("model.attention_block_size=64", "model.attention_block_size has moved to the runtime "
                                      "section: runtime.attention_block_size"),
    ("model.memory_checkpoint_chunks=null", "model.memory_checkpoint_chunks has moved to the "
                                            "runtime section: runtime.memory_checkpoint_chunks"),
    ("model.compile_memory=true", "model.compile_memory has moved to the runtime section: "
                                  "runtime.compile: memory"),
    ("train.compile=true", "train.compile has moved to the runtime section: runtime.compile: "
                           "model"),
    ("models.mac.compile_memory=false", "models.mac.compile_memory has moved to the runtime "
                                        "section: runtime.compile: memory"),
])
def test_a_knob_where_it_used_to_be_is_sent_to_the_runtime_section(override, message):
    sections = COMPARE_SECTIONS if override.startswith("models.") else RUN_SECTIONS
    with pytest.raises(ValueError, match=re.escape(message)):
        load_values(None, [override], sections)


def test_unknown_keys_and_sections_are_named():
    with pytest.raises(ValueError, match=r"unknown keys in 'data': \['sorce'\]"):
        build_dataclass(DataConfig, {"sorce": "x"}, "data")
    with pytest.raises(ValueError, match=r"unknown config sections \['trian'\]"):
        check_sections({"trian": {}}, ("train",))
    with pytest.raises(ValueError, match="unknown TitansConfig keys"):
        model_config({"preset": "tiny", "hidden": 3}, 256)


def test_model_section_takes_the_tokenizer_vocab_and_presets():
    cfg = model_config({"preset": "small", "variant": "swa", "num_hidden_layers": 2}, 5000)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.variant) == (
        5000, 256, 2, "swa")
    assert model_config({"vocab_size": 6000, "hidden_size": 64, "num_heads": 2}, 5000
                        ).vocab_size == 6000
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        model_config({"vocab_size": 100}, 5000)


@pytest.mark.parametrize(("cls", "values", "field"), [
    (DataConfig, {"source": ""}, "source"),
    (EvalConfig, {"context_multipliers": [0]}, "context_multipliers"),
    (EvalConfig, {"max_tokens": 0}, "max_tokens"),
    (EvalConfig, {"split": "train"}, "split"),
])
def test_bad_values_raise(cls, values, field):
    with pytest.raises(ValueError, match=field):
        cls(**values)


def test_defaults_come_from_their_owners():
    """The default tokenizer is the tokenizer module's BPE spec; the default tasks are all tasks."""
    assert bpe_vocab_size(DataConfig().tokenizer) == DEFAULT_BPE_VOCAB
    assert TaskConfig().tasks == list(TASKS)


@pytest.mark.parametrize(("values", "message"), [
    ({"tasks": ["qa9"]}, "task.tasks must be a non-empty list"),
    ({"weights": [1.0]}, "task.weights must be one number per task"),
    ({"score_context": 1}, "task.score_context must be a bool, got 1"),
    ({"eval_depths": [0.5, 1.5]},
     "task.eval_depths must be a non-empty list of finite numbers in [0, 1]"),
    ({"eval_items": 0}, "task.eval_items must be an int >= 1, got 0"),
])
def test_bad_task_values_raise(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TaskConfig(**values)


def test_missing_or_unsupported_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_config_file(tmp_path / "nope.yaml")
    (tmp_path / "a.ini").write_text("x")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        read_config_file(tmp_path / "a.ini")
