"""Pieces shared by the neural-memory ops: the state, input checks, the dtype policy, the MLP,
its read and its backward.

The memory of Titans (paper eqs. 11-15) is an MLP with fast weights, one independent MLP per
(batch, head). Its weights ``W_i`` and momentum ``S_i`` have shape ``[B, H, d_{i-1}, d_i]``:
``d_0`` is the key/query dimension and ``d_L`` the value dimension.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, NamedTuple, ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.checks import check_choice, check_int, check_number

ACTIVATIONS = ("gelu", "silu")
LAYER_NORM_EPS = 1e-5


@dataclass
class MemoryState:
    """Fast weights and momentum ("surprise") of the memory MLP.

    weights:  [W_1, ..., W_L], W_i: [B, H, d_{i-1}, d_i]
    momentum: [S_1, ..., S_L], S_i: same shape as W_i
    """

    weights: list[Tensor]
    momentum: list[Tensor]

    def __post_init__(self) -> None:
        if len(self.weights) == 0:
            raise ValueError("MemoryState needs at least one weight matrix (a linear memory)")
        if len(self.weights) != len(self.momentum):
            raise ValueError(
                f"MemoryState has {len(self.weights)} weights but {len(self.momentum)} momenta"
            )
        for i, (w, s) in enumerate(zip(self.weights, self.momentum, strict=True)):
            if w.dim() != 4:
                raise ValueError(f"weights[{i}] must be [B, H, d_in, d_out], got {tuple(w.shape)}")
            if s.shape != w.shape:
                raise ValueError(
                    f"momentum[{i}] has shape {tuple(s.shape)}, weights[{i}] {tuple(w.shape)}"
                )
            if i > 0 and self.weights[i - 1].shape[-1] != w.shape[-2]:
                raise ValueError(
                    f"weights[{i - 1}] ends in dim {self.weights[i - 1].shape[-1]} "
                    f"but weights[{i}] starts with dim {w.shape[-2]}"
                )

    @property
    def depth(self) -> int:
        return len(self.weights)

    @classmethod
    def from_initial(cls, weights: list[Tensor], batch_size: int) -> MemoryState:
        """Broadcast per-head initial weights ``[H, d_in, d_out]`` over the batch, zero momentum."""
        ws = [w.unsqueeze(0).expand(batch_size, *w.shape) for w in weights]
        return cls(weights=ws, momentum=[torch.zeros_like(w) for w in ws])

    def detach(self) -> MemoryState:
        return MemoryState([w.detach() for w in self.weights], [s.detach() for s in self.momentum])

    def to(self, dtype: torch.dtype) -> MemoryState:
        return MemoryState(
            [w.to(dtype) for w in self.weights], [s.to(dtype) for s in self.momentum]
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Memory-update math runs in at least float32 (bf16/fp16 inner loops are not stable)."""
    return torch.promote_types(dtype, torch.float32)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def without_autocast(
    fn: Callable[Concatenate[Tensor, _P], _R],
) -> Callable[Concatenate[Tensor, _P], _R]:
    """Run ``fn(q, ...)`` with autocast off on q's device: inside an autocast region too, the
    memory math stays in :func:`compute_dtype`."""

    @functools.wraps(fn)
    def wrapper(q: Tensor, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    momentum: Tensor,
    decay: Tensor,
    state: MemoryState,
    chunk_size: int | None,
    activation: str,
    residual_norm: bool,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    max_grad_norm: float | None = None,
    checkpoint_chunks: int | None = None,
    chunked: bool = True,
    values: bool = True,
) -> None:
    """Raise ``ValueError`` with a clear message for any inconsistent input of the memory ops:
    the tensors' dtypes and shapes, the state, and the settings (:func:`check_settings`); with
    ``values``, on the CPU, the values too (:func:`check_values`).

    chunked: False for an op that has no chunk size (memory_recurrent stays in one chunk; it
        passes chunk_size None).
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr), ("momentum", momentum),
                    ("decay", decay)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be [B, T, H, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, D_v] with B, T, H of q; got {tuple(v.shape)}")
    for name, g in (("lr", lr), ("momentum", momentum), ("decay", decay)):
        if g.shape != q.shape[:3]:
            raise ValueError(
                f"{name} must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(g.shape)}"
            )
    check_settings(activation, max_grad_norm, chunk_size, checkpoint_chunks, chunked=chunked)
    b, _, h, d_k = q.shape
    check_memory(state, b, h, d_k, v.shape[-1], residual_norm, norm_weight, norm_bias)
    # Values are checked only where reading them back costs no device sync (and outside a
    # compiled graph): on an accelerator the check would stall every call.
    if values and q.device.type == "cpu" and not torch.compiler.is_compiling():
        check_values(q, k, v, lr, momentum, decay)


def check_values(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, momentum: Tensor,
                 decay: Tensor) -> None:
    """Raise ``ValueError`` unless q, k, v are finite, ``lr`` is finite and >= 0 and
    ``momentum`` and ``decay`` lie in [0, 1] (NaN fails every rule).

    Why: outside these ranges the recurrence is no longer the paper's (decay > 1 flips the
    weights' sign, momentum > 1 makes the surprise grow without bound), and a non-finite value
    at token t of a chunk would reach the outputs of the chunk's earlier tokens in one pass (0 *
    NaN in the masked matmuls) but not when the sequence is split before t.
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr)):
        # One float64 sum per tensor: NaN or inf anywhere makes it non-finite, and no float32
        # values can overflow it. The whole check took 1.7 ms for 8 x 2048 tokens x 4 heads
        # (isfinite(t).all() alone 9.6 ms; the op itself ~130 ms).
        if not math.isfinite(t.detach().sum(dtype=torch.float64).item()):
            raise ValueError(f"{name} must be finite, got NaN or infinite values")
    if lr.numel() and lr.min().item() < 0:
        raise ValueError(f"lr must be >= 0, got a minimum of {lr.min().item():.4g}")
    for name, g in (("momentum", momentum), ("decay", decay)):
        low, high = torch.aminmax(g.detach()) if g.numel() else (g.new_zeros(()),) * 2
        if not 0 <= low.item() <= high.item() <= 1:  # NaN fails too
            raise ValueError(f"{name} must lie in [0, 1], got values in "
                             f"[{low.item():.4g}, {high.item():.4g}]")


