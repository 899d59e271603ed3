"""Chunked (mini-batch gradient descent) neural memory: the fast path of paper eqs. 16-18.

Within a chunk of c tokens every inner gradient is taken at the chunk-start weights W0, so the
recurrences of momentum and decay are linear in the per-token gradients u_r. Unrolled, with
P_x[t, s] = prod_{j=s+1..t} x_j (lower triangular, P_x[t, t] = 1)::

    S_t = E_t S0 - sum_{r<=t} theta_r P_eta[t, r] u_r         E_t = prod_{j<=t} eta_j
    W_t = A_t W0 + g_t S0 - sum_{r<=t} theta_r K[t, r] u_r    A_t = prod_{j<=t} (1 - alpha_j)
    K = P_(1-alpha) @ P_eta,  g = P_(1-alpha) @ E

Each layer's u_r is an outer product ``a_r^T delta_r`` (layer input times back-propagated error),
so a layer's pre-activation at query x_t under the per-token weights W_t is (the "dual form")::

    z_t = A_t (x_t W0) + g_t (x_t S0) - sum_{r<=t} theta_r K[t, r] (x_t . a_r) delta_r

a masked c x c matmul: no per-token weights are materialised. Gate products come from cumprod over
masked c x c matrices, exact and differentiable for gates equal to 0 or 1 (no log of 0, no ratio).
Chunks are visited in order and only chunk-boundary state is kept between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.ops.memory.common import (
    InnerGradients,
    LayerNormed,
    MemoryState,
    Norm,
    activation_backward,
    activation_fn,
    check_inputs,
    compute_dtype,
    inner_gradients,
    inner_gradients_backward,
    layer_norm,
    layer_norm_backward,
    without_autocast,
)


class _Spec(NamedTuple):
    """The options of one call, fixed for all its chunks."""

    activation: str
    residual_norm: bool
    max_grad_norm: float | None
    compile_step: bool


def segment_products(x: Tensor) -> Tensor:
    """P[..., t, s] = prod_{j=s+1..t} x[..., j] for s <= t, and 0 above the diagonal.

    x: [..., c] -> [..., c, c]
    """
    c = x.shape[-1]
    idx = torch.arange(c, device=x.device)
    # factors[..., j, s] = x_j if j > s else 1; a cumprod down j gives prod_{s<j<=t} x_j in row t.
    factors = torch.where(idx[:, None] > idx[None, :], x[..., :, None], x.new_ones(()))
    prods = torch.cumprod(factors, dim=-2)
    return torch.where(idx[:, None] >= idx[None, :], prods, x.new_zeros(()))


def _to_chunks(x: Tensor, num_chunks: int, chunk_size: int) -> Tensor:
    """[B, T, H, ...] -> [num_chunks, B*H, chunk_size, ...], zero-padded at the end."""
    b, t, h = x.shape[:3]
    pad = num_chunks * chunk_size - t
    x = x.movedim(2, 1)  # [B, H, T, ...]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    x = x.reshape(b * h, num_chunks, chunk_size, *x.shape[3:])
    return x.transpose(0, 1).contiguous()


@without_autocast
def memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    momentum: Tensor,
    decay: Tensor,
    state: MemoryState,
    chunk_size: int = 16,
    activation: str = "gelu",
    residual_norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    max_grad_norm: float | None = None,
    checkpoint_chunks: int | None = None,
    compile_step: bool = False,
    check_values: bool = True,
) -> tuple[Tensor, MemoryState]:
    """Same contract and result as :func:`titans.ops.memory_naive`, one chunk at a time.

    Args:
        q, k: [B, T, H, D]; v: [B, T, H, D_v].
        lr (theta >= 0), momentum (eta in [0, 1]), decay (alpha in [0, 1]): [B, T, H].
        state: weights and momentum before the first token, each [B, H, d_{i-1}, d_i].
        chunk_size: tokens per inner mini-batch; chunk boundaries are multiples of it from t = 0.
        residual_norm: use ``M(x) = x + LayerNorm(mlp(x))`` (no fast weights in the norm).
        norm_weight, norm_bias: [H, D_v], the LayerNorm's per-head affine part (outer
            parameters, not fast weights); None means weight 1 and bias 0.
        max_grad_norm: clip each token's inner gradient (all layers together) to this norm.
        checkpoint_chunks: when autograd records, recompute each group of this many chunks in
            the backward pass and keep only the state at group boundaries: activation memory
            for the weights falls from T / chunk_size to T / (chunk_size * checkpoint_chunks)
            copies of the memory, for one extra forward.
        compile_step: run the per-chunk step through ``torch.compile`` (one graph reused by
            every chunk; fuses the elementwise work). Costs a one-off compilation per shape.
        check_values: as in memory_naive.

    Returns:
        o: [B, T, H, D_v] in q's dtype, and the state after the last token (in >= float32).
    """
    check_inputs(q, k, v, lr, momentum, decay, state, chunk_size, activation, residual_norm,
                 norm_weight, norm_bias, max_grad_norm, checkpoint_chunks, values=check_values)
    dtype = compute_dtype(q.dtype)
    b, t_len, h, _ = q.shape
    d_v = v.shape[-1]
    ws = [w.to(dtype).reshape(b * h, *w.shape[2:]) for w in state.weights]
    ss = [s.to(dtype).reshape(b * h, *s.shape[2:]) for s in state.momentum]
    if t_len == 0:
        return q.new_zeros(b, 0, h, d_v), _unflatten(ws, ss, b, h)

    c = chunk_size
    n_chunks = -(-t_len // c)
    qc, kc, vc = (_to_chunks(x.to(dtype), n_chunks, c) for x in (q, k, v))  # [N, BH, c, D]
    theta, eta, alpha = (_to_chunks(g.to(dtype), n_chunks, c) for g in (lr, momentum, decay))

    # Gate coefficients of every chunk at once ([N, BH, c] and [N, BH, c, c]).
    p_eta = segment_products(eta)
    p_keep = segment_products(1 - alpha)
    e_cum = torch.cumprod(eta, dim=-1)
    a_cum = torch.cumprod(1 - alpha, dim=-1)
    g_cum = (p_keep @ e_cum[..., None])[..., 0]
    k_theta = (p_keep @ p_eta) * theta[..., None, :]
    # The state leaves each chunk at its last real token: row c-1, or the tail's last row.
    end = torch.full((n_chunks,), c - 1, device=q.device)
    end[-1] = (t_len - 1) % c
    rows = torch.arange(n_chunks, device=q.device)
    # per token r of the chunk: its coefficient in the end weights and in the end momentum
    end_coef = torch.stack([k_theta[rows, :, end], p_eta[rows, :, end] * theta], -1)
    a_end, g_end, e_end = (x[rows, :, end] for x in (a_cum, g_cum, e_cum))  # [N, BH]
    # [W'; S'] = [[A, g], [0, E]] @ [W; S] at each chunk end, and (A_t, g_t) per row.
    mix = torch.stack([a_end, g_end, torch.zeros_like(e_end), e_end], -1).unflatten(-1, (2, 2))
    row_coef = torch.stack([a_cum, g_cum], -1)  # [N, BH, c, 2]
    # First layer scores q_t . k_r need no state, so they are computed for all chunks in one go.
    qk_theta = (qc @ kc.transpose(-1, -2)) * k_theta

    chunks = _Chunk(q=qc, k=kc, v=vc, qk_theta=qk_theta, k_theta=k_theta, row_coef=row_coef,
                    end_coef=end_coef, mix=mix)
    spec = _Spec(activation, residual_norm, max_grad_norm, compile_step)
    # The residual norm's affine part per (batch, head) row: [BH, 1, D_v] each.
    norm = None
    if residual_norm:
        norm = Norm(*(
            (p if p is not None else v.new_full((h, d_v), fill)).to(dtype)[None]
            .expand(b, h, d_v).reshape(b * h, 1, d_v)
            for p, fill in ((norm_weight, 1.0), (norm_bias, 0.0))
        ))
    wss = [torch.cat([w, s], dim=-2) for w, s in zip(ws, ss, strict=True)]
    inputs = _Inputs(wss, norm, chunks)
    tensors = inputs.flat()
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        o, *wss = _ChunkedMemory.apply(spec, checkpoint_chunks, *tensors)
    else:
        run = _run_chunks(inputs, spec)
        o, wss = run.out, run.end
    ws, ss = zip(*(m.chunk(2, dim=-2) for m in wss), strict=True)

    o = o.reshape(n_chunks, b, h, c, d_v).permute(1, 0, 3, 2, 4).reshape(b, n_chunks * c, h, d_v)
    return o[:, :t_len].to(q.dtype), _unflatten(ws, ss, b, h)


class _Chunk(NamedTuple):
    """The state-independent tensors of one chunk, [BH, ...] each (stacked over all chunks in
    :func:`memory_chunked`, with a leading chunk dim)."""

    q: Tensor  # [BH, c, D]
    k: Tensor  # [BH, c, D]
    v: Tensor  # [BH, c, D_v]
    qk_theta: Tensor  # [BH, c, c]: first-layer read scores (q_t . k_r) theta_r K[t, r]
    k_theta: Tensor  # [BH, c, c]: theta_r K[t, r]
    row_coef: Tensor  # [BH, c, 2]: (A_t, g_t), the weight and momentum a row t reads
    end_coef: Tensor  # [BH, c, 2]: token r's coefficient in the end weights and end momentum
    mix: Tensor  # [BH, 2, 2]: [[A, g], [0, E]], the boundary state's carry to the chunk end


class _Inputs(NamedTuple):
    """The tensors of one call. :class:`_ChunkedMemory` takes them, and returns their
    gradients, as one flat tuple: :meth:`flat` and :meth:`from_flat` keep the order."""

    state: list[Tensor]  # per layer, weights stacked over momentum [W; S]: [BH, 2 d_{i-1}, d_i]
    norm: Norm | None  # the residual norm's affine part per (batch, head) row, [BH, 1, D_v] each
    chunks: _Chunk  # with a leading chunk dim: [N, BH, ...]

    def flat(self) -> tuple[Tensor, ...]:
        return (*(self.norm or ()), *self.state, *self.chunks)

    @classmethod
    def from_flat(cls, tensors: tuple[Tensor, ...], residual_norm: bool) -> _Inputs:
        n_norm = len(Norm._fields) if residual_norm else 0
        depth = len(tensors) - n_norm - len(_Chunk._fields)
        return cls(state=list(tensors[n_norm:n_norm + depth]),
                   norm=Norm(*tensors[:n_norm]) if residual_norm else None,
                   chunks=_Chunk(*tensors[n_norm + depth:]))


class _Read(NamedTuple):
    """What the read's backward needs from its forward, [..., c, ...] each."""

    reads: list[Tensor]  # x_1 = q, x_2, ...: each layer's input on the queries
    products: list[Tensor]  # x_i a_i^T for layers i >= 1 ([..., c, c], before the gate mask)
    scores: list[Tensor]  # the read scores of every layer (qk_theta, then products * K_theta)
    read_pre: list[Tensor]  # Z_1, ..., Z_L: pre-activations of the read
    out_norm: LayerNormed | None  # LN(Z_L), with the residual norm


