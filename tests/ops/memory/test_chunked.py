"""memory_chunked is judged against memory_naive (and memory_naive against plain autograd)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from titans.ops import MemoryState, memory_chunked, memory_naive, memory_recurrent
from titans.ops.memory.chunked import segment_products

B, H, D = 2, 3, 8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against the reference b."""
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_inputs(t_len, depth, dtype=torch.float64, seed=0, d=D, expansion=2):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    q = F.normalize(randn(B, t_len, H, d), dim=-1)
    k = F.normalize(randn(B, t_len, H, d), dim=-1)
    v = randn(B, t_len, H, d)
    lr = 0.1 * rand(B, t_len, H)
    mom = rand(B, t_len, H)
    decay = 0.05 * rand(B, t_len, H)
    dims = [d] + [d * expansion] * (depth - 1) + [d]
    weights = [randn(B, H, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(depth)]
    moms = [0.1 * randn(*w.shape) for w in weights]
    return [q, k, v, lr, mom, decay], weights, moms


def run(fn, tensors, weights, moms, **kw):
    o, st = fn(*tensors, MemoryState(weights, moms), **kw)
    return o, st


def make_norm(d=D, seed=2, dtype=torch.float64):
    """A per-head LayerNorm weight and bias [H, d] away from the (1, 0) default."""
    g = torch.Generator().manual_seed(seed)
    weight = (1 + 0.5 * torch.randn(H, d, generator=g, dtype=dtype)) / d**0.5
    return weight, 0.1 * torch.randn(H, d, generator=g, dtype=dtype)


def outputs_and_grads(fn, tensors, weights, moms, seed=1, norm=(), **kw):
    """Outputs, final state and gradients of a random linear probe w.r.t. every input (and the
    residual norm's weight and bias when ``norm`` gives them)."""
    leaves = [x.clone().requires_grad_() for x in (*tensors, *weights, *moms, *norm)]
    n_t, depth = len(tensors), len(weights)
    ins, ws = leaves[:n_t], leaves[n_t:n_t + depth]
    ss = leaves[n_t + depth:n_t + 2 * depth]
    if norm:
        kw = dict(kw, norm_weight=leaves[-2], norm_bias=leaves[-1])
    o, st = run(fn, ins, ws, ss, **kw)
    outs = [o, *st.weights, *st.momentum]
    g = torch.Generator().manual_seed(seed)
    probe = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in outs)
    grads = torch.autograd.grad(probe, leaves)
    return [x.detach() for x in outs], list(grads)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("norm", ["none", "plain", "affine"])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_matches_naive_outputs_state_and_grads(depth, norm, chunk_size):
    """norm: no residual norm, ``x + LN(mlp(x))``, or ``x + LN(mlp(x)) * weight + bias``."""
    t_len = 71  # not a multiple of 5, 16 or 64
    tensors, weights, moms = make_inputs(t_len, depth)
    kw = dict(chunk_size=chunk_size, residual_norm=norm != "none",
              norm=make_norm() if norm == "affine" else ())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms, **kw)
    # float64. The recurrence of a deep residual-norm memory amplifies rounding along the sequence
    # (seen: 1e-15 at t=0 growing to ~1e-10 at t=70), hence 1e-7.
    for a, b in zip(outs, ref_outs, strict=True):
        assert rel_err(a, b) < 1e-7
    names = ["q", "k", "v", "lr", "momentum", "decay"] + [f"W{i}" for i in range(depth)] + [
        f"S{i}" for i in range(depth)
    ] + (["norm_weight", "norm_bias"] if norm == "affine" else [])
    assert len(grads) == len(names)
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        assert rel_err(a, b) < 1e-7, name


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("residual_norm", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 16])
def test_clipped_inner_gradients_match_naive(depth, residual_norm, chunk_size):
    """max_grad_norm clips each token's inner gradient, in both ops alike; a bound near the
    typical norm makes some tokens clipped and others not."""
    tensors, weights, moms = make_inputs(53, depth, seed=4)
    kw = dict(chunk_size=chunk_size, residual_norm=residual_norm, max_grad_norm=1.5,
              norm=make_norm() if residual_norm else ())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms, **kw)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_err(a, b) < 1e-7
    unclipped, _ = outputs_and_grads(memory_naive, tensors, weights, moms,
                                     **dict(kw, max_grad_norm=None))
    assert rel_err(outs[0], unclipped[0]) > 1e-3