def check_settings(
    activation: str,
    max_grad_norm: float | None = None,
    chunk_size: int | None = None,
    checkpoint_chunks: int | None = None,
    *,
    chunked: bool = True,
) -> None:
    """Raise ``ValueError`` for a bad scalar setting of the memory ops: ``activation`` one of
    :data:`ACTIVATIONS`, ``max_grad_norm`` None (no clipping) or a number > 0, ``chunk_size``
    an int >= 1 (not checked with ``chunked=False``: an op without chunks),
    ``checkpoint_chunks`` None or an int >= 1.

    The ops check their settings on every call; :class:`titans.layers.NeuralMemory` checks its
    own with this when it is built, so a bad one fails there and not at the first forward.
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_number("max_grad_norm", max_grad_norm, "> 0", lambda x: x > 0, optional=True)
    if chunked:
        check_int("chunk_size", chunk_size, 1)
    check_int("checkpoint_chunks", checkpoint_chunks, 1, optional=True)


def check_memory(
    state: MemoryState,
    batch: int,
    heads: int,
    d_k: int,
    d_v: int,
    residual_norm: bool,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
) -> None:
    """Raise ``ValueError`` unless ``state`` is a memory for ``batch`` x ``heads`` that maps
    ``d_k``-dim keys (and queries) to ``d_v``-dim values with this norm."""
    w_first, w_last = state.weights[0], state.weights[-1]
    if w_first.shape[:2] != (batch, heads):
        raise ValueError(
            f"state weights must be [B={batch}, H={heads}, ...], got {tuple(w_first.shape)}"
        )
    if w_first.shape[-2] != d_k:
        raise ValueError(f"weights[0] must take the key dim {d_k}, got {w_first.shape[-2]}")
    if w_last.shape[-1] != d_v:
        raise ValueError(f"weights[-1] must produce the value dim {d_v}, got {w_last.shape[-1]}")
    if residual_norm and d_k != d_v:
        raise ValueError("residual_norm needs equal key and value dims (M(x) = x + LN(mlp(x)))")
    for name, p in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if p is None:
            continue
        if not residual_norm:
            raise ValueError(f"{name} is the LayerNorm's affine part: it needs residual_norm=True")
        if not p.is_floating_point() or p.shape != (heads, d_v):
            raise ValueError(
                f"{name} must be a floating-point [H, D_v] = {(heads, d_v)} tensor, got "
                f"{p.dtype} {tuple(p.shape)}"
            )


def grad_clip_scale(sq_norm: Tensor, max_grad_norm: float) -> Tensor:
    """``min(1, max_grad_norm / ||u||)`` from the squared norm ``||u||^2`` of an inner gradient.

    The norm is clamped from below before the square root, so the scale (and its gradient) is
    finite also for a zero gradient.
    """
    return max_grad_norm * sq_norm.clamp_min(max_grad_norm**2).rsqrt()


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    return {"gelu": F.gelu, "silu": F.silu}[name]


def activation_backward(name: str, grad: Tensor, z: Tensor) -> Tensor:
    """``grad * act'(z)`` (exact GELU or SiLU), differentiable again by autograd.

    GELU by ATen's fused kernel, which has a double backward; SiLU by plain ops,
    ``silu'(z) = s (1 + z (1 - s))`` with ``s = sigmoid(z)``, because ATen's ``silu_backward``
    has none (autograd through it raises).
    """
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, z)
    s = torch.sigmoid(z)
    return grad * s * (1 + z * (1 - s))


def activation_second(name: str, z: Tensor) -> Tensor:
    """``act''(z)``, the curvature the backward of an inner gradient needs.

    GELU ``z Phi(z)``: ``phi(z) (2 - z^2)``; SiLU ``z s(z)``: ``s (1 - s) (2 + z (1 - 2 s))``.
    """
    if name == "gelu":
        return torch.exp(-0.5 * z * z) * (2 - z * z) * (2 * math.pi) ** -0.5
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def mlp_forward(
    x: Tensor,
    weights: list[Tensor],
    activation: str,
    residual_norm: bool,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
) -> Tensor:
    """M(x; W) for one set of weights per (batch, head).

    x: [B, H, N, d_0], weights[i]: [B, H, d_{i-1}, d_i] -> [B, H, N, d_L]
    norm_weight, norm_bias: [H, d_L], the per-head affine part of the residual LayerNorm,
    ``M(x) = x + LN(mlp(x)) * norm_weight + norm_bias`` (None: weight 1, bias 0).
    """
    act = activation_fn(activation)
    h = x
    for i, w in enumerate(weights):
        h = h @ w
        if i < len(weights) - 1:
            h = act(h)
    if residual_norm:
        h = F.layer_norm(h, h.shape[-1:], eps=LAYER_NORM_EPS)
        if norm_weight is not None:
            h = h * norm_weight[:, None].to(h.dtype)
        if norm_bias is not None:
            h = h + norm_bias[:, None].to(h.dtype)
        h = x + h
    return h


@without_autocast
def read(
    q: Tensor,
    state: MemoryState,
    *,
    activation: str = "gelu",
    residual_norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
) -> Tensor:
    """Read the memory at queries without writing to it: ``M(q; W)`` with its weights fixed.

    Like the updates, the read runs in :func:`compute_dtype` with autocast off.

    Args:
        q: [B, H, T, D], queries per (batch, head).
        state: the memory, weights [B, H, d_{i-1}, d_i] with d_0 = D (its momentum is not used).
        activation, residual_norm, norm_weight, norm_bias: as in memory_naive (norm_weight,
            norm_bias: [H, d_L]).

    Returns:
        [B, H, T, d_L] (d_L = D with the residual norm), in ``compute_dtype(q.dtype)``: the
        caller rounds it when it needs q's precision.
    """
    if not q.is_floating_point() or q.dim() != 4:
        raise ValueError(f"q must be a floating-point [B, H, T, D] tensor, got {q.dtype} "
                         f"{tuple(q.shape)}")
    check_settings(activation, chunked=False)
    b, h, _, d = q.shape
    check_memory(state, b, h, d, state.weights[-1].shape[-1], residual_norm, norm_weight,
                 norm_bias)
    dtype = compute_dtype(q.dtype)
    weights = [w.to(dtype) for w in state.weights]
    return mlp_forward(q.to(dtype), weights, activation, residual_norm, norm_weight, norm_bias)


class Norm(NamedTuple):
    """The affine part of the residual norm ``M(x) = x + LN(mlp(x)) * gamma + beta`` (outer
    parameters, not fast weights), each broadcastable to the memory's output [..., n, d_L]."""

    gamma: Tensor
    beta: Tensor


