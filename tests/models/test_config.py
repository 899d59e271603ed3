"""TitansConfig: validation of every field, derived fields, dict/JSON round trips, presets
(including the paper's Table-5 sizes built on the meta device) and ablations."""

import dataclasses
import json
import re
from functools import cache

import pytest
import torch

from titans import TitansConfig, TitansLM
from titans.models import ABLATIONS, PRESETS, VARIANTS

MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")
PERSISTENT_VARIANTS = ("mac", "mag", "mal")
PAPER_PRESETS = ("170M", "340M", "760M", "1.3B")

INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "segment_len",
              "window_size", "chunk_size", "memory_depth", "memory_expansion")
OPTIONAL_INT_FIELDS = ("head_dim", "intermediate_size", "memory_num_heads", "memory_head_dim")
BOOL_FIELDS = ("memory_residual_norm", "use_momentum", "use_decay", "tie_word_embeddings",
               "mal_memory_skip")
FLOAT_FIELDS = ("rope_theta", "memory_max_lr", "rms_norm_eps", "initializer_range")


def small(variant="mac", **overrides):
    """The small model config of tests/models/test_lm.py."""
    values = dict(variant=variant, vocab_size=61, hidden_size=32, num_hidden_layers=2,
                  num_heads=2, segment_len=12, window_size=7, chunk_size=4,
                  memory_expansion=2)
    if variant in PERSISTENT_VARIANTS:
        values["num_persistent_tokens"] = 3
    return TitansConfig(**{**values, **overrides})


def raises_naming(field):
    return pytest.raises(ValueError, match=re.escape(field))


@cache
def meta_model(preset, variant):
    """A paper-size model on the meta device (no memory allocated), built once per test run."""
    with torch.device("meta"):
        return TitansLM(TitansConfig.from_preset(preset, variant))


# ---------------------------------------------------------------- validation


def test_valid_small_config_builds_for_every_variant():
    """The baseline config used below is valid for every variant (so each error is the field's)."""
    for variant in VARIANTS:
        assert small(variant).variant == variant


@pytest.mark.parametrize("variant", ["", "MAC", "titans", "gpt", None])
def test_unknown_variant_raises(variant):
    """An unknown variant raises ValueError naming the field."""
    with raises_naming("variant"):
        small(variant)


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("bad", [0, -1, -16, 2.0, "4", True, False, None])
def test_int_fields_reject_non_positive_non_int_and_bool(field, bad):
    """Each required int field rejects 0, negatives, floats, strings, bools and None by name."""
    with raises_naming(field):
        small(**{field: bad})


def test_conv_kernel_may_be_zero_but_not_negative_or_non_int():
    """conv_kernel accepts 0 (no conv) and rejects negatives, floats and bools."""
    assert small(conv_kernel=0).conv_kernel == 0
    assert small(conv_kernel=1).conv_kernel == 1
    for bad in (-1, 2.0, True, "4", None):
        with raises_naming("conv_kernel"):
            small(conv_kernel=bad)


@pytest.mark.parametrize("field", OPTIONAL_INT_FIELDS)
def test_optional_int_fields_accept_none_and_reject_zero(field):
    """Optional int fields may be None but reject 0, negatives, floats and bools by name."""
    small(**{field: None})
    for bad in (0, -2, 2.0, True):
        with raises_naming(field):
            small(**{field: bad})


@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize("bad", [0, 1, "True", None, 1.0])
def test_flags_must_be_bools(field, bad):
    """Boolean flags reject ints, strings, None and floats by name."""
    with raises_naming(field):
        small(**{field: bad})


@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_flags_accept_both_bools(field):
    """Both True and False are accepted and kept for each flag."""
    for value in (True, False):
        assert getattr(small(**{field: value}), field) is value


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [0, 0.0, -1e-6, -3, float("nan"), "1.0", None, True])
def test_float_fields_must_be_positive_numbers(field, bad):
    """Float fields reject zero, negatives, NaN, strings, None and bools by name."""
    with raises_naming(field):
        small(**{field: bad})


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_float_fields_accept_positive_ints_and_floats(field):
    """Float fields accept a positive int or float unchanged."""
    assert getattr(small(**{field: 3}), field) == 3
    assert getattr(small(**{field: 1e-3}), field) == 1e-3