class _Cache(NamedTuple):
    """What the backward of one chunk needs from its forward."""

    inner: InnerGradients
    read: _Read


class _Step(NamedTuple):
    """One chunk's forward."""

    out: Tensor  # [BH, c, D_v]
    end: list[Tensor]  # the stacked state [W; S] at the chunk's end
    cache: _Cache


class _Kept(NamedTuple):
    """A chunk's start state [W; S] and cache, kept for its backward."""

    start: list[Tensor]
    cache: _Cache


class _Pass(NamedTuple):
    """What :func:`_run_chunks` returns."""

    out: Tensor  # [N, BH, c, D_v]
    end: list[Tensor]  # the stacked state [W; S] after the last chunk
    kept: list[_Kept]  # per chunk, when asked to keep them (else empty)


def _run_chunks(inputs: _Inputs, spec: _Spec, keep: bool = False) -> _Pass:
    """Visit the chunks in order from ``inputs.state``; with ``keep``, keep every chunk's start
    state and cache for its backward."""
    forward = _steps(spec.compile_step).forward
    wss, outputs, kept = inputs.state, [], []
    for chunk in zip(*(x.unbind(0) for x in inputs.chunks), strict=True):
        step = forward(wss, inputs.norm, _Chunk(*chunk), spec)
        if keep:
            kept.append(_Kept(wss, step.cache))
        outputs.append(step.out)
        wss = step.end
    return _Pass(torch.stack(outputs), wss, kept)