class LayerNormed(NamedTuple):
    """:func:`layer_norm` of z [..., n, d], and the statistics its backward needs."""

    y: Tensor  # LN(z): [..., n, d]
    mean: Tensor  # [..., n, 1]
    rstd: Tensor  # 1 / sqrt(var + eps): [..., n, 1]


def layer_norm(z: Tensor) -> LayerNormed:
    """LayerNorm without affine part over the last dim.

    ATen's fused kernels when autograd is off (the chunked op's forward and hand-derived
    backward). With grad enabled the norm is composed of plain ops: autograd may then take
    third derivatives through the inner gradient's layer-norm backward (a double backward of
    the op), and the fused kernels' derivatives treat mean and rstd as constants there.
    """
    if not torch.is_grad_enabled():
        return LayerNormed(
            *torch.ops.aten.native_layer_norm(z, z.shape[-1:], None, None, LAYER_NORM_EPS)
        )
    mean = z.mean(-1, keepdim=True)
    rstd = ((z - mean).pow(2).mean(-1, keepdim=True) + LAYER_NORM_EPS).rsqrt()
    return LayerNormed((z - mean) * rstd, mean, rstd)


def layer_norm_backward(g: Tensor, z: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """``LN'(z)^T g`` for :func:`layer_norm` (the Jacobian is symmetric, so this is also
    ``LN'(z) g``): ``rstd (g - mean(g) - y mean(g y))`` with ``y = LN(z)``."""
    if not torch.is_grad_enabled():
        return torch.ops.aten.native_layer_norm_backward(
            g, z, z.shape[-1:], mean, rstd, None, None, [True, False, False]
        )[0]
    y = (z - mean) * rstd
    return rstd * (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True))


