"""memory_recurrent is judged against memory_naive: from a chunk boundary, and continued in
pieces inside the open chunk (outputs, state and the gradients of every input, float64)."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from titans.ops import MemoryState, memory_naive, memory_recurrent
from titans.ops.memory.common import mlp_forward

from .test_chunked import B, D, H, make_inputs, make_norm, outputs_and_grads, rel_err, run

N = 7  # tokens of the open chunk read by memory_recurrent
CHUNK = 8  # memory_naive's chunk size: N tokens stay inside one chunk


def from_boundary(*args, chunk_size=None, **kw):
    """memory_recurrent started at a chunk boundary, in memory_naive's calling convention: the
    one state given is both the boundary and the running state (chunk_size is not needed)."""
    *tensors, state = args
    return memory_recurrent(*tensors, state, state, **kw)


def in_pieces(*args, cuts, chunk_size, **kw):
    """memory_naive over the whole chunks, then memory_recurrent over the open chunk in pieces
    ending at ``cuts``, each carrying the running state from the last (same boundary)."""
    *tensors, state = args
    split = tensors[0].shape[1] // chunk_size * chunk_size
    o, boundary = memory_naive(*(x[:, :split] for x in tensors), state, chunk_size=chunk_size,
                               **kw)
    outputs, current = [o], boundary
    bounds = [split, *cuts, tensors[0].shape[1]]
    for a, b in itertools.pairwise(bounds):
        o, current = memory_recurrent(*(x[:, a:b] for x in tensors), boundary, current, **kw)
        outputs.append(o)
    return torch.cat(outputs, 1), current


def inner_grad_norms(tensors, weights, activation, residual_norm, norm):
    """||u_t||, all layers together, of every token at the given weights, by autograd: [B, T, H]."""
    k, v = tensors[1], tensors[2]
    leaves = [w.clone().requires_grad_() for w in weights]
    norms = []
    for t in range(k.shape[1]):
        out = mlp_forward(k[:, t, :, None], leaves, activation, residual_norm, *norm)
        loss = 0.5 * (out - v[:, t, :, None]).pow(2).sum()  # a sum over independent (b, h)
        grads = torch.autograd.grad(loss, leaves)
        norms.append(sum(g.pow(2).sum((-2, -1)) for g in grads).sqrt())
    return torch.stack(norms, 1)


def input_names(depth, affine):
    """The inputs of :func:`outputs_and_grads`' gradients, in its order."""
    names = ["q", "k", "v", "lr", "momentum", "decay"]
    names += [f"W{i}" for i in range(depth)] + [f"S{i}" for i in range(depth)]
    return names + (["norm_weight", "norm_bias"] if affine else [])


