"""The Titans blocks (paper §4) and the baselines, as Llama-style pre-norm residual blocks.

Every block is ``x + mixer(norm(x))`` followed by ``x + SwiGLU(norm(x))``; variants differ only in
the token mixer:

* ``mac``  memory as context (eqs. 21-25): per segment, retrieve ``h = M*_{t-1}(q)``, attend over
  ``[persistent || h || segment]``, write the attention output ``y`` into the memory, and gate
  ``y`` with a read of the memory updated up to each position.
* ``mag``  memory as gate (26-28): sliding-window attention with a persistent prefix, gated with
  the memory that reads ``[persistent || x]``.
* ``mal``  memory as layer (29-31): the memory reads ``[persistent || x]``, sliding-window
  attention runs on its output.
* ``lmm``  the memory alone; ``transformer`` full causal attention; ``swa`` sliding window.

Mixers take the stream position of their first token and an explicit state, and return the new
state: a sequence gives the same outputs in one call or in any split.

Each variant is declared once, as a :class:`VariantSpec` registered with
:func:`register_variant`: its mixer and the traits the rest of the package asks about (config
validation, default persistent tokens, the attention window, evaluation limits). A new variant is
a mixer and one ``register_variant`` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from titans.checks import check_choice
from titans.layers.attention import Attention, KVCache
from titans.layers.memory import NeuralMemory, NeuralMemoryState
from titans.layers.mlp import SwiGLU
from titans.layers.norm import RMSNorm
from titans.layers.tags import mark_no_weight_decay
from titans.ops import MemoryState

if TYPE_CHECKING:
    from titans.models.config import TitansConfig


@dataclass
class MACState:
    """memory: the running memory, written with every attention output so far.
    segment_memory: the memory at the start of the current segment (read for h).
    query_conv: conv cache of the retrieval queries, which run over x rather than y.
    kv: keys and values of ``[h || x]`` of the current segment (at most 2 * (segment_len - 1)).
    """

    memory: NeuralMemoryState
    segment_memory: MemoryState
    query_conv: Tensor | None
    kv: KVCache

    def detach(self) -> MACState:
        return MACState(
            self.memory.detach(), self.segment_memory.detach(),
            None if self.query_conv is None else self.query_conv.detach(), self.kv.detach(),
        )


@dataclass
class HybridState:
    """State of MAG and MAL: the memory and the sliding-window cache (at most window - 1)."""

    memory: NeuralMemoryState
    kv: KVCache

    def detach(self) -> HybridState:
        return HybridState(self.memory.detach(), self.kv.detach())


class LayerState(Protocol):
    """What a block carries between calls: whatever its mixer's ``init_state`` returns (a
    dataclass of tensors, so ``TitansState.num_bytes`` can find them), able to cut its autograd
    graph for truncated back-propagation through time."""

    def detach(self) -> LayerState: ...


@dataclass(frozen=True)
class VariantSpec:
    """A variant of the model: its token mixer and its traits, declared once.

    name: the value of ``TitansConfig.variant``.
    mixer: builds the token mixer of one block from the config: a module with
        ``init_state(batch_size) -> state`` and ``forward(x, start, state) -> (out, state)``,
        x and out [B, T, hidden], start the stream position of x[:, 0], the state a
        :class:`LayerState`.
    description: a few words for help texts.
    has_memory: the mixer holds a neural memory (``TitansConfig.has_memory``).
    persistent_tokens: the mixer takes learned persistent tokens (``num_persistent_tokens``
        defaults to 16); other variants must have none.
    sliding_window: the attention sees the ``window_size`` most recent tokens; otherwise all the
        tokens it is given (MAC's attention sees its segment).
    segmented: the mixer works in segments of ``segment_len`` tokens, each writing whole memory
        chunks (``chunk_size`` must divide ``segment_len``).
    state_grows: the state grows with the stream (full attention's KV cache); every other
        variant's state is bounded.
    """

    name: str
    mixer: Callable[[TitansConfig], nn.Module]
    description: str
    has_memory: bool = False
    persistent_tokens: bool = False
    sliding_window: bool = False
    segmented: bool = False
    state_grows: bool = False


_REGISTRY: dict[str, VariantSpec] = {}
# The registered variants by name, in registration order (a read-only view that follows
# register_variant and unregister_variant).
VARIANTS: Mapping[str, VariantSpec] = MappingProxyType(_REGISTRY)


def register_variant(spec: VariantSpec) -> VariantSpec:
    """Make ``spec.name`` a valid ``TitansConfig.variant``; a name already taken raises."""
    if not isinstance(spec.name, str) or not spec.name:
        raise ValueError(f"a variant's name must be a non-empty str, got {spec.name!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"variant {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_variant(name: str) -> None:
    """Remove a registered variant (e.g. one a test added); an unknown name raises."""
    variant_spec(name)
    del _REGISTRY[name]


def variant_spec(name: str) -> VariantSpec:
    """The spec of the registered variant ``name``; any other value raises ``ValueError``."""
    check_choice("variant", name, tuple(_REGISTRY))
    return _REGISTRY[name]


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every tensor inside a (nested) state of dataclasses, lists and tuples."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, (list, tuple)):
        items = [_map_tensors(item, fn) for item in obj]
        # A NamedTuple takes its fields as arguments, a list or plain tuple one iterable.
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def _positions(start: int, length: int, device: torch.device) -> Tensor:
    return torch.arange(start, start + length, device=device)


def _memory(cfg: TitansConfig) -> NeuralMemory:
    """The block's neural memory; its run-time knobs (checkpointing, compilation) keep the
    layer's defaults until :func:`titans.runtime.apply_runtime` sets them."""
    return NeuralMemory(
        cfg.hidden_size, cfg.memory_num_heads, cfg.memory_head_dim,
        memory_depth=cfg.memory_depth, memory_expansion=cfg.memory_expansion,
        chunk_size=cfg.chunk_size, activation=cfg.memory_activation,
        residual_norm=cfg.memory_residual_norm, max_lr=cfg.memory_max_lr,
        max_momentum=cfg.memory_max_momentum, max_decay=cfg.memory_max_decay,
        max_grad_norm=cfg.memory_max_grad_norm,
        use_momentum=cfg.use_momentum, use_decay=cfg.use_decay, conv_kernel=cfg.conv_kernel,
        conv_init=cfg.memory_conv_init,
    )


def _attention(cfg: TitansConfig) -> Attention:
    """The variant's attention: over the last ``window_size`` tokens if it has a sliding window,
    else over every token it is given (block size: see :mod:`titans.runtime`)."""
    window = cfg.window_size if variant_spec(cfg.variant).sliding_window else None
    return Attention(cfg.hidden_size, cfg.num_heads, cfg.head_dim, window=window,
                     rope_theta=cfg.rope_theta)


class OutputGate(nn.Module):
    """The non-linear gate ``y (x) m`` of MAG (eq. 28) and MAC (eq. 25): both branches are
    normalised with learnable weights, then ``RMSNorm(y) * sigmoid(RMSNorm(m))``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.y_norm = RMSNorm(hidden_size, eps=eps)
        self.m_norm = RMSNorm(hidden_size, eps=eps)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        return self.y_norm(y) * torch.sigmoid(self.m_norm(m))


class AttentionMixer(nn.Module):
    """Transformer++ (full causal) or SWA baseline (the variant's ``sliding_window``); the
    state is the KV cache."""

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.attn = _attention(cfg)

    def init_state(self, batch_size: int) -> KVCache:
        return self.attn.empty_cache(batch_size, self.attn.q_proj.weight)

    def forward(self, x: Tensor, start: int, state: KVCache) -> tuple[Tensor, KVCache]:
        return self.attn(x, _positions(start, x.shape[1], x.device), state)


class MemoryMixer(nn.Module):
    """LMM: the neural memory as the whole sequence model."""

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.memory = _memory(cfg)

    def init_state(self, batch_size: int) -> NeuralMemoryState:
        return self.memory.init_state(batch_size)

    def forward(
        self, x: Tensor, start: int, state: NeuralMemoryState
    ) -> tuple[Tensor, NeuralMemoryState]:
        return self.memory(x, state)


class _PersistentMixin(nn.Module):
    """Learned persistent tokens [N_p, hidden] (eq. 19); MAG and MAL also prime their memory
    with them at the start of the stream."""

    persistent: nn.Parameter
    memory: NeuralMemory

    def _init_persistent(self, cfg: TitansConfig) -> None:
        # Tokens live in the normalised input space of the mixer, where tokens have unit RMS.
        self.persistent = nn.Parameter(torch.randn(cfg.num_persistent_tokens, cfg.hidden_size))
        mark_no_weight_decay(self.persistent)  # learned input tokens, like embeddings

    def _primed_memory(self, batch_size: int) -> NeuralMemoryState:
        """The memory after reading the persistent prefix: ``M([p || ...])`` starts here.

        Every sequence reads the same prefix from the same initial memory, so the prefix is read
        once and the resulting state broadcast over the batch (as the initial weights are).
        """
        if self.persistent.shape[0] == 0:
            return self.memory.init_state(batch_size)
        _, state = self.memory(self.persistent[None], self.memory.init_state(1))
        return _map_tensors(state, lambda t: t.expand(batch_size, *t.shape[1:]))


class MAGMixer(_PersistentMixin):
    """``o = SW-Attn*([p || x]) (x) M([p || x])`` (eqs. 26-28)."""

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self._init_persistent(cfg)
        self.attn = _attention(cfg)
        self.memory = _memory(cfg)
        self.gate = OutputGate(cfg.hidden_size, cfg.rms_norm_eps)

    def init_state(self, batch_size: int) -> HybridState:
        return HybridState(
            self._primed_memory(batch_size),
            self.attn.empty_cache(batch_size, self.attn.q_proj.weight),
        )

    def forward(self, x: Tensor, start: int, state: HybridState) -> tuple[Tensor, HybridState]:
        index = _positions(start, x.shape[1], x.device)
        y, kv = self.attn(x, index, state.kv, prefix=self.persistent)
        m, memory = self.memory(x, state.memory)
        return self.gate(y, m), HybridState(memory, kv)


class MALMixer(_PersistentMixin):
    """``o = SW-Attn(M([p || x]))`` (eqs. 29-31); outputs at the persistent positions are not
    part of the sequence, so the attention sees the memory's outputs for x only.

    By default (``mal_memory_skip``) the output is ``y + SW-Attn(y)`` for ``y = M([p || x])``:
    what the memory retrieves at a token also reaches the stream directly. Read literally
    (``mal_memory_skip=False``), it reaches the stream only through the attention, which at
    initialisation spreads it over the window (a token's share of its own output is ~1/window),
    and MAL trained that way learned no retrieval (docs/long-context.md).
    """

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.memory_skip = cfg.mal_memory_skip
        self._init_persistent(cfg)
        self.memory = _memory(cfg)
        self.attn = _attention(cfg)

    def init_state(self, batch_size: int) -> HybridState:
        return HybridState(
            self._primed_memory(batch_size),
            self.attn.empty_cache(batch_size, self.attn.q_proj.weight),
        )

    def forward(self, x: Tensor, start: int, state: HybridState) -> tuple[Tensor, HybridState]:
        y, memory = self.memory(x, state.memory)
        o, kv = self.attn(y, _positions(start, x.shape[1], x.device), state.kv)
        return (y + o if self.memory_skip else o), HybridState(memory, kv)


# What MAC's memory learns from (TitansConfig.mac_memory_input).
MAC_MEMORY_INPUTS = ("attention", "residual")


class MACMixer(_PersistentMixin):
    """Memory as context (eqs. 21-25), one segment of ``segment_len`` tokens at a time.

    For a segment S with memory M_{t-1} left by earlier segments:
    ``h = M*_{t-1}(S W_Q)``; ``y = Attn([p || h || S])`` with queries from S, p visible to all
    and h, S causal (token i sees h_j, x_j for j <= i, because h_j is computed from x_j);
    the memory learns from y token by token (``M_t = M_{t-1}(y)``) and ``o = y (x) M*(y)``
    where each position reads the memory updated up to itself. RoPE positions restart in every
    segment: the attention window is the segment.

    By default (``mac_memory_input="residual"``) the memory learns from (and the gate reads)
    ``x + y`` rather than ``y`` (``"attention"``, the equations read literally): at
    initialisation attention averages its segment, so the y of different tokens are nearly
    parallel (mean key cosine ~0.7 against ~0.02 for x), a memory written with them cannot tell
    tokens apart, and MAC trained that way learned no retrieval (docs/long-context.md).
    """

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.segment_len = cfg.segment_len
        self.residual_input = cfg.mac_memory_input == "residual"
        self._init_persistent(cfg)
        self.attn = _attention(cfg)
        self.memory = _memory(cfg)
        self.gate = OutputGate(cfg.hidden_size, cfg.rms_norm_eps)

    def init_state(self, batch_size: int) -> MACState:
        memory = self.memory.init_state(batch_size)
        return MACState(memory, memory.memory, None,
                        self.attn.empty_cache(batch_size, self.attn.q_proj.weight))

    def forward(self, x: Tensor, start: int, state: MACState) -> tuple[Tensor, MACState]:
        sizes, pos, end = [], start, start + x.shape[1]
        while pos < end:
            sizes.append(min(self.segment_len - pos % self.segment_len, end - pos))
            pos += sizes[-1]
        outs, pos = [], start
        # One split rather than a slice per segment: a slice's backward writes its gradient into
        # a zero-filled copy of the whole of x, once per segment.
        for xs in x.split(sizes, 1):
            offset, n = pos % self.segment_len, xs.shape[1]
            h, query_conv = self.memory.retrieve(xs, state.segment_memory, state.query_conv)
            index = _positions(offset, n, x.device)
            y, kv = self.attn(xs, index, state.kv, context=h, prefix=self.persistent)
            m, memory = self.memory(xs + y if self.residual_input else y, state.memory)
            outs.append(self.gate(y, m))
            if offset + n == self.segment_len:
                # Segment done. The memory has consumed whole chunks (chunk_size divides
                # segment_len), so its boundary weights are the M_t the next segment reads;
                # the attention context restarts.
                state = MACState(memory, memory.memory, query_conv,
                                 self.attn.empty_cache(x.shape[0], x))
            else:
                state = MACState(memory, state.segment_memory, query_conv, kv)
            pos += n
        out = torch.cat(outs, 1) if outs else x.new_zeros(x.shape)
        return out, state


register_variant(VariantSpec("mac", MACMixer, "memory as context", has_memory=True,
                             persistent_tokens=True, segmented=True))
register_variant(VariantSpec("mag", MAGMixer, "memory as gate", has_memory=True,
                             persistent_tokens=True, sliding_window=True))
register_variant(VariantSpec("mal", MALMixer, "memory as layer", has_memory=True,
                             persistent_tokens=True, sliding_window=True))
register_variant(VariantSpec("lmm", MemoryMixer, "the neural memory alone", has_memory=True))
register_variant(VariantSpec("transformer", AttentionMixer,
                             "Transformer++, full causal attention", state_grows=True))
register_variant(VariantSpec("swa", AttentionMixer, "sliding-window attention",
                             sliding_window=True))


class TitansBlock(nn.Module):
    """``x + mixer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``."""

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mixer = variant_spec(cfg.variant).mixer(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def init_state(self, batch_size: int) -> LayerState:
        return self.mixer.init_state(batch_size)

    def forward(self, x: Tensor, start: int, state: LayerState) -> tuple[Tensor, LayerState]:
        """x: [B, T, hidden], start: stream position of x[:, 0] -> ([B, T, hidden], state)."""
        h, state = self.mixer(self.mixer_norm(x), start, state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state
