"""The neural long-term memory layer of Titans (paper §3 and the block of §4.4).

x -> q, k, v projections -> causal depthwise conv (kernel 4) -> SiLU -> L2-normalised q, k
  -> the memory op (the memory learns from (k, v) with data-dependent theta, eta, alpha, and is
     read at q: memory_chunked when a chunk closes, memory_recurrent token by token inside the
     open chunk) -> per-head RMSNorm -> sigmoid gate from x -> output projection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.checks import check_choice, check_int, check_number
from titans.layers.norm import RMSNorm
from titans.layers.tags import mark_no_weight_decay, mark_residual_projection
from titans.ops.memory import (
    MemoryState,
    check_settings,
    memory_chunked,
    memory_recurrent,
    read,
)


class PendingTokens(NamedTuple):
    """Inputs of the open chunk's tokens: k, v [B, n, H, D]; lr, momentum, decay [B, n, H]."""

    k: Tensor
    v: Tensor
    lr: Tensor
    momentum: Tensor
    decay: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> PendingTokens:
        return PendingTokens(*(fn(t) for t in self))


@dataclass
class NeuralMemoryState:
    """Everything a :class:`NeuralMemory` needs to continue a sequence exactly.

    memory:  weights and momentum at the last chunk boundary, each [B, H, d_{i-1}, d_i]: the
             inner gradients of the open chunk's tokens are all taken at these weights.
    current: weights and momentum after the last token read (the running memory), shaped like
             ``memory`` and equal to it when no token is pending. A call that stays inside the
             open chunk continues from it token by token.
    pending: the inputs of the tokens read since that boundary (fewer than chunk_size). A
             call that closes the chunk replays them with its own tokens, to keep chunk
             boundaries where one pass would put them.
    conv:    the last ``conv_kernel - 1`` projected inputs of the q/k/v convolution,
             [B, 3 * H * D, conv_kernel - 1] (None without convolution).
    """

    memory: MemoryState
    current: MemoryState
    pending: PendingTokens
    conv: Tensor | None

    @property
    def num_pending(self) -> int:
        return self.pending.k.shape[1]

    def detach(self) -> NeuralMemoryState:
        """Cut the autograd graph (truncated back-propagation through a long stream)."""
        return NeuralMemoryState(
            self.memory.detach(),
            self.current.detach(),
            self.pending.map(Tensor.detach),
            None if self.conv is None else self.conv.detach(),
        )


# How the q/k/v convolution starts (NeuralMemory's conv_init).
CONV_INITS = ("default", "induction")


def _inverse_sigmoid(p: float) -> float:
    return math.log(p / (1 - p))


