"""The Attention module: cache-carried splits, window trimming, position-free prefix, context."""

import pytest
import torch

from titans.layers import Attention


def make(window=None, seed=0):
    torch.manual_seed(seed)
    return Attention(16, 2, 8, window=window, block_size=4).double()


@pytest.mark.parametrize("window", [None, 1, 5])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_split_with_cache_equals_one_pass(window, with_prefix):
    """Pieces with the returned cache give one pass's outputs; the cache keeps window - 1."""
    attn = make(window)
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    prefix = torch.randn(3, 16, dtype=torch.float64) if with_prefix else None
    index = torch.arange(23)
    full, _ = attn(x, index, prefix=prefix)
    cache, outs = None, []
    for a, b in ((0, 1), (1, 9), (9, 10), (10, 23)):
        out, cache = attn(x[:, a:b], index[a:b], cache, prefix=prefix)
        outs.append(out)
        if window is not None:
            assert cache.length == min(b, window - 1)
            assert torch.equal(cache.index, torch.arange(b - cache.length, b))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [None, 6])
def test_outputs_do_not_depend_on_absolute_position(window):
    """RoPE is relative and prefix keys carry no position, so shifting every index by 10^6
    leaves the outputs unchanged (a rotated prefix would make them depend on it)."""
    attn = make(window)
    x = torch.randn(1, 15, 16, dtype=torch.float64)
    prefix = torch.randn(4, 16, dtype=torch.float64)
    a, _ = attn(x, torch.arange(15), prefix=prefix)
    b, _ = attn(x, torch.arange(15) + 10**6, prefix=prefix)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_prefix_changes_every_output():
    attn = make(4)
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    prefix = torch.randn(2, 16, dtype=torch.float64)
    a, _ = attn(x, torch.arange(12), prefix=prefix)
    b, _ = attn(x, torch.arange(12), prefix=prefix * 2)
    assert ((a - b).abs().amax(-1) > 1e-6).all()


def test_context_is_seen_causally_at_the_same_positions():
    """Token i sees context tokens j <= i: changing context j changes outputs from i = j on."""
    attn = make()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    context = torch.randn(1, 10, 16, dtype=torch.float64)
    base, cache = attn(x, torch.arange(10), context=context)
    assert cache.length == 20
    changed = context.clone()
    changed[:, 6] += 1
    out, _ = attn(x, torch.arange(10), context=changed)
    torch.testing.assert_close(out[:, :6], base[:, :6], rtol=0, atol=1e-14)
    assert (out[:, 6:] - base[:, 6:]).abs().amax(-1).min() > 1e-8


def test_batch_mismatch_with_cache_raises():
    attn = make()
    _, cache = attn(torch.randn(2, 3, 16, dtype=torch.float64), torch.arange(3))
    with pytest.raises(ValueError, match="KV cache"):
        attn(torch.randn(1, 3, 16, dtype=torch.float64), torch.arange(3, 6), cache)

