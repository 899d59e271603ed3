"""evaluate_perplexity: numbers equal an independent full-forward computation for every variant,
exactly the L - 1 later tokens of each window are scored and their bytes counted, piece length and
batch size do not change results, max_tokens, uniform logits give ln(V), and errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from titans import TitansConfig, TitansLM
from titans.evals import evaluate_perplexity

VOCAB = 61
VARIANTS = ("mac", "mag", "mal", "lmm", "transformer", "swa")


def config(variant, **overrides):
    """The small config of tests/models/test_lm.py."""
    values = dict(variant=variant, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_heads=2, segment_len=12, window_size=7, chunk_size=4,
                  memory_expansion=2)
    if variant in ("mac", "mag", "mal"):
        values["num_persistent_tokens"] = 3
    return TitansConfig(**{**values, **overrides})


_MODELS = {}


def model_for(variant):
    """A seeded float64 model per variant, built once (evaluation never changes parameters)."""
    if variant not in _MODELS:
        torch.manual_seed(0)
        _MODELS[variant] = TitansLM(config(variant)).double()
    return _MODELS[variant]


def stream_tokens(n=100, seed=1):
    """[n] uint16 token ids, the dtype of a packed TokenFile."""
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def toy_decode(ids):
    """1-, 2- and 3-byte characters by id, so the bytes of any token span are known."""
    return "".join(("a", "é", "€")[i % 3] for i in ids)


def token_bytes(ids):
    return sum(i % 3 + 1 for i in ids)


def reference(model, tokens, length, windows):
    """Sum of next-token losses of the first ``windows`` windows, each one full forward, and the
    targets scored (tokens 1 .. L - 1 of each window)."""
    ids = torch.from_numpy(tokens[:windows * length].astype(np.int64)).reshape(windows, length)
    with torch.no_grad():
        logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="sum")
    return float(loss), ids[:, 1:].flatten().tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_a_full_forward_of_each_window(variant):
    """Windows longer than the piece (and than MAC's segment / the attention window), in batches
    of 4 windows (6 windows of 16: a full and a partial batch), give the losses of one full
    forward per window; ppl = exp(nll); bits-per-byte counts exactly the scored tokens' bytes."""
    model = model_for(variant)
    tokens = stream_tokens()
    results = evaluate_perplexity(model, tokens, [30, 16], decode=toy_decode, piece_len=7,
                                  batch_size=4)
    assert [r["context_length"] for r in results] == [30, 16]  # the order given
    for r, length in zip(results, (30, 16), strict=True):
        windows = len(tokens) // length
        loss, targets = reference(model, tokens, length, windows)
        assert r["windows"] == windows
        assert r["tokens"] == len(targets) == windows * (length - 1)
        assert r["nll"] == pytest.approx(loss / len(targets), rel=0, abs=1e-10)
        assert r["ppl"] == pytest.approx(math.exp(r["nll"]), rel=1e-14)
        assert r["bytes"] == token_bytes(targets)
        assert r["bits_per_byte"] == pytest.approx(
            loss / math.log(2) / token_bytes(targets), rel=0, abs=1e-10
        )


@pytest.mark.parametrize("variant", ["mac", "swa"])
def test_piece_length_and_batch_size_do_not_change_results(variant):
    """One window at a time in one piece == in pieces, side by side (3: a smaller last batch)."""
    model = model_for(variant)
    tokens = stream_tokens()
    expected = evaluate_perplexity(model, tokens, [24], decode=toy_decode, piece_len=24)[0]
    assert expected["windows"] == 4
    for piece_len, batch_size in ((1000, 1), (24, 2), (7, 3)):
        got = evaluate_perplexity(model, tokens, [24], decode=toy_decode, piece_len=piece_len,
                                  batch_size=batch_size)[0]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=0, abs=1e-12), (piece_len, batch_size, key)


def test_tensor_input_equals_numpy_input():
    model = model_for("mal")
    tokens = stream_tokens(50)
    from_numpy = evaluate_perplexity(model, tokens, [10], piece_len=4)
    from_tensor = evaluate_perplexity(model, torch.from_numpy(tokens.astype(np.int64)), [10],
                                      piece_len=4)
    assert from_numpy == from_tensor