def _chunk_forward(wss: list[Tensor], norm: Norm | None, chunk: _Chunk, spec: _Spec) -> _Step:
    """One chunk from its stacked start state ``[W; S]``.

    The chunk's state is read while it is in cache: batching the reads of many chunks (which
    only need their start states) into larger matmuls was measured slower on CPU, as the
    stacked states must then be copied and streamed from memory.
    """
    new, inner = _update(wss, norm, chunk, spec)
    out, read = _read(wss, norm, chunk, inner, spec)
    return _Step(out, new, _Cache(inner, read))


class _Grads(NamedTuple):
    """The gradients of one chunk's inputs."""

    start: list[Tensor]  # of its stacked start state [W; S]
    chunk: _Chunk  # of its :class:`_Chunk` tensors
    norm: Norm | None  # of the residual norm's affine part, [BH, 1, D_v] each (row sums)


def _chunk_backward(
    wss: list[Tensor], norm: Norm | None, chunk: _Chunk, cache: _Cache, g_out: Tensor,
    g_new: list[Tensor], spec: _Spec,
) -> _Grads:
    """The gradients of one chunk's inputs from those of its outputs, by explicit matmuls.

    wss: the chunk's start state; g_out: [BH, c, D_v]; g_new: the gradient of the end state.
    """
    read = _read_backward(wss, norm, chunk, cache.inner, cache.read, g_out, spec)
    update = _update_backward(wss, norm, chunk, cache.inner, g_new, read.scaled, read.inputs,
                              spec)
    g_norm = None
    if norm is not None:
        g_norm = Norm(gamma=read.norm.gamma + update.norm.gamma,
                      beta=read.norm.beta + update.norm.beta)
    return _Grads(
        start=[a + b for a, b in zip(update.start, read.start, strict=True)],
        chunk=read.chunk._replace(k=update.k, v=update.v, end_coef=update.end_coef,
                                  mix=update.mix),
        norm=g_norm,
    )