def test_clipping_bounds_each_tokens_step():
    """With momentum and decay off and one token per chunk, W_t - W_{t-1} = -theta_t * u_t,
    whose norm the clip bounds by theta_t * max_grad_norm (and reaches: the gradients are
    larger than the bound)."""
    tensors, weights, _ = make_inputs(12, 2, seed=5)
    tensors[2] = 10 * tensors[2]  # far-off values: large inner gradients
    tensors[4], tensors[5] = torch.zeros_like(tensors[4]), torch.zeros_like(tensors[5])
    lr = tensors[3]
    prev = weights
    for t in range(12):
        step = [x[:, t:t + 1] for x in tensors]
        _, st = run(memory_chunked, step, prev, [torch.zeros_like(w) for w in prev],
                    chunk_size=1, max_grad_norm=0.5)
        sq = sum((a - b).pow(2).sum((-2, -1)) for a, b in zip(st.weights, prev, strict=True))
        torch.testing.assert_close(sq.sqrt(), 0.5 * lr[:, t], rtol=1e-9, atol=0)
        prev = st.weights


@pytest.mark.parametrize("checkpoint_chunks", [None, 2])
def test_silu_deep_memory_gradients_match_naive(checkpoint_chunks):
    """With SiLU between layers the inner gradient's silu'(z) is differentiated again (ATen's
    silu_backward has no derivative, so it must not be what the op records)."""
    tensors, weights, moms = make_inputs(13, 3, seed=8)
    kw = dict(chunk_size=4, activation="silu", residual_norm=True, norm=make_norm())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms,
                                    checkpoint_chunks=checkpoint_chunks, **kw)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("checkpoint_chunks", [1, 3])
@pytest.mark.parametrize("affine", [False, True])
def test_checkpointed_chunks_match_naive(checkpoint_chunks, affine):
    """Recomputing groups of chunks in the backward pass changes nothing but memory."""
    tensors, weights, moms = make_inputs(45, 2)
    kw = dict(chunk_size=4, residual_norm=affine, norm=make_norm() if affine else ())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms,
                                    checkpoint_chunks=checkpoint_chunks, **kw)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("residual_norm", [False, True])
def test_compiled_step_matches_naive(residual_norm):
    """The torch.compile'd chunk step is judged against the reference like the eager one."""
    tensors, weights, moms = make_inputs(45, 2)
    kw = dict(chunk_size=4, residual_norm=residual_norm,
              norm=make_norm() if residual_norm else ())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    for checkpoint_chunks in (None, 3):
        outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms, compile_step=True,
                                        checkpoint_chunks=checkpoint_chunks, **kw)
        for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
            assert rel_err(a, b) < 1e-9


def _tiny_case(residual_norm):
    """A float64 problem small enough for finite differences: every input as one tuple."""
    g = torch.Generator().manual_seed(7)
    b, t_len, h, d = 1, 7, 2, 3

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k = (F.normalize(randn(b, t_len, h, d), dim=-1) for _ in range(2))
    gates = [0.1 + 0.8 * torch.rand(b, t_len, h, generator=g, dtype=torch.float64)
             for _ in range(3)]
    weights = [randn(b, h, d, 2 * d) / d**0.5, randn(b, h, 2 * d, d) / (2 * d) ** 0.5]
    moms = [0.1 * randn(*w.shape) for w in weights]
    norm = [1 + 0.3 * randn(h, d), 0.1 * randn(h, d)] if residual_norm else []
    return (q, k, randn(b, t_len, h, d), *gates, *weights, *moms, *norm)