@pytest.mark.parametrize("field", ["memory_max_momentum", "memory_max_decay"])
@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), "0.5", None, True])
def test_gate_caps_must_lie_in_the_unit_interval(field, bad):
    """The momentum and decay caps take a number in (0, 1] and nothing else."""
    with raises_naming(field):
        small(**{field: bad})
    assert getattr(small(**{field: 1}), field) == 1
    assert getattr(small(**{field: 0.5}), field) == 0.5


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", True])
def test_memory_max_grad_norm_is_positive_or_none(bad):
    """The inner-gradient clip is a number > 0, or None to switch it off."""
    with raises_naming("memory_max_grad_norm"):
        small(memory_max_grad_norm=bad)
    assert small(memory_max_grad_norm=None).memory_max_grad_norm is None
    assert small(memory_max_grad_norm=2).memory_max_grad_norm == 2


def test_memory_activation_must_be_known():
    """memory_activation accepts gelu and silu and rejects anything else by name."""
    assert small(memory_activation="silu").memory_activation == "silu"
    assert small(memory_activation="gelu").memory_activation == "gelu"
    for bad in ("relu", "GELU", "", None):
        with raises_naming("memory_activation"):
            small(memory_activation=bad)


def test_hidden_size_must_divide_by_heads_unless_head_dim_is_given():
    """hidden 30 / 4 heads raises naming hidden_size and num_heads; explicit head_dim fixes it."""
    with pytest.raises(ValueError, match=r"hidden_size 30.*num_heads 4"):
        small(hidden_size=30, num_heads=4)
    cfg = small(hidden_size=30, num_heads=4, head_dim=8)
    assert cfg.head_dim == 8
    assert cfg.memory_head_dim == 8


def test_head_dim_must_be_even():
    """An odd head_dim, explicit or derived (30 / 2 = 15), raises naming head_dim."""
    with raises_naming("head_dim"):
        small(head_dim=7)
    with pytest.raises(ValueError, match=r"head_dim must be even.*15"):
        small(hidden_size=30, num_heads=2)


@pytest.mark.parametrize("variant", ["lmm", "transformer", "swa"])
def test_persistent_tokens_only_for_mac_mag_mal(variant):
    """num_persistent_tokens > 0 raises for lmm/transformer/swa; 0 is accepted."""
    with raises_naming("num_persistent_tokens"):
        small(variant, num_persistent_tokens=1)
    assert small(variant, num_persistent_tokens=0).num_persistent_tokens == 0


@pytest.mark.parametrize("variant", PERSISTENT_VARIANTS)
def test_persistent_tokens_must_be_a_non_negative_int(variant):
    """num_persistent_tokens rejects negatives, floats and bools; 0 is allowed for mac/mag/mal."""
    assert small(variant, num_persistent_tokens=0).num_persistent_tokens == 0
    for bad in (-1, 2.0, True):
        with raises_naming("num_persistent_tokens"):
            small(variant, num_persistent_tokens=bad)


def test_mac_needs_chunk_size_to_divide_segment_len():
    """MAC rejects segment_len 10 with chunk_size 4 (naming both); MAG and MAL accept it."""
    with pytest.raises(ValueError, match=r"chunk_size \(4\).*segment_len \(10\)"):
        small("mac", segment_len=10)
    assert small("mag", segment_len=10).segment_len == 10
    assert small("mal", segment_len=10).segment_len == 10
    assert small("mac", segment_len=8).segment_len == 8


def test_replace_revalidates():
    """dataclasses.replace re-runs validation: a bad value raises, a good one builds."""
    cfg = small("mac")
    with raises_naming("chunk_size"):
        dataclasses.replace(cfg, chunk_size=0)
    with raises_naming("segment_len"):
        dataclasses.replace(cfg, segment_len=10)
    with raises_naming("use_decay"):
        dataclasses.replace(cfg, use_decay="no")
    with raises_naming("num_persistent_tokens"):
        dataclasses.replace(cfg, variant="swa")  # mac's 3 persistent tokens are carried over
    assert dataclasses.replace(cfg, memory_depth=3).memory_depth == 3


