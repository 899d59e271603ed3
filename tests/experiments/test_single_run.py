"""titans.experiments.single_run: context lengths, the perplexity table, a model config from a
config file's sections (preset and variant overriding, vocabulary from the data config) and its
description. (Training, evaluating and sampling a run: tests/test_cli.py.)"""

import json

from titans.config_files import EvalConfig
from titans.experiments.single_run import (
    configured_model,
    context_lengths,
    describe_model,
    print_perplexity,
)
from titans.models import TitansConfig, count_parameters


def test_context_lengths_are_given_or_multiples_of_the_training_length():
    assert context_lengths(EvalConfig(), 32, None) == [32, 128]
    assert context_lengths(EvalConfig(context_multipliers=[2, 3]), 10, None) == [20, 30]
    assert context_lengths(EvalConfig(), 32, [7, 9]) == [7, 9]


def test_the_perplexity_table(capsys):
    print_perplexity([{"context_length": 16, "tokens": 195, "nll": 5.29064, "ppl": 198.4567,
                       "bits_per_byte": 3.61262}])
    assert capsys.readouterr().out == (" context    tokens      nll       ppl  bits/byte\n"
                                       "      16       195   5.2906    198.46     3.6126\n")


def test_a_configured_model_takes_preset_variant_and_the_datas_vocabulary():
    values = {"model": {"preset": "small", "variant": "mac", "hidden_size": 64},
              "data": {"tokenizer": "bpe:300"}}
    cfg = configured_model(values, None, None)
    assert (cfg.variant, cfg.hidden_size, cfg.vocab_size) == ("mac", 64, 300)
    cfg = configured_model(values, "tiny", "lmm")
    assert cfg == TitansConfig.from_preset("tiny", "lmm", hidden_size=64, vocab_size=300)


def test_describe_model_prints_the_config_and_its_size(capsys):
    cfg = TitansConfig.from_preset("tiny", "mag")
    describe_model(cfg)
    out = capsys.readouterr().out
    config, count = out.rsplit("}\n", 1)
    assert json.loads(config + "}") == cfg.to_dict()
    assert count == (f"parameters: {count_parameters(cfg):,} "
                     f"({count_parameters(cfg, exclude_embeddings=True):,} without embeddings)\n")