def assert_same(outs, grads, ref_outs, ref_grads, names, tol=1e-10):
    """Outputs and final state, then every input's gradient, against the reference."""
    assert len(grads) == len(ref_grads) == len(names)
    for i, (a, b) in enumerate(zip(outs, ref_outs, strict=True)):
        assert rel_err(a, b) < tol, f"output {i}"
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("norm", ["none", "plain", "affine"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_from_boundary_matches_naive_outputs_state_and_grads(depth, norm, clip, activation):
    """Fewer tokens than a chunk, started at its boundary: every gradient is taken there, as in
    memory_naive. norm: none, ``x + LN(mlp(x))`` or ``x + LN(mlp(x)) * weight + bias``."""
    tensors, weights, moms = make_inputs(N, depth, seed=depth)
    affine = make_norm() if norm == "affine" else ()
    kw = dict(chunk_size=CHUNK, activation=activation, residual_norm=norm != "none", norm=affine)
    if clip:
        # Half of the tokens are clipped, half are not. Of an even count, the interpolated median
        # falls between two norms: no token sits on the clip's kink, where the gradient would
        # depend on rounding.
        norms = inner_grad_norms(tensors, weights, activation, norm != "none", affine)
        assert norms.numel() % 2 == 0
        kw["max_grad_norm"] = norms.quantile(0.5).item()
        assert (norms > kw["max_grad_norm"]).any() and (norms < kw["max_grad_norm"]).any()
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(from_boundary, tensors, weights, moms, **kw)
    assert_same(outs, grads, ref_outs, ref_grads, input_names(depth, bool(affine)))


@pytest.mark.parametrize("cuts", [[0], [3], [7], [1, 2, 5]])
@pytest.mark.parametrize(("depth", "norm", "clip"), [(1, False, None), (3, True, 0.5)])
def test_pieces_carrying_the_running_state_equal_one_run(depth, norm, clip, cuts):
    """n1 then n2 tokens, carrying ``current`` with the same boundary, equal n1 + n2 at once
    (empty pieces included)."""
    tensors, weights, moms = make_inputs(N, depth, seed=5)
    kw = dict(chunk_size=CHUNK, residual_norm=norm, max_grad_norm=clip,
              norm=make_norm() if norm else ())
    ref_outs, ref_grads = outputs_and_grads(from_boundary, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(functools.partial(in_pieces, cuts=cuts), tensors, weights,
                                    moms, **kw)
    assert_same(outs, grads, ref_outs, ref_grads, input_names(depth, norm))


@pytest.mark.parametrize("cuts", [[], [18], [17, 20]])
def test_open_chunk_after_whole_chunks_matches_naive(cuts):
    """After two whole chunks (boundary weights and momentum far from the start), the open
    chunk's tokens read by memory_recurrent, in one piece or several, equal memory_naive."""
    tensors, weights, moms = make_inputs(2 * CHUNK + N, 2, seed=6)
    kw = dict(chunk_size=CHUNK, residual_norm=True, max_grad_norm=1.0, norm=make_norm())
    ref_outs, ref_grads = outputs_and_grads(memory_naive, tensors, weights, moms, **kw)
    outs, grads = outputs_and_grads(functools.partial(in_pieces, cuts=cuts), tensors, weights,
                                    moms, **kw)
    assert_same(outs, grads, ref_outs, ref_grads, input_names(2, True), tol=1e-9)


def test_no_tokens_leave_the_running_state_unchanged():
    tensors, weights, moms = make_inputs(0, 2)
    boundary = MemoryState([2 * w for w in weights], moms)
    o, st = memory_recurrent(*tensors, boundary, MemoryState(weights, moms))
    assert o.shape == (B, 0, H, D)
    for a, b in zip(st.weights + st.momentum, weights + moms, strict=True):
        assert torch.equal(a, b)


def test_low_precision_and_autocast_keep_float32_memory_math():
    """bf16 inputs give bf16 outputs from float32 math and state; under bf16 autocast the
    result is the one without it."""
    tensors, weights, moms = make_inputs(N, 2, seed=7)
    ref, ref_st = run(from_boundary, tensors, weights, moms)
    weights32, moms32 = [w.float() for w in weights], [s.float() for s in moms]
    o, st = run(from_boundary, [x.bfloat16() for x in tensors], weights32, moms32)
    assert o.dtype == torch.bfloat16 and st.weights[0].dtype == torch.float32
    assert rel_err(o.double(), ref) < 3e-2
    assert rel_err(st.weights[1].double(), ref_st.weights[1]) < 3e-2
    inputs32 = [x.float() for x in tensors]
    plain, plain_st = run(from_boundary, inputs32, weights32, moms32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, st = run(from_boundary, inputs32, weights32, moms32)
    assert o.dtype == torch.float32 and st.weights[0].dtype == torch.float32
    torch.testing.assert_close(o, plain, rtol=0, atol=0)
    for a, b in zip(st.weights + st.momentum, plain_st.weights + plain_st.momentum, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(k=a["k"][..., :-1]), "q and k"),
        (lambda a: a.update(decay=a["decay"][:, :-1]), "decay must be"),
        (lambda a: a.update(activation="tanh"), "activation"),
        (lambda a: a.update(norm_weight=torch.ones(H, D)), "needs residual_norm"),
        (lambda a: a.update(max_grad_norm=-1.0), "max_grad_norm"),
        (lambda a: a.update(boundary=MemoryState(a["boundary"].weights[:1],
                                                 a["boundary"].momentum[:1])), "value dim"),
        (lambda a: a.update(current=MemoryState(a["current"].weights[:1],
                                                a["current"].momentum[:1])), "current weights"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    (q, k, v, lr, mom, decay), weights, moms = make_inputs(5, 2)
    state = MemoryState(weights, moms)
    args = dict(q=q, k=k, v=v, lr=lr, momentum=mom, decay=decay, boundary=state, current=state)
    mutate(args)
    with pytest.raises(ValueError, match=message):
        memory_recurrent(**args)
