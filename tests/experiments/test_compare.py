"""titans.experiments.compare: the side-by-side tables (language modelling and task fine-tuning),
parameter matching of the compared models, and a comparison without models. (A whole comparison:
tests/test_cli.py.)"""

import pytest

from titans.experiments import compare as compare_module
from titans.experiments.compare import compare, print_comparison, print_task_comparison
from titans.models import TitansConfig, count_parameters

RESULTS = [
    {"name": "mac", "parameters": 1_234_567, "train": {"tokens_per_s": 812.4,
                                                        "final_val_loss": 1.0},
     "eval": [{"context_length": 32, "bits_per_byte": 1.23456},
              {"context_length": 128, "bits_per_byte": 1.2}],
     "accuracy": {"niah1": 0.5, "qa1": 1.0}, "sample": "the sea was calm"},
    {"name": "transformer", "parameters": 1_200_000, "train": {"tokens_per_s": 1500.0,
                                                                "final_val_loss": None},
     "eval": [{"context_length": 32, "bits_per_byte": 1.5},
              {"context_length": 128, "bits_per_byte": 1.75}],
     "accuracy": {"niah1": 0.0, "qa1": 0.25}, "sample": "the sea"},
]


def test_the_comparison_table_then_the_samples(capsys):
    print_comparison(RESULTS, "test")
    assert capsys.readouterr().out == (
        "\ntest bits-per-byte at each context length (tokens); val ppl at the end of training\n"
        "model            params  train tok/s  val ppl     bpb@32    bpb@128\n"
        "-------------------------------------------------------------------\n"
        "mac               1.23M          812     2.72     1.2346     1.2000\n"
        "transformer       1.20M         1500        -     1.5000     1.7500\n"
        "\n-- sample from mac (temperature 0.8, top-k 50):\nthe sea was calm\n"
        "\n-- sample from transformer (temperature 0.8, top-k 50):\nthe sea\n")


def test_the_task_comparison_table(capsys):
    print_task_comparison(RESULTS)
    assert capsys.readouterr().out == (
        "\nanswer accuracy at the training length (held-out prose)\n"
        "model            params  train tok/s  val loss  niah1    qa1\n"
        "------------------------------------------------------------\n"
        "mac               1.23M          812    1.0000   0.50   1.00\n"
        "transformer       1.20M         1500         -   0.00   0.25\n")


def test_models_after_the_first_are_matched_to_its_size():
    sections = {"mac": {"preset": "tiny", "variant": "mac"},
                "transformer": {"preset": "tiny", "variant": "transformer"},
                "fixed": {"preset": "tiny", "variant": "transformer", "intermediate_size": 64}}
    configs = compare_module.model_configs(sections, 300, match=True)
    target = count_parameters(configs["mac"])
    plain = TitansConfig.from_preset("tiny", "transformer", vocab_size=300)
    assert configs["transformer"].intermediate_size != plain.intermediate_size
    assert abs(count_parameters(configs["transformer"]) - target) < abs(
        count_parameters(plain) - target)
    assert configs["fixed"].intermediate_size == 64  # its own width is kept
    unmatched = compare_module.model_configs(sections, 300, match=False)
    assert unmatched["transformer"] == plain


@pytest.mark.parametrize("models", [None, {}, ["mac"]])
def test_a_comparison_needs_models(tmp_path, models):
    with pytest.raises(ValueError, match="compare needs a 'models' section"):
        compare({"models": models}, tmp_path)