def _tiny_memory(residual_norm, checkpoint_chunks):
    """memory_chunked as a function of the flat inputs of _tiny_case, returning every output."""

    def fn(q, k, v, lr, mom, decay, w1, w2, s1, s2, *norm):
        kw = dict(norm_weight=norm[0], norm_bias=norm[1]) if norm else {}
        # a bound between the tokens' inner-gradient norms: some are clipped, some are not
        o, st = memory_chunked(q, k, v, lr, mom, decay, MemoryState([w1, w2], [s1, s2]),
                               chunk_size=3, residual_norm=residual_norm, max_grad_norm=0.8,
                               checkpoint_chunks=checkpoint_chunks, **kw)
        return (o, *st.weights, *st.momentum)

    return fn


@pytest.mark.parametrize("residual_norm", [False, True])
@pytest.mark.parametrize("checkpoint_chunks", [None, 2])
def test_hand_written_backward_passes_gradcheck(residual_norm, checkpoint_chunks):
    """Finite differences of every input agree with the hand-derived backward."""
    inputs = [x.requires_grad_() for x in _tiny_case(residual_norm)]
    fn = _tiny_memory(residual_norm, checkpoint_chunks)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.slow  # gradgradcheck: 24 s of the fast tier
@pytest.mark.parametrize("residual_norm", [False, True])
def test_double_backward_is_supported(residual_norm):
    """A backward with create_graph=True (e.g. a gradient penalty) is itself differentiable."""
    inputs = [x.requires_grad_() for x in _tiny_case(residual_norm)]
    assert torch.autograd.gradgradcheck(_tiny_memory(residual_norm, 2), inputs)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_chunk_size_one_is_online_gradient_descent(activation):
    """memory_naive/chunked with chunk_size=1 equal a plain autograd loop of eqs. 12-15."""
    depth, t_len = 2, 23
    (q, k, v, lr, mom, decay), weights, moms = make_inputs(t_len, depth)
    act = {"gelu": F.gelu, "silu": F.silu}[activation]

    def memory(x, ws):  # x: [B, H, d], ws[i]: [B, H, d_in, d_out]
        x = act(torch.einsum("bhi,bhio->bho", x, ws[0]))
        return torch.einsum("bhi,bhio->bho", x, ws[1])

    ws, ss, outs = [w.clone() for w in weights], [s.clone() for s in moms], []
    for t in range(t_len):
        leaf = [w.detach().requires_grad_() for w in ws]
        loss = 0.5 * (memory(k[:, t], leaf) - v[:, t]).pow(2).sum()
        grads = torch.autograd.grad(loss, leaf)
        theta, eta, alpha = (x[:, t, :, None, None] for x in (lr, mom, decay))
        ss = [eta * s - theta * u for s, u in zip(ss, grads, strict=True)]
        ws = [(1 - alpha) * w + s for w, s in zip(ws, ss, strict=True)]
        outs.append(memory(q[:, t], ws))
    ref = torch.stack(outs, dim=1)
    for fn in (memory_naive, memory_chunked):
        o, st = run(fn, [q, k, v, lr, mom, decay], weights, moms, chunk_size=1,
                    activation=activation)
        assert rel_err(o, ref) < 1e-12
        for a, b in zip(st.weights + st.momentum, ws + ss, strict=True):
            assert rel_err(a, b) < 1e-12


def test_gradient_is_taken_at_chunk_start():
    """Chunk size changes the result (the linearisation point moves only at chunk boundaries)."""
    tensors, weights, moms = make_inputs(32, 2)
    o16, _ = run(memory_chunked, tensors, weights, moms, chunk_size=16)
    o1, _ = run(memory_chunked, tensors, weights, moms, chunk_size=1)
    assert rel_err(o16, o1) > 1e-4