def _weights(wss: list[Tensor]) -> list[Tensor]:
    """The weights W of each layer's stacked state ``[W; S]``."""
    return [m[:, : m.shape[1] // 2] for m in wss]


def _update(
    wss: list[Tensor], norm: Norm | None, chunk: _Chunk, spec: _Spec
) -> tuple[list[Tensor], InnerGradients]:
    """One chunk's inner gradients at its start weights and the stacked state ``[W; S]`` at
    its end: ``W' = A W + g S, S' = E S`` (one 2x2 mixing matmul) minus the tokens' steps."""
    inner = inner_gradients(chunk.k, chunk.v, _weights(wss), spec.activation, norm,
                            spec.max_grad_norm)
    new = []
    for m, a, delta in zip(wss, inner.inputs, inner.scaled, strict=True):
        kept = (chunk.mix @ m.view(m.shape[0], 2, -1)).view_as(m)
        coef_a = _scale_rows(chunk.end_coef, a).transpose(-1, -2)
        new.append(torch.baddbmm(kept, coef_a, delta, alpha=-1))
    return new, inner


def _read(
    wss: list[Tensor], norm: Norm | None, chunk: _Chunk, inner: InnerGradients, spec: _Spec,
) -> tuple[Tensor, _Read]:
    """Read M(q_t; W_t) with the per-token weights, layer by layer (dual form): [..., c, D_v].

    wss: the chunk's start state. Stacked, the read ``A_t x W + g_t x S`` is one matmul.
    """
    act = activation_fn(spec.activation)
    depth = len(wss)
    reads, products, scores, read_pre = [], [], [], []
    x = chunk.q
    for i in range(depth):
        reads.append(x)
        if i == 0:
            s = chunk.qk_theta
        else:
            products.append(x @ inner.inputs[i].transpose(-1, -2))
            s = products[-1] * chunk.k_theta
        scores.append(s)
        z = torch.baddbmm(_scale_rows(chunk.row_coef, x) @ wss[i], s, inner.scaled[i], alpha=-1)
        read_pre.append(z)
        x = act(z) if i < depth - 1 else z
    out_norm = None
    if spec.residual_norm:
        out_norm = layer_norm(z)
        out = chunk.q + out_norm.y * norm.gamma + norm.beta
    else:
        out = z
    return out, _Read(reads, products, scores, read_pre, out_norm)


class _ReadGrads(NamedTuple):
    """The gradients :func:`_read_backward` finds."""

    start: list[Tensor]  # of the chunk's start state [W; S] (the read's share)
    chunk: _Chunk  # of q, qk_theta, k_theta and row_coef; None for the tensors it does not read
    norm: Norm | None  # of the residual norm's affine part (row sums)
    scaled: list[Tensor]  # of inner.scaled
    inputs: list[Tensor]  # of inner.inputs of the layers after the first (the read skips k)


def _read_backward(
    wss: list[Tensor], norm: Norm | None, chunk: _Chunk, inner: InnerGradients,
    cache: _Read, g_out: Tensor, spec: _Spec,
) -> _ReadGrads:
    """The backward of :func:`_read`, last layer first."""
    name = spec.activation
    depth = len(wss)
    g_norm = None
    g_q = 0
    if spec.residual_norm:
        y, mean, rstd = cache.out_norm.y, cache.out_norm.mean, cache.out_norm.rstd
        g_norm = Norm(gamma=(g_out * y).sum(-2, keepdim=True), beta=g_out.sum(-2, keepdim=True))
        g_z = layer_norm_backward(g_out * norm.gamma, cache.read_pre[-1], mean, rstd)
        g_q = g_out
    else:
        g_z = g_out
    g_wss, g_scaled, g_inputs = [None] * depth, [None] * depth, [None] * (depth - 1)
    g_row, g_k_theta = 0, 0
    for i in range(depth - 1, -1, -1):
        x = cache.reads[i]
        g_wss[i] = _scale_rows(chunk.row_coef, x).transpose(-1, -2) @ g_z
        g_coef, g_x = _scale_rows_backward(chunk.row_coef, x, g_z @ wss[i].transpose(-1, -2))
        g_row = g_row + g_coef
        g_scores = -(g_z @ inner.scaled[i].transpose(-1, -2))
        g_scaled[i] = -(cache.scores[i].transpose(-1, -2) @ g_z)
        if i == 0:
            g_qk_theta = g_scores
            g_q = g_q + g_x
        else:
            g_k_theta = g_k_theta + g_scores * cache.products[i - 1]
            g_products = g_scores * chunk.k_theta
            g_x = g_x + g_products @ inner.inputs[i]
            g_inputs[i - 1] = g_products.transpose(-1, -2) @ x
            g_z = activation_backward(name, g_x, cache.read_pre[i - 1])
    g_chunk = _Chunk(q=g_q, k=None, v=None, qk_theta=g_qk_theta, k_theta=g_k_theta,
                     row_coef=g_row, end_coef=None, mix=None)
    return _ReadGrads(g_wss, g_chunk, g_norm, g_scaled, g_inputs)


class _UpdateGrads(NamedTuple):
    """The gradients :func:`_update_backward` finds."""

    start: list[Tensor]  # of the chunk's start state [W; S] (without the read's share)
    k: Tensor
    v: Tensor
    end_coef: Tensor
    mix: Tensor
    norm: Norm | None  # of the residual norm's affine part (row sums)


def _update_backward(
    wss: list[Tensor], norm: Norm | None, chunk: _Chunk, inner: InnerGradients,
    g_new: list[Tensor], g_scaled: list[Tensor], g_inputs: list[Tensor], spec: _Spec,
) -> _UpdateGrads:
    """The backward of :func:`_update` for one chunk, given the gradient of its end state and
    the read's gradients of its inner gradients (g_scaled; g_inputs of the layers after the
    first)."""
    bh = g_new[0].shape[0]
    g_wss = [(chunk.mix.transpose(-1, -2) @ g.view(bh, 2, -1)).view_as(g) for g in g_new]
    g_mix = sum(g.view(bh, 2, -1) @ m.view(bh, 2, -1).transpose(-1, -2)
                for g, m in zip(g_new, wss, strict=True))
    g_scaled, g_end = list(g_scaled), 0
    g_inputs = [0, *g_inputs]
    for i, (a, d, g) in enumerate(zip(inner.inputs, inner.scaled, g_new, strict=True)):
        g_scaled[i] = torch.baddbmm(g_scaled[i], _scale_rows(chunk.end_coef, a), g, alpha=-1)
        g_coef, g_a = _scale_rows_backward(chunk.end_coef, a, -(d @ g.transpose(-1, -2)))
        g_end = g_end + g_coef
        g_inputs[i] = g_a + g_inputs[i]
    g_inner = inner_gradients_backward(_weights(wss), inner, g_scaled, g_inputs, spec.activation,
                                       norm, spec.max_grad_norm)
    for g_m, g_w in zip(g_wss, g_inner.weights, strict=True):
        g_m[:, : g_w.shape[1]] += g_w
    return _UpdateGrads(start=g_wss, k=g_inner.k, v=g_inner.v, end_coef=g_end, mix=g_mix,
                        norm=g_inner.norm)


def _scale_rows(coef: Tensor, x: Tensor) -> Tensor:
    """[c1_t * x_t, c2_t * x_t] per row t: coef [..., c, 2], x [..., c, d] -> [..., c, 2d]."""
    return (coef[..., None] * x[..., None, :]).flatten(-2)


def _scale_rows_backward(coef: Tensor, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of coef [..., c, 2] and x [..., c, d] from g [..., c, 2d] of _scale_rows."""
    g = g.unflatten(-1, (2, -1))
    return (g * x[..., None, :]).sum(-1), (g * coef[..., None]).sum(-2)


class _Steps(NamedTuple):
    """A chunk's forward and backward, eager or compiled."""

    forward: Callable[..., _Step]  # :func:`_chunk_forward`
    backward: Callable[..., _Grads]  # :func:`_chunk_backward`


@functools.cache
def _steps(compile_step: bool) -> _Steps:
    """The chunk's forward and backward functions, eager or ``torch.compile``'d.

    Built once and shared: every chunk of every call reuses the same graphs (per shape/dtype).
    """
    if not compile_step:
        return _Steps(_chunk_forward, _chunk_backward)
    return _Steps(torch.compile(_chunk_forward, dynamic=False),
                  torch.compile(_chunk_backward, dynamic=False))


class _ChunkedMemory(torch.autograd.Function):
    """The chunk loop with its hand-derived backward, which walks the chunks in reverse.

    With ``checkpoint_chunks`` the forward keeps only the state at the start of every group of
    that many chunks and the backward recomputes each group's forward before walking it back;
    without, every chunk's start state and inner gradients are kept. A backward that must
    itself be differentiable (``create_graph=True``) is taken by autograd through a
    recomputation.
    """

    @staticmethod
    def forward(ctx, spec: _Spec, checkpoint_chunks: int | None, *tensors: Tensor):  # type: ignore[override]
        """tensors: :meth:`_Inputs.flat`. Returns the outputs of all chunks and the stacked
        end state of every layer."""
        inputs = _Inputs.from_flat(tensors, spec.residual_norm)
        ctx.spec, ctx.group = spec, checkpoint_chunks
        ctx.save_for_backward(*tensors)
        if checkpoint_chunks is None:
            run = _run_chunks(inputs, spec, keep=True)
            ctx.kept = run.kept
            return (run.out, *run.end)
        outputs, ctx.starts = [], []
        wss = inputs.state
        for group in zip(*(x.split(checkpoint_chunks) for x in inputs.chunks), strict=True):
            ctx.starts.append(wss)
            run = _run_chunks(inputs._replace(state=wss, chunks=_Chunk(*group)), spec)
            outputs.append(run.out)
            wss = run.end
        return (torch.cat(outputs), *wss)

    @staticmethod
    def backward(ctx, g_out: Tensor, *g_state: Tensor):  # type: ignore[override]
        tensors, spec = ctx.saved_tensors, ctx.spec
        if torch.is_grad_enabled():
            return (None, None, *_autograd_backward(tensors, spec, g_out, g_state))
        inputs = _Inputs.from_flat(tensors, spec.residual_norm)
        norm, chunks = inputs.norm, inputs.chunks
        n_chunks = chunks.q.shape[0]
        group = ctx.group or n_chunks
        backward = _steps(spec.compile_step).backward
        g_chunks = _Chunk(*(torch.empty_like(x) for x in chunks))
        g_norm = None if norm is None else Norm(*(torch.zeros_like(p) for p in norm))
        g_wss = list(g_state)
        # The backward must run in the forward's precision, whatever autocast region calls it.
        with torch.autocast(device_type=g_out.device.type, enabled=False):
            for start in reversed(range(0, n_chunks, group)):
                stop = min(start + group, n_chunks)
                if ctx.group is None:
                    kept = ctx.kept
                else:
                    part = _Chunk(*(x[start:stop] for x in chunks))
                    starts = inputs._replace(state=ctx.starts[start // group], chunks=part)
                    kept = _run_chunks(starts, spec, keep=True).kept
                for n in range(stop - 1, start - 1, -1):
                    chunk = _Chunk(*(x[n] for x in chunks))
                    saved = kept[n - start]
                    grads = backward(saved.start, norm, chunk, saved.cache, g_out[n], g_wss, spec)
                    g_wss = grads.start
                    for buf, g in zip(g_chunks, grads.chunk, strict=True):
                        buf[n] = g
                    if g_norm is not None:
                        for buf, g in zip(g_norm, grads.norm, strict=True):
                            buf += g
        return (None, None, *_Inputs(g_wss, g_norm, g_chunks).flat())


def _autograd_backward(
    tensors: tuple[Tensor, ...], spec: _Spec, g_out: Tensor, g_state: tuple[Tensor, ...]
) -> tuple[Tensor | None, ...]:
    """Gradients by autograd through a recomputed forward, with ``create_graph`` (for double
    backward: the hand-derived backward is not itself differentiable)."""
    wanted = [t for t in tensors if t.requires_grad]
    with torch.autocast(device_type=g_out.device.type, enabled=False):
        run = _run_chunks(_Inputs.from_flat(tensors, spec.residual_norm), spec)
    grads = iter(torch.autograd.grad((run.out, *run.end), wanted, (g_out, *g_state),
                                     create_graph=True, allow_unused=True))
    return tuple(next(grads) if t.requires_grad else None for t in tensors)


def _unflatten(ws: list[Tensor], ss: list[Tensor], b: int, h: int) -> MemoryState:
    return MemoryState(
        [w.reshape(b, h, *w.shape[1:]) for w in ws], [s.reshape(b, h, *s.shape[1:]) for s in ss]
    )