# ---------------------------------------------------------------- derived fields


@pytest.mark.parametrize(("hidden", "expected"),
                         [(768, 2048), (64, 192), (256, 704), (32, 128), (1024, 2752),
                          (1536, 4096), (2048, 5504), (24, 64)])
def test_intermediate_size_is_8_3_hidden_rounded_up_to_64(hidden, expected):
    """intermediate_size = ceil(8/3 * hidden / 64) * 64, exactly."""
    assert small(hidden_size=hidden).intermediate_size == expected


def test_explicit_derived_fields_are_kept():
    """Explicit head_dim, intermediate_size, memory heads and memory head_dim are not overridden."""
    cfg = small(head_dim=6, intermediate_size=100, memory_num_heads=3, memory_head_dim=10)
    assert (cfg.head_dim, cfg.intermediate_size) == (6, 100)
    assert (cfg.memory_num_heads, cfg.memory_head_dim) == (3, 10)


def test_head_dim_and_memory_dims_default_from_heads():
    """head_dim = hidden / heads; memory heads and memory head_dim default to the attention's."""
    cfg = small(hidden_size=48, num_heads=3)
    assert cfg.head_dim == 16
    assert (cfg.memory_num_heads, cfg.memory_head_dim) == (3, 16)
    cfg = small(hidden_size=48, num_heads=3, head_dim=8)
    assert (cfg.memory_num_heads, cfg.memory_head_dim) == (3, 8)
    default = TitansConfig()
    assert (default.head_dim, default.intermediate_size) == (48, 2048)
    assert (default.memory_num_heads, default.memory_head_dim) == (16, 48)


@pytest.mark.parametrize("variant", VARIANTS)
def test_persistent_tokens_default(variant):
    """num_persistent_tokens None -> 16 for mac/mag/mal and 0 otherwise."""
    cfg = TitansConfig(variant=variant)
    assert cfg.num_persistent_tokens == (16 if variant in PERSISTENT_VARIANTS else 0)
    assert cfg.has_memory == (variant in MEMORY_VARIANTS)


# ---------------------------------------------------------------- dict / JSON


@pytest.mark.parametrize("variant", VARIANTS)
def test_dict_and_json_round_trip(variant):
    """to_dict -> from_dict (also via JSON) rebuilds an equal config, derived fields included."""
    cfg = small(variant, memory_activation="silu", rope_theta=500.0, tie_word_embeddings=False)
    values = cfg.to_dict()
    assert values["variant"] == variant
    assert values["head_dim"] == 16
    assert values["intermediate_size"] == 128
    assert TitansConfig.from_dict(values) == cfg
    assert TitansConfig.from_dict(json.loads(json.dumps(values))) == cfg
    assert TitansConfig.from_dict(values) != dataclasses.replace(cfg, rope_theta=1000.0)


def test_from_dict_rejects_unknown_keys_listing_them():
    """Unknown keys raise ValueError listing each of them."""
    values = {**small().to_dict(), "hiden_size": 32, "dropout": 0.1}
    with pytest.raises(ValueError, match=re.escape("['dropout', 'hiden_size']")):
        TitansConfig.from_dict(values)


def test_from_dict_validates_values():
    """from_dict runs the same validation as the constructor."""
    with raises_naming("num_heads"):
        TitansConfig.from_dict({**small().to_dict(), "num_heads": 0})
    assert TitansConfig.from_dict({"variant": "swa"}) == TitansConfig(variant="swa")


# ---------------------------------------------------------------- presets


PAPER_SHAPES = {"170M": (12, 768, 16), "340M": (24, 1024, 16), "760M": (24, 1536, 16),
                "1.3B": (18, 2048, 8)}