class Clip(NamedTuple):
    """Each token's inner gradient u_r clipped to ``scale * u_r`` (all layers together), the
    factors [..., n, 1] each."""

    sq_norm: Tensor  # ||u_r||^2 before clipping
    scale: Tensor  # min(1, max_grad_norm / ||u_r||)


class InnerGradients(NamedTuple):
    """Every token's inner gradient at fixed weights as factors, and what its backward needs.

    Token r's gradient of ``0.5 ||M(k_r; W) - v_r||^2`` in layer i is the outer product
    ``inputs[i][r]^T scaled[i][r]`` (layer input times back-propagated error): callers use the
    factors without forming the d_{i-1} x d_i matrices. All [..., n, d] (clip: [..., n, 1]).
    """

    inputs: list[Tensor]  # a_0 = k, a_1, ...: each layer's input
    pre: list[Tensor]  # z_1, ..., z_L: each layer's pre-activation
    backs: list[Tensor]  # delta_{i+1} W_{i+1}^T, the error reaching the layers before the last
    deltas: list[Tensor]  # the back-propagated errors before clipping
    scaled: list[Tensor]  # the errors after clipping (the deltas themselves without it)
    clip: Clip | None  # with max_grad_norm
    key_norm: LayerNormed | None  # LN(z_L) of the keys, with the residual norm
    err: Tensor | None  # M(k) - v, with the residual norm (without it, deltas[-1])