def test_max_tokens_caps_whole_windows():
    model = model_for("lmm")
    tokens = stream_tokens()
    full = evaluate_perplexity(model, tokens, [16])[0]
    assert full["windows"] == 6
    # 15 scored tokens per window: 45 allows 3 whole windows (the first 48 tokens), 44 only 2.
    capped = evaluate_perplexity(model, tokens, [16], max_tokens=45)[0]
    assert (capped["windows"], capped["tokens"]) == (3, 45)
    loss, _ = reference(model, tokens, 16, 3)
    assert capped["nll"] == pytest.approx(loss / 45, rel=0, abs=1e-10)
    assert evaluate_perplexity(model, tokens, [16], max_tokens=44)[0]["tokens"] == 30
    # Fewer than one window's worth still scores one window; a large cap changes nothing.
    assert evaluate_perplexity(model, tokens, [16], max_tokens=1)[0]["tokens"] == 15
    assert evaluate_perplexity(model, tokens, [16], max_tokens=10**6)[0] == full


def test_bits_per_byte_from_num_bytes_scales_by_the_scored_fraction():
    model = model_for("mag")
    tokens = stream_tokens(53)  # 3 windows of 16 (45 scored tokens), 5 tokens unused
    r = evaluate_perplexity(model, tokens, [16], num_bytes=212)[0]
    assert r["bytes"] == pytest.approx(212 * 45 / 53, rel=1e-15)
    assert r["bits_per_byte"] == pytest.approx(r["nll"] * 45 / math.log(2) / r["bytes"],
                                               rel=1e-12)
    # decode takes precedence; with neither there is no bits-per-byte.
    with_decode = evaluate_perplexity(model, tokens, [16], decode=toy_decode, num_bytes=212)[0]
    assert with_decode["bytes"] == token_bytes(tokens[:48].reshape(3, 16)[:, 1:].flatten().tolist())
    none = evaluate_perplexity(model, tokens, [16])[0]
    assert none["bytes"] is None and none["bits_per_byte"] is None


def test_uniform_logits_give_log_vocab():
    """With a zero LM head (tied, so zero embeddings too) every logit is 0: every token's loss is
    ln V, so nll = ln V (up to the rounding of the sum), ppl = V and, at one byte per token,
    bits-per-byte = log2 V."""
    torch.manual_seed(0)
    model = TitansLM(config("mac")).double()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    tokens = stream_tokens(40)

    def decode(ids):
        return "".join(chr(97 + i % 26) for i in ids)

    r = evaluate_perplexity(model, tokens, [20, 13], decode=decode, piece_len=6)
    for result in r:
        assert result["nll"] == pytest.approx(math.log(VOCAB), rel=1e-15)
        assert result["ppl"] == pytest.approx(VOCAB, rel=1e-14)
        assert result["bits_per_byte"] == pytest.approx(math.log2(VOCAB), rel=1e-14)


def test_errors():
    model = model_for("swa")
    tokens = stream_tokens(20)
    with pytest.raises(ValueError, match="empty"):
        evaluate_perplexity(model, tokens[:0], [4])
    with pytest.raises(ValueError, match="context_lengths is empty"):
        evaluate_perplexity(model, tokens, [])
    with pytest.raises(ValueError, match="ints >= 2"):
        evaluate_perplexity(model, tokens, [8, 1])
    with pytest.raises(ValueError, match="at least 21 tokens for one window, got 20"):
        evaluate_perplexity(model, tokens, [21])
    with pytest.raises(ValueError, match="1-D integer"):
        evaluate_perplexity(model, tokens.reshape(4, 5), [4])
    with pytest.raises(ValueError, match="1-D integer"):
        evaluate_perplexity(model, tokens.astype(np.float32), [4])
    for name in ("piece_len", "batch_size", "max_tokens"):
        with pytest.raises(ValueError, match=name):
            evaluate_perplexity(model, tokens, [4], **{name: 0})
    with pytest.raises(ValueError, match="num_bytes"):
        evaluate_perplexity(model, tokens, [4], num_bytes=-1)
    with pytest.raises(ValueError, match="token ids must lie in"):
        evaluate_perplexity(model, np.full(8, VOCAB), [4])