@pytest.mark.parametrize("preset", PAPER_PRESETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_presets_have_table_5_shapes_and_build(preset, variant):
    """Paper presets: Table-5 layers/dim/heads, vocab 32000, segment 512, window 2048, chunk 16,
    128 persistent tokens for mac/mag/mal (0 otherwise); the model builds with that many layers."""
    cfg = TitansConfig.from_preset(preset, variant)
    layers, dim, heads = PAPER_SHAPES[preset]
    assert cfg.variant == variant
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_heads) == (layers, dim, heads)
    assert (cfg.vocab_size, cfg.segment_len, cfg.window_size, cfg.chunk_size) == (
        32000, 512, 2048, 16)
    assert cfg.num_persistent_tokens == (128 if variant in PERSISTENT_VARIANTS else 0)
    model = meta_model(preset, variant)
    assert len(model.layers) == layers
    assert model.embed_tokens.weight.shape == (32000, dim)
    assert model.lm_head.weight is model.embed_tokens.weight
    if variant in PERSISTENT_VARIANTS:
        assert model.layers[0].mixer.persistent.shape == (128, dim)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_small_presets_build_and_run(preset, variant):
    """The tiny and small presets build a valid config for every variant; tiny runs a forward."""
    cfg = TitansConfig.from_preset(preset, variant)
    fields, persistent = PRESETS[preset]
    for name, value in fields.items():
        assert getattr(cfg, name) == value
    assert cfg.num_persistent_tokens == (persistent if variant in PERSISTENT_VARIANTS else 0)
    if preset == "tiny":
        torch.manual_seed(0)
        out = TitansLM(cfg)(torch.randint(0, 256, (1, 5)))
        assert out.logits.shape == (1, 5, 256)
        assert torch.isfinite(out.logits).all()


def test_transformer_340m_has_about_336m_parameters():
    """The 340M transformer++ preset (tied embeddings) has 336.4M parameters (within 2%)."""
    n = meta_model("340M", "transformer").num_parameters()
    assert abs(n - 336.4e6) / 336.4e6 < 0.02, n
    assert n == 336_380_928  # exact count of this implementation


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_memory_variants_have_more_parameters_than_the_transformer(preset):
    """Each memory variant has more parameters than transformer++ of the same preset; SWA equals
    it (the window changes no weights)."""
    base = meta_model(preset, "transformer").num_parameters()
    assert meta_model(preset, "swa").num_parameters() == base
    for variant in MEMORY_VARIANTS:
        assert meta_model(preset, variant).num_parameters() > base, variant


def test_preset_overrides_apply():
    """Overrides replace preset fields, including num_persistent_tokens and derived fields."""
    cfg = TitansConfig.from_preset("170M", "mag", num_hidden_layers=2, window_size=64,
                                   num_persistent_tokens=0)
    assert (cfg.num_hidden_layers, cfg.window_size, cfg.num_persistent_tokens) == (2, 64, 0)
    assert cfg.hidden_size == 768
    cfg = TitansConfig.from_preset("tiny", "lmm", hidden_size=128)
    assert (cfg.head_dim, cfg.intermediate_size) == (64, 384)
    with raises_naming("chunk_size"):
        TitansConfig.from_preset("tiny", "mac", chunk_size=0)
    with pytest.raises(ValueError, match="unknown TitansConfig keys"):
        TitansConfig.from_preset("tiny", "mac", hiddensize=8)


def test_unknown_preset_raises():
    """An unknown preset name raises ValueError naming it."""
    for bad in ("huge", "170m", ""):
        with pytest.raises(ValueError, match=re.escape(f"unknown preset {bad!r}")):
            TitansConfig.from_preset(bad)
    with raises_naming("variant"):
        TitansConfig.from_preset("tiny", "rnn")


# ---------------------------------------------------------------- ablations