def inner_gradients(
    k: Tensor,
    v: Tensor,
    weights: list[Tensor],
    activation: str,
    norm: Norm | None,
    max_grad_norm: float | None,
) -> InnerGradients:
    """Every token's inner gradient at fixed weights, by hand: forward the keys, back-propagate.

    With ``max_grad_norm`` each token's errors are scaled so that its gradient, all layers
    together, has at most that norm. Plain tensor ops: differentiable by autograd.

    k: [..., n, d_0]; v: [..., n, d_L]; weights[i]: [..., d_{i-1}, d_i] (the same leading dims).
    norm: the residual norm's affine part, ``M = k + LN(mlp(k)) * gamma + beta``; None for the
        plain MLP ``M = mlp(k)``.
    """
    act = activation_fn(activation)
    depth = len(weights)
    inputs, pre = [], []
    x = k
    for i, w in enumerate(weights):
        inputs.append(x)
        z = x @ w
        pre.append(z)
        x = act(z) if i < depth - 1 else z
    key_norm = err = None
    if norm is None:
        deltas = [z - v]
    else:
        # The error at the MLP output for M = k + LN(z) gamma + beta: LN'(z)^T (err * gamma).
        key_norm = layer_norm(z)
        err = k + key_norm.y * norm.gamma + norm.beta - v
        deltas = [layer_norm_backward(err * norm.gamma, z, key_norm.mean, key_norm.rstd)]
    backs = []
    for i in range(depth - 1, 0, -1):
        backs.insert(0, deltas[0] @ weights[i].transpose(-1, -2))
        deltas.insert(0, activation_backward(activation, backs[0], pre[i - 1]))
    scaled, clip = deltas, None
    if max_grad_norm is not None:
        # The squared Frobenius norm of a_r^T delta_r is ||a_r||^2 ||delta_r||^2, so clipping
        # scales the rows of delta.
        sq_norm = sum(row_sq(a) * row_sq(d) for a, d in zip(inputs, deltas, strict=True))
        scale = grad_clip_scale(sq_norm, max_grad_norm)
        scaled = [d * scale for d in deltas]
        clip = Clip(sq_norm, scale)
    return InnerGradients(inputs, pre, backs, deltas, scaled, clip, key_norm, err)


def row_sq(x: Tensor) -> Tensor:
    """||x_r||^2 per row: [..., n, d] -> [..., n, 1]."""
    return x.pow(2).sum(-1, keepdim=True)


class InnerGradientsGrads(NamedTuple):
    """The gradients of :func:`inner_gradients`' inputs."""

    weights: list[Tensor]
    k: Tensor
    v: Tensor
    norm: Norm | None  # summed over the rows, [..., 1, d_L] each; None without the norm


