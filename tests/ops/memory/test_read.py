"""read is judged against the memory MLP written out by hand and against memory_naive's own read
(float64), and keeps the memory math in float32 for low-precision queries and under autocast."""

from __future__ import annotations

import math

import pytest
import torch

from titans.ops import MemoryState, memory_naive, read

from .test_chunked import B, D, H, make_inputs, make_norm, rel_err


def hand_written_memory(q, weights, activation, residual_norm, norm_weight=None, norm_bias=None):
    """M(q; W) per (batch, head) from the definitions: q [B, H, T, D] -> [B, H, T, d_L]."""
    act = {
        "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2))),
        "silu": lambda z: z / (1 + torch.exp(-z)),
    }[activation]
    x = q
    for i, w in enumerate(weights):
        x = torch.einsum("bhti,bhio->bhto", x, w)
        if i < len(weights) - 1:
            x = act(x)
    if not residual_norm:
        return x
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-5)
    if norm_weight is not None:
        y = y * norm_weight[:, None]
    if norm_bias is not None:
        y = y + norm_bias[:, None]
    return q + y


def affine(on=True):
    """The residual norm's affine part as read's keyword arguments (none when off)."""
    return dict(zip(("norm_weight", "norm_bias"), make_norm(), strict=True)) if on else {}


def make_memory(depth, seed=0, t_len=5):
    """Queries [B, H, T, D] and a memory state from the ops' test inputs (float64)."""
    tensors, weights, moms = make_inputs(t_len, depth, seed=seed)
    return tensors[0].transpose(1, 2), MemoryState(weights, moms)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("norm", ["none", "plain", "affine"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_matches_hand_written_memory(depth, norm, activation):
    """norm: no residual norm, ``x + LN(mlp(x))``, or ``x + LN(mlp(x)) * weight + bias``."""
    q, state = make_memory(depth, seed=depth)
    kw = dict(activation=activation, residual_norm=norm != "none", **affine(norm == "affine"))
    o = read(q, state, **kw)
    assert o.shape == (B, H, q.shape[2], D) and o.dtype == torch.float64
    assert rel_err(o, hand_written_memory(q, state.weights, **kw)) < 1e-12


@pytest.mark.parametrize("residual_norm", [False, True])
def test_equals_memory_naives_read(residual_norm):
    """memory_naive's output for one token is the read of the state it leaves at that token's
    query: the same function of the same weights."""
    tensors, weights, moms = make_inputs(1, 2, seed=3)
    kw = dict(activation="silu", residual_norm=residual_norm, **affine(residual_norm))
    o, state = memory_naive(*tensors, MemoryState(weights, moms), chunk_size=1, **kw)
    torch.testing.assert_close(read(tensors[0].transpose(1, 2), state, **kw),
                               o.transpose(1, 2), rtol=1e-13, atol=1e-13)


def test_momentum_is_not_read():
    q, state = make_memory(2)
    other = MemoryState(state.weights, [torch.randn_like(s) for s in state.momentum])
    assert torch.equal(read(q, state), read(q, other))


def test_low_precision_queries_read_in_float32():
    """bf16 queries are read with float32 math (float64 weights follow the queries' compute
    dtype), and the result stays in float32."""
    q, state = make_memory(2, seed=4)
    o = read(q.bfloat16(), state, residual_norm=True)
    assert o.dtype == torch.float32
    weights32 = MemoryState([w.float() for w in state.weights], [s.float() for s in state.momentum])
    assert torch.equal(o, read(q.bfloat16().float(), weights32, residual_norm=True))
    assert rel_err(o.double(), read(q, state, residual_norm=True)) < 3e-2


def test_autocast_does_not_change_the_read():
    """Under bf16 autocast the read is the one without it, in float32."""
    q, state = make_memory(3, seed=5)
    q = q.float()
    state = MemoryState([w.float() for w in state.weights], [s.float() for s in state.momentum])
    kw = dict(residual_norm=True, **{name: p.float() for name, p in affine().items()})
    plain = read(q, state, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = read(q, state, **kw)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, plain, rtol=0, atol=0)


@pytest.mark.parametrize("residual_norm", [False, True])
def test_gradients_pass_gradcheck(residual_norm):
    """The read is differentiable in the queries, the weights and the norm's affine part."""
    q, state = make_memory(2, seed=6, t_len=3)
    inputs = [x.requires_grad_() for x in (q, *state.weights, *affine(residual_norm).values())]

    def fn(q, w1, w2, *norm):
        kw = dict(norm_weight=norm[0], norm_bias=norm[1]) if norm else {}
        memory = MemoryState([w1, w2], [torch.zeros_like(w1), torch.zeros_like(w2)])
        return read(q, memory, residual_norm=residual_norm, **kw)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(q=a["q"][0]), r"q must be a floating-point \[B, H, T, D\]"),
        (lambda a: a.update(q=a["q"].long()), "floating-point"),
        (lambda a: a.update(q=a["q"][:, :-1]), "state weights must be"),
        (lambda a: a.update(q=a["q"][..., :-1]), "key dim"),
        (lambda a: a.update(activation="tanh"), "activation"),
        (lambda a: a.update(norm_bias=torch.zeros(H, D)), "needs residual_norm"),
        (lambda a: a.update(residual_norm=True, norm_weight=torch.ones(H + 1, D)), "norm_weight"),
        (lambda a: a.update(residual_norm=True,
                            state=MemoryState(a["state"].weights[:1], a["state"].momentum[:1])),
         "equal key and value dims"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    q, state = make_memory(2)
    args = dict(q=q, state=state, activation="gelu")
    mutate(args)
    with pytest.raises(ValueError, match=message):
        read(**args)