def test_ablation_table_is_complete():
    """ABLATIONS holds the five Table-5 ablations."""
    assert set(ABLATIONS) == {"linear_memory", "no_momentum", "no_decay", "no_conv",
                              "no_persistent"}


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_linear_memory_ablation(variant):
    """linear_memory: depth 1 and no residual norm; the memory holds one [D, D] matrix per head."""
    cfg = small(variant, **ABLATIONS["linear_memory"])
    assert (cfg.memory_depth, cfg.memory_residual_norm) == (1, False)
    memory = TitansLM(cfg).layers[0].mixer.memory
    assert memory.memory_depth == 1
    assert [tuple(w.shape) for w in memory.memory_init] == [(2, 16, 16)]
    assert memory.residual_norm is False
    deep = TitansLM(small(variant)).layers[0].mixer.memory
    assert [tuple(w.shape) for w in deep.memory_init] == [(2, 16, 32), (2, 32, 16)]


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_gate_and_conv_ablations(variant):
    """no_momentum / no_decay / no_conv switch off exactly that part of the memory."""
    for name, attr, off in (("no_momentum", "use_momentum", False),
                            ("no_decay", "use_decay", False)):
        cfg = small(variant, **ABLATIONS[name])
        assert getattr(cfg, attr) is off
        memory = TitansLM(cfg).layers[0].mixer.memory
        assert getattr(memory, attr) is off
        assert memory.use_momentum is (attr != "use_momentum")
        assert memory.use_decay is (attr != "use_decay")
    cfg = small(variant, **ABLATIONS["no_conv"])
    assert cfg.conv_kernel == 0
    assert TitansLM(cfg).layers[0].mixer.memory.conv is None
    assert TitansLM(small(variant)).layers[0].mixer.memory.conv is not None


@pytest.mark.parametrize("variant", PERSISTENT_VARIANTS)
def test_no_persistent_ablation(variant):
    """no_persistent: zero persistent tokens (also overriding a preset's 128) and a model that
    still runs."""
    cfg = TitansConfig.from_preset("170M", variant, **ABLATIONS["no_persistent"])
    assert cfg.num_persistent_tokens == 0
    cfg = small(variant, **ABLATIONS["no_persistent"])
    model = TitansLM(cfg)
    assert model.layers[0].mixer.persistent.shape == (0, 32)
    assert torch.isfinite(model(torch.randint(0, 61, (1, 13))).logits).all()


@pytest.mark.parametrize("name", sorted(ABLATIONS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_ablation_is_a_valid_override_for_every_variant(name, variant):
    """Every ablation's overrides give a valid config for every variant, with those values."""
    cfg = TitansConfig.from_preset("tiny", variant, **ABLATIONS[name])
    for field, value in ABLATIONS[name].items():
        assert getattr(cfg, field) == value


def test_replace_method_rederives_derived_fields():
    """cfg.replace re-derives fields the caller left to derivation, keeps explicit ones."""
    cfg = TitansConfig(variant="mac", hidden_size=64, num_heads=2)
    wider = cfg.replace(hidden_size=128)
    assert (wider.head_dim, wider.intermediate_size) == (64, 384)
    assert cfg.replace(variant="swa").num_persistent_tokens == 0
    explicit = TitansConfig(hidden_size=64, num_heads=2, head_dim=16)
    assert explicit.replace(hidden_size=128).head_dim == 16
    assert cfg.replace(rope_theta=500.0) == TitansConfig(
        variant="mac", hidden_size=64, num_heads=2, rope_theta=500.0)
    with pytest.raises(ValueError, match="unknown"):
        cfg.replace(hidden=3)


def test_model_differences_count_a_variant_only_field_for_its_variant_only():
    """An LMM that differs only in a MAC/MAL option is the same model; a MAC that differs in
    mac_memory_input, or any config that differs in a shared field, is not."""
    lmm = TitansConfig(variant="lmm", hidden_size=32, num_heads=2)
    assert lmm.model_differences(lmm.replace(mac_memory_input="attention",
                                             mal_memory_skip=False)) == {}
    mac = lmm.replace(variant="mac")
    assert mac.model_differences(mac.replace(mac_memory_input="attention")) == {
        "mac_memory_input": ("residual", "attention")}
    mal = lmm.replace(variant="mal")
    assert mal.model_differences(mal.replace(mal_memory_skip=False)) == {
        "mal_memory_skip": (True, False)}
    assert lmm.model_differences(lmm.replace(conv_kernel=2)) == {"conv_kernel": (4, 2)}
    assert set(lmm.model_differences(mac)) == {"variant", "num_persistent_tokens"}