def inner_gradients_backward(
    weights: list[Tensor],
    inner: InnerGradients,
    g_scaled: list[Tensor],
    g_inputs: list[Tensor],
    activation: str,
    norm: Norm | None,
    max_grad_norm: float | None,
) -> InnerGradientsGrads:
    """The backward of :func:`inner_gradients` by explicit matmuls (a second derivative of the
    inner loss: it needs ``act''`` and the derivative of the layer norm's backward).

    g_scaled, g_inputs: the gradients of ``inner.scaled`` and ``inner.inputs`` (same shapes).
    """
    depth = len(weights)
    g_inputs = list(g_inputs)
    if inner.clip is None:
        g_deltas = list(g_scaled)
    else:
        # scaled = scale * delta, scale = m / sqrt(max(n, m^2)), n = sum ||a||^2 ||delta||^2
        sq_norm, scale = inner.clip.sq_norm, inner.clip.scale
        bound = max_grad_norm**2
        g_scale = sum(row_dot(g, d) for g, d in zip(g_scaled, inner.deltas, strict=True))
        g_sq = torch.where(sq_norm >= bound, -0.5 * g_scale * scale.pow(3) / bound, 0.0)
        g_deltas = []
        for i, (a, d, g) in enumerate(zip(inner.inputs, inner.deltas, g_scaled, strict=True)):
            g_deltas.append(g * scale + 2 * g_sq * row_sq(a) * d)
            g_inputs[i] = g_inputs[i] + 2 * g_sq * row_sq(d) * a

    # delta_i = act'(z_i) * (delta_{i+1} W_{i+1}^T), first layer first: its gradient reaches
    # delta_{i+1}, W_{i+1} and, by act'', z_i.
    g_weights: list[Tensor | None] = [None] * depth
    g_pre = []
    for i in range(depth - 1):
        g_back = activation_backward(activation, g_deltas[i], inner.pre[i])
        g_pre.append(g_deltas[i] * inner.backs[i] * activation_second(activation, inner.pre[i]))
        g_deltas[i + 1] = g_deltas[i + 1] + g_back @ weights[i + 1]
        g_weights[i + 1] = g_back.transpose(-1, -2) @ inner.deltas[i + 1]
    g_delta = g_deltas[-1]
    g_norm = None
    if norm is None:
        g_pre.append(g_delta)
        g_k, g_v = 0, -g_delta
    else:
        # delta_L = LN'(z)^T h with h = err * gamma, err = k + LN(z) gamma + beta - v. Besides
        # through h, delta_L depends on z through LN' itself:
        # d delta_L = (dr / r) delta_L - r mean(h y) dy - r y mean(h dy), r = rstd, y = LN(z).
        gamma, err = norm.gamma, inner.err
        y, mean, rstd = inner.key_norm.y, inner.key_norm.mean, inner.key_norm.rstd
        z, d = inner.pre[-1], y.shape[-1]
        g_h = layer_norm_backward(g_delta, z, mean, rstd)
        g_err = g_h * gamma
        h_y = row_dot(err * gamma, y) / d
        g_pre.append(layer_norm_backward(g_err * gamma, z, mean, rstd) - rstd * h_y * g_h
                     - rstd / d * (row_dot(g_delta, inner.deltas[-1]) * y
                                   + row_dot(g_delta, y) * inner.deltas[-1]))
        g_norm = Norm(gamma=(g_h * err + g_err * y).sum(-2, keepdim=True),
                      beta=g_err.sum(-2, keepdim=True))
        g_k, g_v = g_err, -g_err

    # The keys' forward, last layer first.
    for i in range(depth - 1, -1, -1):
        if i < depth - 1:
            g_pre[i] = g_pre[i] + activation_backward(activation, g_inputs[i + 1], inner.pre[i])
        g_w = inner.inputs[i].transpose(-1, -2) @ g_pre[i]
        g_weights[i] = g_w if g_weights[i] is None else g_weights[i] + g_w
        g_inputs[i] = g_inputs[i] + g_pre[i] @ weights[i].transpose(-1, -2)
    return InnerGradientsGrads(g_weights, g_k + g_inputs[0], g_v, g_norm)


def row_dot(x: Tensor, y: Tensor) -> Tensor:
    """x_r . y_r per row: [..., n, d] -> [..., n, 1]."""
    return (x * y).sum(-1, keepdim=True)