class NeuralMemory(nn.Module):
    """Titans' neural long-term memory (LMM) as a sequence layer: x [B, T, hidden] -> y.

    Args:
        hidden_size: model width.
        num_heads, head_dim: independent memories, each on ``head_dim``-dim keys and values.
        memory_depth: layers of the memory MLP (1 = the linear-memory ablation).
        memory_expansion: hidden width of a deep memory, as a multiple of ``head_dim``.
        chunk_size: tokens per inner mini-batch (gradients at the chunk-start weights).
        activation: ``"gelu"`` (exact) or ``"silu"`` between memory layers.
        residual_norm: memory ``M(x) = x + LayerNorm(mlp(x))`` (the NeurIPS version's default).
        max_lr: upper bound of the step a chunk's *mean* inner gradient takes: the per-token
            rate is ``theta_t = max_lr / chunk_size * sigmoid(.)``, so a chunk's summed step
            stays the same whatever the chunk size (see docs/stability.md).
        max_momentum: upper bound of the momentum eta (< 1, or a gradient is never forgotten
            and its total gain theta / (1 - eta) is unbounded).
        max_decay: upper bound of the forget gate alpha.
        max_grad_norm: clip every token's inner gradient (all memory layers together) to this
            norm, so that no token can move the memory by more than theta * max_grad_norm;
            None turns clipping off.
        use_momentum: False is the "w/o momentum" ablation (eta = 0: plain online GD).
        use_decay: False is the "w/o weight decay" ablation (alpha = 0: nothing is forgotten).
        conv_kernel: causal depthwise conv width after the q/k/v projections; 0 = "w/o conv".
        conv_init: ``"default"`` (PyTorch's uniform initialisation) or ``"induction"``: the key
            conv starts as the query conv shifted back by one token and the value conv as the
            identity (see ``_induction_conv_init``; the paper does not say how it initialises the
            conv). Needs ``conv_kernel >= 2``.
        checkpoint_chunks: in training, recompute groups of this many chunks in the backward
            pass instead of keeping every chunk's memory weights (None keeps them all).
        compile_step: compile the op's per-chunk step with ``torch.compile`` (faster after a
            one-off compilation; see ``docs/benchmarks.md``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        memory_depth: int = 2,
        memory_expansion: int = 4,
        chunk_size: int = 16,
        activation: str = "gelu",
        residual_norm: bool = True,
        max_lr: float = 0.1,
        max_momentum: float = 0.9,
        max_decay: float = 0.1,
        max_grad_norm: float | None = 1.0,
        use_momentum: bool = True,
        use_decay: bool = True,
        conv_kernel: int = 4,
        conv_init: str = "default",
        checkpoint_chunks: int | None = 16,
        compile_step: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("hidden_size", hidden_size, 1), ("num_heads", num_heads, 1), ("head_dim", head_dim, 1),
            ("memory_depth", memory_depth, 1), ("memory_expansion", memory_expansion, 1),
            ("conv_kernel", conv_kernel, 0),
        ):
            check_int(name, value, low)
        check_number("max_lr", max_lr, "> 0", lambda x: x > 0)
        check_choice("conv_init", conv_init, CONV_INITS)
        if conv_init == "induction" and conv_kernel < 2:
            raise ValueError(f"conv_init 'induction' shifts the key conv by one token: it needs "
                             f"conv_kernel >= 2, got {conv_kernel}")
        for name, value in (("max_momentum", max_momentum), ("max_decay", max_decay)):
            check_number(name, value, "in (0, 1]", lambda x: 0 < x <= 1)
        # The op's settings, checked by the op's own rule now rather than at the first forward.
        check_settings(activation, max_grad_norm, chunk_size, checkpoint_chunks)
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.chunk_size, self.activation, self.residual_norm = chunk_size, activation, residual_norm
        self.max_lr, self.use_momentum, self.use_decay = max_lr, use_momentum, use_decay
        self.max_momentum, self.max_decay = max_momentum, max_decay
        self.max_grad_norm = max_grad_norm
        self.conv_kernel, self.checkpoint_chunks = conv_kernel, checkpoint_chunks
        self.conv_init = conv_init
        self.compile_step = compile_step
        inner = num_heads * head_dim

        self.qkv_proj = nn.Linear(hidden_size, 3 * inner, bias=False)
        # Depthwise over the 3 * inner channels = one depthwise conv each for q, k and v; the
        # projection before it is the pointwise half of the depthwise-separable convolution.
        self.conv = (
            nn.Conv1d(3 * inner, 3 * inner, conv_kernel, groups=3 * inner, bias=False)
            if conv_kernel
            else None
        )
        # Per-token, per-head gate logits: theta (lr), eta (momentum), alpha (decay).
        self.gate_proj = nn.Linear(hidden_size, 3 * num_heads)
        dims = [head_dim] + [head_dim * memory_expansion] * (memory_depth - 1) + [head_dim]
        # One independent parameter per head (never an expanded view, which optimizers reject).
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.empty(num_heads, dims[i], dims[i + 1])) for i in range(memory_depth)
        )
        # The residual LayerNorm's per-head weight and bias (outer parameters, as in TTT): without
        # them ||M(k) - k|| is pinned at sqrt(head_dim) and the memory can never fit its values.
        self.memory_norm_weight = self.memory_norm_bias = None
        if residual_norm:
            self.memory_norm_weight = nn.Parameter(torch.empty(num_heads, head_dim))
            self.memory_norm_bias = nn.Parameter(torch.empty(num_heads, head_dim))
            # Norm parameters stored as [H, D] matrices: they do not decay.
            mark_no_weight_decay(self.memory_norm_weight, self.memory_norm_bias)
        # The initial weights are the inner learner's starting state (its forget gate governs
        # how they shrink), not a map: no weight decay.
        mark_no_weight_decay(*self.memory_init)
        self.out_norm = RMSNorm(head_dim, eps=1e-6)
        self.out_gate = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        mark_residual_projection(self.o_proj)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in self.memory_init:
            nn.init.normal_(w, std=w.shape[-2] ** -0.5)
        if self.memory_norm_weight is not None:
            # ||LN(z) * weight|| = 1 = ||k||: the residual branch starts on the keys' scale.
            nn.init.constant_(self.memory_norm_weight, self.head_dim**-0.5)
            nn.init.zeros_(self.memory_norm_bias)
        nn.init.normal_(self.gate_proj.weight, std=0.02)
        with torch.no_grad():
            # Start at half the step bound, eta = 0.9 max_momentum and alpha = 0.01 max_decay
            # (0.001 at the default: a memory that forgets half of itself in ~700 tokens).
            bias = self.gate_proj.bias.view(3, self.num_heads)
            bias[0].fill_(0.0)
            bias[1].fill_(_inverse_sigmoid(0.9))
            bias[2].fill_(_inverse_sigmoid(0.01))
        if self.conv_init == "induction":
            self._induction_conv_init()

    @torch.no_grad()
    def _induction_conv_init(self) -> None:
        """Per channel c, taps a_c = (1, u, u, ...) with u ~ U(-1, 1): the query conv gives a_c[j]
        to the token j steps back, the key conv gives it to the token j + 1 steps back (never the
        current one), the value conv passes the current token through. A key then sums the
        context *before* its token the way a query sums the context up to its own, so once the
        key and query projections agree, a query retrieves the value of the token that followed
        an earlier occurrence of its context: an induction head from the first step."""
        inner, width = self.num_heads * self.head_dim, self.conv_kernel
        taps = torch.empty(inner, width - 1).uniform_(-1, 1)
        taps[:, 0] = 1.0
        weight = self.conv.weight  # [3 * inner, 1, width]; tap width - 1 is the current token
        weight.zero_()
        weight[:inner, 0, 1:] = taps.flip(1)  # query: tokens t - width + 2 .. t
        weight[inner:2 * inner, 0, :-1] = taps.flip(1)  # key: tokens t - width + 1 .. t - 1
        weight[2 * inner:, 0, -1] = 1.0  # value: token t

    @property
    def memory_depth(self) -> int:
        return len(self.memory_init)

    def init_state(self, batch_size: int) -> NeuralMemoryState:
        """The state before the first token: learned initial weights, zero momentum (at a chunk
        boundary, so the running memory is the boundary memory)."""
        memory = MemoryState.from_initial(list(self.memory_init), batch_size)
        w = self.memory_init[0]
        h, d = self.num_heads, self.head_dim
        pending = PendingTokens(
            w.new_zeros(batch_size, 0, h, d),
            w.new_zeros(batch_size, 0, h, d),
            *(w.new_zeros(batch_size, 0, h, dtype=torch.float32) for _ in range(3)),
        )
        conv = (
            None if self.conv is None else w.new_zeros(batch_size, 3 * h * d, self.conv_kernel - 1)
        )
        return NeuralMemoryState(memory, memory, pending, conv)

    def _check_state(self, state: NeuralMemoryState, batch_size: int) -> None:
        """A state from another batch size or layer config is an error, not a silent mix-up."""
        if state.memory.weights[0].shape[0] != batch_size:
            raise ValueError(
                f"state is for batch size {state.memory.weights[0].shape[0]}, x has {batch_size}"
            )
        inner = 3 * self.num_heads * self.head_dim
        expected = None if self.conv is None else (batch_size, inner, self.conv_kernel - 1)
        got = None if state.conv is None else tuple(state.conv.shape)
        if got != expected:
            raise ValueError(f"state's conv cache is {got}, this layer needs {expected}")
        shapes = [tuple(w.shape) for w in state.memory.weights]
        current = [tuple(w.shape) for w in state.current.weights]
        if current != shapes:
            raise ValueError(f"state's current memory is {current}, its boundary memory {shapes}")
        if state.num_pending >= self.chunk_size:
            raise ValueError(
                f"state holds {state.num_pending} pending tokens, chunk_size is {self.chunk_size}"
            )

    def _project(
        self, x: Tensor, conv_cache: Tensor | None, parts: int
    ) -> tuple[Tensor, Tensor | None]:
        """The first ``parts`` of (q, k, v): projection, causal conv (cache carried), SiLU.

        x: [B, T, hidden] -> [B, T, parts, H, D], and the new conv cache.
        """
        b, t_len, _ = x.shape
        rows = parts * self.num_heads * self.head_dim
        qkv = F.linear(x, self.qkv_proj.weight[:rows])  # [B, T, parts * H * D]
        new_cache = None
        if self.conv is not None:
            padded = torch.cat([conv_cache.to(qkv.dtype), qkv.transpose(1, 2)], dim=-1)
            new_cache = padded[..., padded.shape[-1] - (self.conv_kernel - 1):]
            # Contiguous before the SiLU: its backward on a transposed input takes a strided
            # loop ~8x slower than on the contiguous copy.
            qkv = F.conv1d(padded, self.conv.weight[:rows], groups=rows).transpose(1, 2)
            qkv = qkv.contiguous()
        return F.silu(qkv).view(b, t_len, parts, self.num_heads, self.head_dim), new_cache

    def _qkv(
        self, x: Tensor, conv_cache: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q, k, v [B, T, H, D] with L2-normalised q and k, and the new conv cache."""
        qkv, new_cache = self._project(x, conv_cache, 3)
        q, k, v = qkv.unbind(2)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, new_cache

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head RMSNorm, sigmoid gate from x, output projection: [B, T, H, D] -> hidden."""
        o = self.out_norm(o.to(x.dtype)) * torch.sigmoid(self.out_gate(x)).view_as(o)
        return self.o_proj(o.reshape(*x.shape[:2], -1))

    def retrieve(
        self, x: Tensor, memory: MemoryState, query_conv: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Read the memory at queries from x without writing: ``M*(q)`` (MAC's eq. 21).

        x: [B, T, hidden]; memory: fixed weights [B, H, d_in, d_out] per layer; query_conv: the
        query stream's own conv cache [B, H * D, conv_kernel - 1] (None: start of the stream,
        or no conv). Returns [B, T, hidden] and the query conv cache after x.
        """
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        if query_conv is None and self.conv is not None:
            query_conv = x.new_zeros(x.shape[0], self.num_heads * self.head_dim,
                                     self.conv_kernel - 1)
        q, query_conv = self._project(x, query_conv, 1)
        q = F.normalize(q[:, :, 0], dim=-1).transpose(1, 2)  # [B, H, T, D]
        o = read(q, memory, activation=self.activation, residual_norm=self.residual_norm,
                 norm_weight=self.memory_norm_weight, norm_bias=self.memory_norm_bias)
        return self._output(o.transpose(1, 2), x), query_conv

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """theta in [0, max_lr / chunk_size], eta in [0, max_momentum], alpha in [0, max_decay];
        each [B, T, H], float32."""
        logits = self.gate_proj(x).float().view(*x.shape[:2], 3, self.num_heads)
        lr = self.max_lr / self.chunk_size * torch.sigmoid(logits[..., 0, :])
        eta = self.max_momentum * torch.sigmoid(logits[..., 1, :])
        alpha = self.max_decay * torch.sigmoid(logits[..., 2, :])
        if not self.use_momentum:
            eta = torch.zeros_like(eta)
        if not self.use_decay:
            alpha = torch.zeros_like(alpha)
        return lr, eta, alpha

    def forward(
        self, x: Tensor, state: NeuralMemoryState | None = None
    ) -> tuple[Tensor, NeuralMemoryState]:
        """x: [B, T, hidden_size] -> y: [B, T, hidden_size], and the state after x.

        Feeding a sequence in any split with the returned state gives the same outputs as one
        pass. The memory learns on every call, under ``torch.no_grad()`` and in eval mode too.
        A call that stays inside the open chunk (fewer tokens than it still lacks, e.g. a decode
        step) continues the running memory token by token with memory_recurrent; one that
        closes it replays the chunk's pending tokens with its own through memory_chunked.
        """
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        # x of another dtype (an int tensor, float64 into fp32 weights) would fail deep inside a
        # matmul; under autocast, x may also be of the autocast dtype.
        allowed = {self.qkv_proj.weight.dtype}
        if torch.is_autocast_enabled(x.device.type):
            allowed.add(torch.get_autocast_dtype(x.device.type))
        if x.dtype not in allowed:
            dtypes = " or ".join(map(str, allowed))
            raise ValueError(f"x must be a floating tensor of dtype {dtypes} (the memory's "
                             f"weights, or autocast's), got {x.dtype}")
        b = x.shape[0]
        if state is None:
            state = self.init_state(b)
        else:
            self._check_state(state, b)
        q, k, v, conv_cache = self._qkv(x, state.conv)
        lr, eta, alpha = self.gates(x)
        n_pend = state.num_pending
        # The open chunk's tokens so far, pending and new: (k, v, lr, eta, alpha).
        pending = PendingTokens(*(torch.cat([p.to(t.dtype), t], 1)
                                  for p, t in zip(state.pending, (k, v, lr, eta, alpha),
                                                  strict=True)))
        # The gates come out of bounded activations, so they are in range; a non-finite value
        # means the model diverged, which the training loop reports with its diagnosis.
        kw = dict(activation=self.activation, residual_norm=self.residual_norm,
                  norm_weight=self.memory_norm_weight, norm_bias=self.memory_norm_bias,
                  max_grad_norm=self.max_grad_norm, check_values=False)

        if n_pend + x.shape[1] < self.chunk_size:
            # Still inside the open chunk: the pending tokens' updates are in the running state,
            # so only the new tokens are computed (no replay).
            o, current = memory_recurrent(q, k, v, lr, eta, alpha, state.memory, state.current,
                                          **kw)
            new_state = NeuralMemoryState(state.memory, current, pending, conv_cache)
            return self._output(o, x), new_state

        # The chunk closes: replay its pending tokens (their outputs were given already) with
        # the new ones from the boundary, in whole chunks as one pass would see them.
        k, v, lr, eta, alpha = pending
        q = torch.cat([q.new_zeros(b, n_pend, *q.shape[2:]), q], 1)
        # Whole chunks move the boundary state; the tail is read from it and kept as pending.
        split = (k.shape[1] // self.chunk_size) * self.chunk_size
        kw.update(chunk_size=self.chunk_size, checkpoint_chunks=self.checkpoint_chunks,
                  compile_step=self.compile_step)
        seq = (q, k, v, lr, eta, alpha)
        head, memory = memory_chunked(*(t[:, :split] for t in seq), state.memory, **kw)
        tail, current = memory_chunked(*(t[:, split:] for t in seq), memory, **kw)
        o = torch.cat([head, tail], 1)[:, n_pend:]  # [B, T, H, D]
        pending = pending.map(lambda t: t[:, split:])
        new_state = NeuralMemoryState(memory, current, pending, conv_cache)
        return self._output(o, x), new_state