def test_gates_at_extremes_are_finite_and_exact():
    depth, t_len = 2, 45
    tensors, weights, moms = make_inputs(t_len, depth)
    g = torch.Generator().manual_seed(3)
    pick = torch.randint(0, 3, (3, B, t_len, H), generator=g)
    # each gate exactly 0, exactly 1, or its random value
    for j, idx in zip(range(3), (3, 4, 5), strict=True):
        x = tensors[idx]
        tensors[idx] = torch.where(pick[j] == 0, 0.0, torch.where(pick[j] == 1, 1.0, x))
    tensors[3] = tensors[3] * 0.3  # lr in [0, 0.3]
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, chunk_size=8)
    outs, grads = outputs_and_grads(memory_chunked, tensors, weights, moms, chunk_size=8)
    for a, b in zip(outs + grads, ref_outs + ref_grads, strict=True):
        assert torch.isfinite(a).all()
        assert rel_err(a, b) < 1e-9


def test_full_forget_resets_memory():
    """alpha = 1 with eta = 0 wipes the weights: W_t = S_t = -theta_t u_t."""
    tensors, weights, moms = make_inputs(10, 1)
    tensors[4] = torch.zeros_like(tensors[4])
    tensors[5] = torch.ones_like(tensors[5])
    _, st = run(memory_chunked, tensors, weights, moms, chunk_size=4)
    k, v, lr = tensors[1][:, -1], tensors[2][:, -1], tensors[3][:, -1]
    # W_9 = -theta_9 u_9, with u_9 taken at the start of the last chunk (after 8 tokens)
    _, st8 = run(memory_chunked, [x[:, :8] for x in tensors], weights, moms, chunk_size=4)
    u = torch.einsum("bhi,bho->bhio", k, torch.einsum("bhi,bhio->bho", k, st8.weights[0]) - v)
    assert rel_err(st.weights[0], -lr[..., None, None] * u) < 1e-12


def test_float32_close_to_float64_reference():
    tensors, weights, moms = make_inputs(100, 2, seed=5)
    ref, ref_st = run(memory_naive, tensors, weights, moms, chunk_size=16)
    o, st = run(memory_chunked, [x.float() for x in tensors], [w.float() for w in weights],
                [s.float() for s in moms], chunk_size=16)
    assert o.dtype == torch.float32
    assert rel_err(o.double(), ref) < 1e-4
    assert rel_err(st.weights[1].double(), ref_st.weights[1]) < 1e-4


def test_low_precision_inputs_use_float32_memory_math():
    tensors, weights, moms = make_inputs(40, 2, seed=6)
    ref, _ = run(memory_chunked, [x.float() for x in tensors], [w.float() for w in weights],
                 [s.float() for s in moms])
    o, st = run(memory_chunked, [x.bfloat16() for x in tensors], [w.float() for w in weights],
                [s.float() for s in moms])
    assert o.dtype == torch.bfloat16
    assert st.weights[0].dtype == torch.float32
    assert rel_err(o.float(), ref) < 3e-2


def test_empty_sequence_returns_state_unchanged():
    tensors, weights, moms = make_inputs(0, 2)
    o, st = run(memory_chunked, tensors, weights, moms)
    assert o.shape == (B, 0, H, D)
    assert all(torch.equal(a, b) for a, b in zip(st.weights, weights, strict=True))


