"""The `titans` command end to end on a small local corpus: train, resume, eval, generate, info,
compare; and one-line errors (exit status 2, no traceback) for bad configs and data."""

import json
import random

import pytest

from titans.cli import main
from titans.models import TitansConfig, count_parameters

WORDS = ["the", "people", "of", "our", "nation", "congress", "shall", "act", "upon", "law", "and",
         "war", "peace", "trade", "states", "union", "freedom", "whale", "sea", "ship", "captain"]


@pytest.fixture
def docs(tmp_path, monkeypatch):
    """A folder of 12 small English-like documents, and an empty cache for this test."""
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        text = ". ".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60))
        (folder / f"doc{i:02d}.txt").write_text(text + ".\n")
    return folder


def write_config(tmp_path, docs, **train):
    train = {"seq_len": 32, "batch_size": 2, "max_steps": 6, "warmup_steps": 2,
             "eval_every": 3, "eval_batches": 1, "save_every": 3, "log_every": 1,
             "progress": False, **train}
    lines = ["model:", "  preset: tiny", "  variant: mac", "  hidden_size: 32",
             "  segment_len: 16", "data:", f"  source: {docs}", "  tokenizer: bpe:300",
             "train:", *(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in train.items())]
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_resume_eval_generate_info(tmp_path, docs, capsys):
    config = write_config(tmp_path, docs)
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


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.sorce=1"], "unknown keys in 'train'"),
    (["--set", "model.hidden_size=-1"], "hidden_size"),
    (["--set", "data.source=/does/not/exist"], "does not exist"),
    (["--set", "trian.lr=1"], "unknown config sections"),
    (["--set", "train.lr"], "key=value"),
])
def test_bad_configs_exit_with_one_line(tmp_path, docs, capsys, args, message):
    config = write_config(tmp_path, docs)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--out", str(tmp_path / "r"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_second_fresh_run_into_a_used_directory_is_refused(tmp_path, docs, capsys):
    config = write_config(tmp_path, docs, max_steps=1)
    main(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
