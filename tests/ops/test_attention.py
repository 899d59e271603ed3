"""attention (block-wise SDPA) is judged against attention_naive, which is judged once against a
hand-built dense masked softmax; plus causality, window, prefix, error and memory behaviour."""

from __future__ import annotations

import importlib

import pytest
import torch

from titans.ops.attention import attention, attention_naive, visible

# The package re-exports the function `attention`, which shadows the submodule as an attribute.
attn_mod = importlib.import_module("titans.ops.attention")

B, H = 2, 3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against the reference b."""
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_inputs(t_len, s_len, d=8, d_v=8, p=0, d_p=4, prefix_batch=(B, H), dtype=torch.float64,
                seed=0):
    """Random q, k, v and (if p > 0) a prefix (q_p, k_p, v_p); all require grad."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    q, k, v = randn(B, H, t_len, d), randn(B, H, s_len, d), randn(B, H, s_len, d_v)
    if not p:
        return q, k, v, None
    pb, ph = prefix_batch
    prefix = (randn(B, H, t_len, d_p), randn(pb, ph, p, d_p), randn(pb, ph, p, d_v))
    return q, k, v, prefix


def dense_reference(q, k, v, q_index, k_index, window=None, prefix=None, scale=None):
    """Softmax over [prefix scores || scores + explicit -inf mask]; all-masked rows give zeros."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_len, s_len = q.shape[2], k.shape[2]
    allowed = torch.zeros(t_len, s_len, dtype=torch.bool)
    for t in range(t_len):
        for s in range(s_len):
            ok = int(k_index[s]) <= int(q_index[t])
            if window is not None:
                ok = ok and int(k_index[s]) > int(q_index[t]) - window
            allowed[t, s] = ok
    neg = torch.zeros(t_len, s_len, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
    logits = q @ k.transpose(-1, -2) * scale + neg
    values = v
    if prefix is not None:
        q_p, k_p, v_p = prefix
        k_p, v_p = k_p.expand(B, H, -1, -1), v_p.expand(B, H, -1, -1)
        logits = torch.cat([q_p @ k_p.transpose(-1, -2) * scale, logits], -1)
        values = torch.cat([v_p, v], 2)
    weights = logits.softmax(-1).nan_to_num(0.0)
    return weights @ values


def all_inputs(q, k, v, prefix):
    return (q, k, v) if prefix is None else (q, k, v, *prefix)


def mac_layout(t_len, d=8, d_v=8, p=0, seed=0):
    """MAC segment: keys [h || x] with k_index [i || i], stably sorted so h_i precedes x_i."""
    q, k, v, prefix = make_inputs(t_len, 2 * t_len, d=d, d_v=d_v, p=p, seed=seed)
    idx = torch.arange(t_len)
    k_index, order = torch.sort(torch.cat([idx, idx]), stable=True)
    assert order[:4].tolist() == [0, t_len, 1, t_len + 1]
    return q, k[:, :, order], v[:, :, order], idx, k_index, prefix, (k, v)


LAYOUTS = {
    # name: (T, cache length L); q_index = arange(L, L + T), k_index = arange(L + T)
    "plain": (37, 0),
    "cache": (37, 11),
}


def test_visible_matches_definition():
    """visible(t, s) is True iff k_index[s] <= q_index[t] and k_index[s] > q_index[t] - window."""
    q_index = torch.tensor([0, 3, 3, 7, 10, 2])
    k_index = torch.tensor([5, 0, 1, 2, 3, 3, 9, 10, 11, -4])
    for window in (None, 1, 2, 4, 100):
        got = visible(q_index, k_index, window)
        assert got.dtype == torch.bool and got.shape == (6, 10)
        for t, qt in enumerate(q_index.tolist()):
            for s, ks in enumerate(k_index.tolist()):
                want = ks <= qt and (window is None or ks > qt - window)
                assert bool(got[t, s]) == want, (window, t, s)


@pytest.mark.parametrize("window", [None, 2, 5])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_naive_matches_dense_reference(window, with_prefix):
    """The token-by-token reference equals an explicit -inf-masked softmax (cache, Dv != D)."""
    t_len, cache = 9, 4
    q, k, v, prefix = make_inputs(t_len, cache + t_len, d=6, d_v=5, p=3 if with_prefix else 0,
                                  d_p=7, prefix_batch=(1, H), seed=1)
    q_index, k_index = torch.arange(cache, cache + t_len), torch.arange(cache + t_len)
    want = dense_reference(q, k, v, q_index, k_index, window, prefix)
    got = attention_naive(q, k, v, q_index, k_index, window=window, prefix=prefix)
    assert got.shape == (B, H, t_len, 5)
    assert rel_err(got, want) < 1e-13
    got_fast = attention(q, k, v, q_index, k_index, window=window, prefix=prefix, block_size=4)
    assert rel_err(got_fast, want) < 1e-13


@pytest.mark.parametrize("window", [None, 1, 3, 17, 10_000])
@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_naive_outputs_and_grads(window, with_prefix, layout):
    """Outputs and grads of q, k, v (and q_p, k_p, v_p) match the reference in float64.

    T = 37 with block_size 7 (blocks smaller than T, not dividing it), Dv != D.
    """
    t_len, cache = LAYOUTS[layout]
    q, k, v, prefix = make_inputs(t_len, cache + t_len, d=8, d_v=6, p=3 if with_prefix else 0,
                                  d_p=5, seed=2)
    q_index, k_index = torch.arange(cache, cache + t_len), torch.arange(cache + t_len)
    kw = dict(window=window, prefix=prefix)
    out = attention(q, k, v, q_index, k_index, block_size=7, **kw)
    ref = attention_naive(q, k, v, q_index, k_index, **kw)
    assert out.shape == ref.shape == (B, H, t_len, 6)
    assert (out - ref).abs().max() < 1e-12
    assert rel_err(out, ref) < 1e-13
    inputs = all_inputs(q, k, v, prefix)
    cot = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad(out, inputs, cot)
    grads_ref = torch.autograd.grad(ref, inputs, cot)
    names = ["q", "k", "v", "q_p", "k_p", "v_p"][: len(inputs)]
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        assert g.shape == g_ref.shape
        assert rel_err(g, g_ref) < 1e-12, name


@pytest.mark.parametrize("with_prefix", [False, True])
def test_mac_layout_matches_naive(with_prefix):
    """MAC segment keys [h || x] with k_index [i || i] (stably sorted): fast == naive, with grads.

    Also checks the layout semantics: query i sees exactly h_j and x_j for j <= i.
    """
    t_len = 13
    q, k, v, idx, k_index, prefix, (k_raw, v_raw) = mac_layout(t_len, d=8, d_v=4,
                                                              p=2 if with_prefix else 0)
    out = attention(q, k, v, idx, k_index, prefix=prefix, block_size=5)
    ref = attention_naive(q, k, v, idx, k_index, prefix=prefix)
    assert rel_err(out, ref) < 1e-13
    # Unsorted [h || x] with k_index [i || i] is the same attention (no window: order-free).
    unsorted = attention_naive(q, k_raw, v_raw, idx, torch.cat([idx, idx]), prefix=prefix)
    assert rel_err(unsorted, ref) < 1e-13
    inputs = all_inputs(q, k, v, prefix)
    grads = torch.autograd.grad(out.pow(2).sum(), inputs)
    grads_ref = torch.autograd.grad(ref.pow(2).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < 1e-12
    # First query sees exactly h_0 and x_0 (plus the prefix, if any).
    want0 = dense_reference(q[:, :, :1], k[:, :, :2], v[:, :, :2], idx[:1], k_index[:2],
                            prefix=None if prefix is None else (prefix[0][:, :, :1], *prefix[1:]))
    torch.testing.assert_close(out[:, :, :1], want0, rtol=0, atol=1e-13)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_mac_layout_with_window_and_repeated_indices(window):
    """Sorted keys with repeated indices ([i || i]) and repeated query indices work with a window:
    fast == naive == dense, across block boundaries that split equal indices."""
    t_len = 11
    q, k, v, idx, k_index, prefix, _ = mac_layout(t_len, p=2, seed=20)
    out = attention(q, k, v, idx, k_index, window=window, prefix=prefix, block_size=3)
    ref = attention_naive(q, k, v, idx, k_index, window=window, prefix=prefix)
    assert rel_err(out, ref) < 1e-13
    assert rel_err(out, dense_reference(q, k, v, idx, k_index, window, prefix)) < 1e-13
    q_index = torch.tensor([0, 0, 1, 1, 1, 4, 4, 7, 7, 7, 10])
    out = attention(q, k, v, q_index, k_index, window=window, prefix=prefix, block_size=2)
    assert rel_err(out, dense_reference(q, k, v, q_index, k_index, window, prefix)) < 1e-13


def test_no_keys_or_empty_prefix():
    """S = 0 gives zeros (or the prefix softmax); an empty prefix (P = 0) changes nothing."""
    t_len = 6
    q, k, v, prefix = make_inputs(t_len, t_len, d_v=5, p=2, seed=21)
    idx = torch.arange(t_len)
    for window in (None, 3):
        empty = attention(q, k[:, :, :0], v[:, :, :0], idx, idx[:0], window=window, block_size=4)
        assert empty.shape == (B, H, t_len, 5) and torch.all(empty == 0)
        only_prefix = attention(q, k[:, :, :0], v[:, :, :0], idx, idx[:0], window=window,
                                prefix=prefix, block_size=4)
        want = dense_reference(q, k[:, :, :0], v[:, :, :0], idx, idx[:0], window, prefix)
        assert rel_err(only_prefix, want) < 1e-13
        q_p, k_p, v_p = prefix
        no_prefix = attention(q, k, v, idx, idx, window=window, block_size=4)
        p0 = attention(q, k, v, idx, idx, window=window, block_size=4,
                       prefix=(q_p, k_p[:, :, :0], v_p[:, :, :0]))
        torch.testing.assert_close(p0, no_prefix, rtol=0, atol=1e-14)


def test_scale_argument_and_default():
    """Default scale is D ** -0.5 for ordinary and prefix scores; a custom scale is honoured."""
    t_len = 11
    q, k, v, prefix = make_inputs(t_len, t_len, d=8, d_v=8, p=3, d_p=2, seed=3)
    idx = torch.arange(t_len)
    for window in (None, 4):
        default = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=4)
        explicit = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=4,
                             scale=8**-0.5)
        torch.testing.assert_close(default, explicit, rtol=0, atol=1e-14)
        want = dense_reference(q, k, v, idx, idx, window, prefix, scale=8**-0.5)
        assert rel_err(default, want) < 1e-13
        custom = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=4,
                           scale=0.37)
        assert rel_err(custom, dense_reference(q, k, v, idx, idx, window, prefix, 0.37)) < 1e-13
        assert rel_err(custom, default) > 1e-3
        naive = attention_naive(q, k, v, idx, idx, window=window, prefix=prefix, scale=0.37)
        assert rel_err(naive, custom) < 1e-13


def test_value_dim_larger_than_widened_head_dim():
    """Dv > D + Dp (no value padding) still matches the reference."""
    t_len = 10
    q, k, v, prefix = make_inputs(t_len, t_len, d=4, d_v=20, p=2, d_p=3, seed=4)
    idx = torch.arange(t_len)
    for window in (None, 3):
        out = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=3)
        assert out.shape == (B, H, t_len, 20)
        assert rel_err(out, dense_reference(q, k, v, idx, idx, window, prefix)) < 1e-13


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize(("p", "d_p"), [(3, 8), (5, 5), (8, 3)])
def test_prefix_scores_as_one_hot_keys_or_raw(window, p, d_p):
    """With fewer prefix keys than prefix dims (P < D_p) the prefix joins SDPA as its scores
    q_p @ k_p^T against one-hot keys, otherwise as q_p itself: both match the reference in
    float64, outputs and the grads of q, k, v, q_p, k_p, v_p."""
    t_len, cache = 11, 3
    q, k, v, prefix = make_inputs(t_len, cache + t_len, d=6, d_v=7, p=p, d_p=d_p,
                                  prefix_batch=(1, H), seed=23)
    q_index, k_index = torch.arange(cache, cache + t_len), torch.arange(cache + t_len)
    out = attention(q, k, v, q_index, k_index, window=window, prefix=prefix, block_size=4)
    ref = attention_naive(q, k, v, q_index, k_index, window=window, prefix=prefix)
    assert rel_err(out, ref) < 1e-13
    inputs = all_inputs(q, k, v, prefix)
    cot = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(4))
    for g, g_ref in zip(torch.autograd.grad(out, inputs, cot),
                        torch.autograd.grad(ref, inputs, cot), strict=True):
        assert rel_err(g, g_ref) < 1e-12


@pytest.mark.parametrize("window", [None, 4])
def test_causality(window):
    """Changing the key/value at index j changes no query with q_index < j, but does change
    query j."""
    t_len, j = 20, 12
    q, k, v, prefix = make_inputs(t_len, t_len, p=2, seed=5)
    idx = torch.arange(t_len)
    with torch.no_grad():
        out = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=6)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, j] += 3.0
        v2[:, :, j] -= 5.0
        out2 = attention(q, k2, v2, idx, idx, window=window, prefix=prefix, block_size=6)
    assert torch.equal(out2[:, :, :j], out[:, :, :j])
    assert (out2[:, :, j] - out[:, :, j]).abs().min() > 1e-6


def test_causality_gradient():
    """The output at query t has zero gradient w.r.t. every key/value with a later index."""
    t_len, t = 15, 6
    q, k, v, _ = make_inputs(t_len, t_len, seed=6)
    idx = torch.arange(t_len)
    out = attention(q, k, v, idx, idx, block_size=4)
    gk, gv = torch.autograd.grad(out[:, :, t].sum(), (k, v))
    assert torch.all(gk[:, :, t + 1:] == 0) and torch.all(gv[:, :, t + 1:] == 0)
    assert torch.all(gv[:, :, : t + 1].abs().sum(-1) > 0)


def test_window_excludes_old_keys():
    """With window w, key 0 affects exactly the queries 0 .. w-1."""
    t_len, w = 30, 5
    q, k, v, prefix = make_inputs(t_len, t_len, p=2, seed=7)
    idx = torch.arange(t_len)
    with torch.no_grad():
        out = attention(q, k, v, idx, idx, window=w, prefix=prefix, block_size=8)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 0] = 10.0
        v2[:, :, 0] = 100.0
        out2 = attention(q, k2, v2, idx, idx, window=w, prefix=prefix, block_size=8)
    assert torch.equal(out2[:, :, w:], out[:, :, w:])
    assert (out2[:, :, :w] - out[:, :, :w]).abs().amax(-1).min() > 1e-3


def test_window_one_is_self_attention():
    """window=1 and no prefix: every query sees only the key with its own index, so out == v."""
    t_len = 9
    q, k, v, _ = make_inputs(t_len, t_len, d_v=3, seed=8)
    idx = torch.arange(t_len)
    out = attention(q, k, v, idx, idx, window=1, block_size=4)
    torch.testing.assert_close(out, v.detach(), rtol=0, atol=1e-14)


def test_large_window_equals_full_causal():
    """A window longer than the sequence equals no window."""
    t_len = 25
    q, k, v, prefix = make_inputs(t_len, t_len, p=2, seed=9)
    idx = torch.arange(t_len)
    full = attention(q, k, v, idx, idx, prefix=prefix)
    windowed = attention(q, k, v, idx, idx, window=t_len, prefix=prefix, block_size=6)
    assert rel_err(windowed, full) < 1e-13
    shorter = attention(q, k, v, idx, idx, window=t_len - 1, prefix=prefix, block_size=6)
    assert rel_err(shorter[:, :, -1:], full[:, :, -1:]) > 1e-6


def test_no_window_is_key_order_free():
    """Without a window, permuting keys, values and k_index together changes nothing."""
    t_len = 16
    q, k, v, prefix = make_inputs(t_len, t_len + 4, p=2, seed=10)
    q_index, k_index = torch.arange(4, 4 + t_len), torch.arange(t_len + 4)
    perm = torch.randperm(t_len + 4, generator=torch.Generator().manual_seed(0))
    out = attention(q, k, v, q_index, k_index, prefix=prefix)
    out_p = attention(q, k[:, :, perm], v[:, :, perm], q_index, k_index[perm], prefix=prefix)
    assert rel_err(out_p, out) < 1e-13


@pytest.mark.parametrize("window", [None, 3])
def test_prefix_seen_by_every_query(window):
    """A prefix key with a huge score dominates: every output equals its value, even for queries
    that see no ordinary key."""
    t_len, d_p = 12, 4
    q, k, v, _ = make_inputs(t_len, t_len, d_v=6, seed=11)
    g = torch.Generator().manual_seed(1)
    q_p = torch.ones(B, H, t_len, d_p, dtype=torch.float64)
    k_p = torch.stack([torch.full((d_p,), 100.0), torch.zeros(d_p)]).double()[None, None]
    v_p = torch.randn(1, 1, 2, 6, generator=g, dtype=torch.float64)
    q_index = torch.arange(t_len)
    k_index = torch.arange(t_len) + 5  # queries 0..4 see no ordinary key
    out = attention(q, k, v, q_index, k_index, window=window, prefix=(q_p, k_p, v_p),
                    block_size=4)
    want = v_p[:, :, 0:1].expand(B, H, t_len, 6)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_prefix_only_query_gets_prefix_softmax():
    """A query with no visible ordinary key but a prefix gets the softmax over the prefix alone."""
    t_len = 6
    q, k, v, prefix = make_inputs(t_len, t_len, d_v=5, p=3, d_p=4, prefix_batch=(1, 1), seed=12)
    q_index = torch.arange(t_len)
    k_index = torch.arange(t_len) + 3
    q_p, k_p, v_p = prefix
    w = (q_p[:, :, :3] @ k_p.transpose(-1, -2) * 8**-0.5).softmax(-1)
    want = w @ v_p.expand(B, H, 3, 5)
    for window in (None, 2):
        out = attention(q, k, v, q_index, k_index, window=window, prefix=prefix, block_size=2)
        torch.testing.assert_close(out[:, :, :3], want, rtol=0, atol=1e-13)


def test_prefix_broadcast_equals_expanded():
    """k_p, v_p with batch/head dims of 1 act like the same tensors expanded to [B, H]."""
    t_len = 10
    q, k, v, prefix = make_inputs(t_len, t_len, p=3, prefix_batch=(1, 1), seed=13)
    q_p, k_p, v_p = prefix
    expanded = (q_p, k_p.expand(B, H, -1, -1).clone(), v_p.expand(B, H, -1, -1).clone())
    idx = torch.arange(t_len)
    for window in (None, 4):
        a = attention(q, k, v, idx, idx, window=window, prefix=prefix, block_size=3)
        b = attention(q, k, v, idx, idx, window=window, prefix=expanded, block_size=3)
        assert rel_err(a, b) < 1e-14


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fully_masked_rows_are_zero(window, dtype):
    """Queries that see no key (and no prefix) output exactly zero, with finite gradients."""
    t_len = 8
    q, k, v, _ = make_inputs(t_len, t_len, d_v=5, dtype=dtype, seed=14)
    q_index = torch.arange(t_len)
    k_index = torch.arange(t_len) + 3  # queries 0, 1, 2 see nothing
    out = attention(q, k, v, q_index, k_index, window=window, block_size=2)
    assert torch.all(out[:, :, :3] == 0)
    assert torch.all(out[:, :, 3:].abs().sum(-1) > 0)
    naive = attention_naive(q, k, v, q_index, k_index, window=window)
    assert torch.all(naive[:, :, :3] == 0)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert rel_err(out, naive) < tol
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    grads_ref = torch.autograd.grad(naive.sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < tol


def test_all_queries_masked_gives_zeros():
    """If no query sees any key, the whole output is zeros (windowed and full)."""
    t_len = 5
    q, k, v, _ = make_inputs(t_len, t_len, seed=15)
    q_index, k_index = torch.arange(t_len), torch.arange(t_len) + 100
    for window in (None, 3):
        out = attention(q, k, v, q_index, k_index, window=window, block_size=2)
        assert out.shape == (B, H, t_len, 8) and torch.all(out == 0)


def test_empty_query():
    """T = 0 gives an empty [B, H, 0, Dv] output from both implementations."""
    q, k, v, _ = make_inputs(0, 4, d_v=3, seed=16)
    q_index, k_index = torch.arange(0), torch.arange(4)
    for window in (None, 2):
        assert attention(q, k, v, q_index, k_index, window=window).shape == (B, H, 0, 3)
        assert attention_naive(q, k, v, q_index, k_index, window=window).shape == (B, H, 0, 3)


@pytest.mark.parametrize("window", [None, 6])
def test_float32_matches_float64(window):
    """float32 output agrees with float64 at a loose tolerance and keeps the input dtype."""
    t_len, cache = 33, 7
    q, k, v, prefix = make_inputs(t_len, t_len + cache, d_v=6, p=2, seed=17)
    q_index, k_index = torch.arange(cache, cache + t_len), torch.arange(cache + t_len)
    out64 = attention(q, k, v, q_index, k_index, window=window, prefix=prefix, block_size=8)
    to32 = [x.detach().float() for x in all_inputs(q, k, v, prefix)]
    out32 = attention(*to32[:3], q_index, k_index, window=window, prefix=tuple(to32[3:]),
                      block_size=8)
    assert out32.dtype == torch.float32
    assert rel_err(out32.double(), out64) < 1e-5


@pytest.mark.parametrize("window", [None, 40])
def test_aligned_causal_fast_path_matches_the_masked_path(monkeypatch, window):
    """Queries and keys with the same increasing indices (and a window spanning them) take SDPA's
    is_causal path, building no mask; outputs and grads equal the masked path and the naive
    reference in float64. Repeated, unsorted or out-of-window indices keep the masked path."""
    t_len = 37
    q, k, v, _ = make_inputs(t_len, t_len, seed=22)
    idx = torch.arange(5, 5 + t_len)
    masks = []
    real_visible = attn_mod.visible

    def recording_visible(q_index, k_index, w):
        masks.append(q_index.shape[0])
        return real_visible(q_index, k_index, w)

    monkeypatch.setattr(attn_mod, "visible", recording_visible)
    fast = attention(q, k, v, idx, idx, window=window, block_size=7)
    assert masks == []
    with monkeypatch.context() as m:
        m.setattr(attn_mod, "_causal_aligned", lambda *args: False)
        masked = attention(q, k, v, idx, idx, window=window, block_size=7)
    assert masks
    ref = attention_naive(q, k, v, idx, idx, window=window)
    assert rel_err(fast, masked) < 1e-14 and rel_err(fast, ref) < 1e-13
    cot = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(fast, (q, k, v), cot)
    for g, g_masked, g_ref in zip(grads, torch.autograd.grad(masked, (q, k, v), cot),
                                  torch.autograd.grad(ref, (q, k, v), cot), strict=True):
        assert rel_err(g, g_masked) < 1e-13 and rel_err(g, g_ref) < 1e-12
    qs, ks, vs = q[:, :, :5], k[:, :, :5], v[:, :, :5]
    for index, w in ((torch.tensor([0, 0, 1, 2, 3]), None), (torch.tensor([3, 1, 2, 0, 4]), None),
                     (torch.arange(5), 4)):
        masks.clear()
        out = attention(qs, ks, vs, index, index, window=w)
        assert masks, (index, w)
        assert rel_err(out, attention_naive(qs, ks, vs, index, index, window=w)) < 1e-13


def test_window_mask_memory_is_local(monkeypatch):
    """Windowed attention over T=2000 never asks for a mask wider than block_size + window - 1
    or taller than block_size (no T x T mask), and still gives the right answer."""
    t_len, window, block = 2000, 64, 128
    shapes = []
    real_visible = attn_mod.visible

    def recording_visible(q_index, k_index, w):
        mask = real_visible(q_index, k_index, w)
        shapes.append(tuple(mask.shape))
        return mask

    monkeypatch.setattr(attn_mod, "visible", recording_visible)
    g = torch.Generator().manual_seed(18)
    q, k, v = (torch.randn(1, 1, t_len, 4, generator=g, dtype=torch.float64) for _ in range(3))
    idx = torch.arange(t_len)
    out = attention(q, k, v, idx, idx, window=window, block_size=block)
    assert len(shapes) >= -(-t_len // block)
    assert all(r <= block and c <= block + window - 1 for r, c in shapes), shapes
    assert sum(r for r, _ in shapes) == t_len
    monkeypatch.undo()
    # Correctness at this length, against a dense masked softmax built here.
    mask = (idx[None, :] <= idx[:, None]) & (idx[None, :] > idx[:, None] - window)
    logits = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~mask, float("-inf"))
    assert rel_err(out, logits.softmax(-1) @ v) < 1e-13


def _bad_cases():
    t = 4
    r = torch.randn
    q, k, v = r(1, 2, t, 8), r(1, 2, t, 8), r(1, 2, t, 8)
    idx = torch.arange(t)
    good_prefix = (r(1, 2, t, 3), r(1, 2, 5, 3), r(1, 2, 5, 8))
    return {
        "q 3d": ((q[0], k, v, idx, idx), {}),
        "k 3d": ((q, k[0], v, idx, idx), {}),
        "v 5d": ((q, k, v[None], idx, idx), {}),
        "heads mismatch": ((q, r(1, 3, t, 8), r(1, 3, t, 8), idx, idx), {}),
        "batch mismatch": ((q, r(2, 2, t, 8), r(2, 2, t, 8), idx, idx), {}),
        "key dim mismatch": ((q, r(1, 2, t, 6), v, idx, idx), {}),
        "v length mismatch": ((q, k, r(1, 2, t + 1, 8), idx, idx), {}),
        "q_index length": ((q, k, v, torch.arange(t + 1), idx), {}),
        "k_index length": ((q, k, v, idx, torch.arange(t - 1)), {}),
        "q_index 2d": ((q, k, v, idx[None], idx), {}),
        "window 0": ((q, k, v, idx, idx), {"window": 0}),
        "window negative": ((q, k, v, idx, idx), {"window": -3}),
        "window float": ((q, k, v, idx, idx), {"window": 2.0}),
        "window tensor": ((q, k, v, idx, idx), {"window": torch.tensor(2)}),
        "prefix q length": ((q, k, v, idx, idx), {"prefix": (r(1, 2, t + 1, 3),
                                                             *good_prefix[1:])}),
        "prefix q heads": ((q, k, v, idx, idx), {"prefix": (r(1, 3, t, 3), *good_prefix[1:])}),
        "prefix key dim": ((q, k, v, idx, idx), {"prefix": (good_prefix[0], r(1, 2, 5, 4),
                                                            good_prefix[2])}),
        "prefix value dim": ((q, k, v, idx, idx), {"prefix": (*good_prefix[:2], r(1, 2, 5, 7))}),
        "prefix value count": ((q, k, v, idx, idx), {"prefix": (*good_prefix[:2],
                                                                r(1, 2, 6, 8))}),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("fn", [attention, attention_naive], ids=["attention", "naive"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise(fn, case):
    """Malformed shapes, windows and prefixes raise ValueError in both implementations."""
    args, kwargs = BAD[case]
    with pytest.raises(ValueError):
        fn(*args, **kwargs)


def test_bad_cases_are_near_valid():
    """Sanity for the error table: the unmodified inputs are accepted."""
    t = 4
    q, k, v = (torch.randn(1, 2, t, 8) for _ in range(3))
    prefix = (torch.randn(1, 2, t, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 8))
    out = attention(q, k, v, torch.arange(t), torch.arange(t), window=2, prefix=prefix)
    assert out.shape == (1, 2, t, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("fn", [attention, attention_naive], ids=["attention", "naive"])
@pytest.mark.parametrize("which", ["k_p batch", "v_p heads", "k_p rank"])
def test_bad_prefix_batch_head_raise_value_error(fn, which):
    """Prefix keys/values whose batch or head dim is neither 1 nor B/H raise ValueError."""
    t = 4
    q, k, v = (torch.randn(2, 3, t, 8) for _ in range(3))
    q_p = torch.randn(2, 3, t, 4)
    k_p, v_p = torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 8)
    if which == "k_p batch":
        k_p, v_p = torch.randn(5, 3, 5, 4), torch.randn(5, 3, 5, 8)
    elif which == "v_p heads":
        v_p = torch.randn(1, 2, 5, 8)
    else:
        k_p, v_p = torch.randn(1, 4), torch.randn(1, 8)
    with pytest.raises(ValueError):
        fn(q, k, v, torch.arange(t), torch.arange(t), prefix=(q_p, k_p, v_p))


def test_bool_window_raises_value_error():
    """window=True is not an int window and should raise ValueError."""
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    with pytest.raises(ValueError):
        attention(q, k, v, torch.arange(4), torch.arange(4), window=True)