def test_segment_products_match_explicit_products():
    x = torch.rand(2, 6, dtype=torch.float64)
    x[0, 2] = 0.0
    p = segment_products(x)
    for t in range(6):
        for s in range(6):
            expect = torch.prod(x[:, s + 1:t + 1], dim=-1) if s <= t else torch.zeros(2)
            assert torch.allclose(p[:, t, s], expect.double())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(k=a["k"][..., :-1]), "q and k"),
        (lambda a: a.update(lr=a["lr"][..., None]), "lr must be"),
        (lambda a: a.update(chunk_size=0), "chunk_size"),
        (lambda a: a.update(chunk_size=None), "chunk_size must be an int >= 1, got None"),
        (lambda a: a.update(activation="tanh"), "activation"),
        (lambda a: a.update(v=a["v"][..., :-1]), "value dim"),
        (lambda a: a.update(q=a["q"].long(), k=a["k"].long()), "floating-point"),
        (lambda a: a.update(norm_weight=torch.ones(H, D)), "needs residual_norm"),
        (lambda a: a.update(max_grad_norm=0.0), "max_grad_norm"),
        (lambda a: a.update(residual_norm=True, norm_bias=torch.ones(H + 1, D)), "norm_bias"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    (q, k, v, lr, mom, decay), weights, moms = make_inputs(5, 2)
    args = dict(q=q, k=k, v=v, lr=lr, momentum=mom, decay=decay,
                state=MemoryState(weights, moms), chunk_size=4, activation="gelu")
    mutate(args)
    for fn in (memory_naive, memory_chunked):
        with pytest.raises(ValueError, match=message):
            fn(**args)


def _with(name, index, value):
    """An input mutation: ``args[name][index] = value`` on a copy."""
    def mutate(args):
        t = args[name].clone()
        t[index] = value
        args[name] = t
    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_with("lr", (0, 2, 1), -0.1), "^lr must be >= 0, got a minimum of -0.1"),
        (_with("lr", (0, 2, 1), math.inf), "^lr must be finite"),
        (_with("decay", (1, 0, 0), 1.5), r"^decay must lie in \[0, 1\], got values in .*1.5"),
        (_with("momentum", (0, 4, 1), 1.01), r"^momentum must lie in \[0, 1\]"),
        (_with("momentum", (0, 4, 1), math.nan), r"^momentum must lie in \[0, 1\].*nan"),
        (_with("k", (0, 3, 0, 2), math.nan), "^k must be finite"),
        (_with("v", (1, 12, 1, 0), -math.inf), "^v must be finite"),
        (_with("q", (0, 0, 0, 0), math.nan), "^q must be finite"),
    ],
)
def test_values_outside_the_documented_ranges_are_refused_on_the_cpu(mutate, message):
    """Every op checks its gates and inputs where that needs no device sync. A NaN at token 12
    used to reach tokens 8-11 of its chunk in one pass (0 * NaN in the masked matmuls) but not
    when the sequence was split before it; now it is an error in both."""
    (q, k, v, lr, mom, decay), weights, moms = make_inputs(13, 2)
    args = dict(q=q, k=k, v=v, lr=lr, momentum=mom, decay=decay,
                state=MemoryState(weights, moms), activation="gelu")
    mutate(args)
    for fn in (memory_naive, memory_chunked):
        with pytest.raises(ValueError, match=message):
            fn(**args, chunk_size=4)
    state = args.pop("state")
    with pytest.raises(ValueError, match=message):  # token by token, as in decoding
        memory_recurrent(**args, boundary=state, current=state)
    # Unchecked (as a layer calls it, whose training loop reports divergence): no error.
    o, _ = memory_chunked(**args, state=state, chunk_size=4, check_values=False)
    assert o.shape == q.shape
    # The boundaries are in range: lr 0 (no step), momentum and decay 0 and 1.
    for name, value in (("lr", 0.0), ("momentum", 0.0), ("momentum", 1.0), ("decay", 0.0),
                        ("decay", 1.0)):
        fine = dict(args, q=q, k=k, v=v, lr=lr, momentum=mom, decay=decay, state=state)
        _with(name, (0, 1, 0), value)(fine)
        memory_chunked(**fine, chunk_size=4)


def test_state_rejects_mismatched_shapes():
    w = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="momentum"):
        MemoryState([w], [torch.zeros(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="starts with dim"):
        MemoryState([w, torch.zeros(1, 2, 4, 4)], [w, torch.zeros(1, 2, 4, 4)])
