"""``TitansLM``: embeddings, a stack of Titans (or baseline) blocks, RMSNorm, LM head.

The model is a function of (tokens, state) -> (logits, state): ``state`` carries every layer's
memory weights and momentum, conv caches, the bounded attention caches and the stream position,
so a sequence fed in any split gives the logits of one pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.checks import check_int, check_number
from titans.layers.norm import RMSNorm
from titans.layers.tags import is_residual_projection, mark_no_weight_decay
from titans.models.blocks import LayerState, TitansBlock
from titans.models.config import TitansConfig

IGNORE_INDEX = -100  # a label the loss skips (cross_entropy's default ignore_index)


def _select_rows(obj: Any, rows: Tensor) -> Any:
    """``obj`` (a nested state of dataclasses, lists and tuples) with every batched tensor
    indexed along its first (batch) dimension by ``rows``; a dataclass names the fields its rows
    share (e.g. a KV cache's sequence indices) in ``SHARED_FIELDS``, kept as they are."""
    if isinstance(obj, Tensor):
        return obj.index_select(0, rows)
    if dataclasses.is_dataclass(obj):
        shared = getattr(obj, "SHARED_FIELDS", ())
        return dataclasses.replace(obj, **{
            f.name: _select_rows(getattr(obj, f.name), rows)
            for f in dataclasses.fields(obj) if f.init and f.name not in shared
        })
    if isinstance(obj, list):
        return [_select_rows(item, rows) for item in obj]
    if isinstance(obj, tuple):  # a NamedTuple is rebuilt from its fields
        items = [_select_rows(item, rows) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj  # None, numbers


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor inside a (nested) state of dataclasses, lists and tuples."""
    if isinstance(obj, Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, field.name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


@dataclass
class TitansState:
    """Everything needed to continue a stream: one state per layer, the tokens consumed, and
    the config of the model that made it (a state fits only a model of that config: checked by
    :meth:`TitansLM.forward` by comparing configs, which costs no device sync)."""

    layers: list[LayerState]
    position: int
    batch_size: int
    config: TitansConfig

    def detach(self) -> TitansState:
        """Cut the autograd graph (truncated back-propagation through time)."""
        return TitansState([s.detach() for s in self.layers], self.position, self.batch_size,
                           self.config)

    def select(self, rows: Tensor | list[int]) -> TitansState:
        """The state of the streams ``rows`` (int indices into the batch, repeats allowed): e.g.
        ``[0, 0, 0]`` continues one stream three ways (the choices of a question), and a beam
        search reorders its beams with it. The position is shared by all rows."""
        layers = self.layers
        device = next(_tensors(layers)).device
        rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        if rows.dim() != 1:
            raise ValueError(f"rows must be 1-d integer indices, got shape {tuple(rows.shape)}")
        if rows.numel() and (int(rows.min()) < 0
                             or int(rows.max()) >= self.batch_size):
            raise ValueError(f"rows must lie in [0, {self.batch_size}), got "
                             f"[{int(rows.min())}, {int(rows.max())}]")
        return TitansState(_select_rows(layers, rows), self.position, rows.numel(), self.config)

    def num_bytes(self) -> int:
        """Memory held by the state's tensors (constant in ``position`` except for the
        full-attention baseline, whose KV cache grows)."""
        return sum(t.numel() * t.element_size() for t in _tensors(self.layers))


@dataclass
class TitansOutput:
    """logits: [B, T, V] (or the last ``logits_to_keep`` positions; None with
    ``return_logits=False``); loss: mean next-token cross-entropy if labels were given; state:
    the state after the input."""

    logits: Tensor | None
    loss: Tensor | None
    state: TitansState


class TitansLM(nn.Module):
    """A causal language model of any Titans variant or baseline (see :class:`TitansConfig`)."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        if not isinstance(config, TitansConfig):
            raise ValueError(f"config must be a TitansConfig, got {type(config).__name__}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        mark_no_weight_decay(self.embed_tokens.weight)  # also the LM head when tied
        self.layers = nn.ModuleList(TitansBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self) -> None:
        """GPT-2-style: N(0, 0.02) for linear and embedding weights, projections that write
        into the residual stream (tagged by their layers, see ``titans.layers.tags``) scaled by
        1/sqrt(2 * layers). Biases, memory initial weights, convs and persistent tokens keep
        their own initialisation."""
        std = self.config.initializer_range
        residual_scale = 1 / math.sqrt(2 * self.config.num_hidden_layers)
        nn.init.normal_(self.embed_tokens.weight, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                scale = residual_scale if is_residual_projection(module) else 1.0
                nn.init.normal_(module.weight, std=std * scale)

    def init_state(self, batch_size: int) -> TitansState:
        """The state before the first token (MAG and MAL memories have read the persistent
        tokens)."""
        return TitansState([layer.init_state(batch_size) for layer in self.layers], 0, batch_size,
                           self.config)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters; ``exclude_embeddings`` drops the token embedding and an
        untied LM head."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.embed_tokens.weight), None)
            params.pop(id(self.lm_head.weight), None)
        return sum(p.numel() for p in params.values())

    def forward(
        self,
        input_ids: Tensor,
        state: TitansState | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
    ) -> TitansOutput:
        """input_ids: [B, T] token ids; state: from an earlier call (None: a new stream).

        labels: [B, T] ids aligned with input_ids (usually input_ids itself); the loss predicts
        labels[:, t + 1] from position t, ignoring -100. logits_to_keep: compute logits only for
        the last this many positions (0 = all). return_logits=False (with labels): run the LM
        head only where a label is scored and return no logits; the same loss, much cheaper when
        few positions are scored (e.g. only answers) since the head is a large share of the work.
        """
        self._check_input_ids(input_ids)
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match input_ids")
        if labels is not None and logits_to_keep:
            raise ValueError("labels need the logits of every position: use logits_to_keep=0")
        if not return_logits and labels is None:
            raise ValueError("return_logits=False only makes sense with labels (for the loss)")
        if labels is not None and labels.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels is not None and input_ids.shape[1] < 2:
            raise ValueError(f"labels need at least 2 tokens (position t predicts t + 1), got "
                             f"{input_ids.shape[1]}: the loss would be the mean of nothing (NaN)")
        if labels is not None and not torch.compiler.is_compiling():
            scored = labels[labels != IGNORE_INDEX]
            if scored.numel() and (int(scored.min()) < 0
                                   or int(scored.max()) >= self.config.vocab_size):
                raise ValueError(f"labels must be {IGNORE_INDEX} (not scored) or lie in [0, "
                                 f"{self.config.vocab_size}), got [{int(scored.min())}, "
                                 f"{int(scored.max())}]")
        check_int("logits_to_keep", logits_to_keep, 0)
        x, new_state = self._run(input_ids, state)
        logits, loss = None, None
        if return_logits:
            logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        if labels is not None:
            # Position t predicts labels[:, t + 1]; the last position has no target. Padding the
            # targets (not slicing the logits) keeps the [B * T, V] scores a view: a slice would
            # be copied here and again, zero-filled at full size, in the backward pass.
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).flatten()
            if logits is not None:
                scores = logits.flatten(0, 1)
            else:
                scored = targets != IGNORE_INDEX
                scores, targets = self.lm_head(x.flatten(0, 1)[scored]), targets[scored]
            loss = F.cross_entropy(scores.float(), targets, ignore_index=IGNORE_INDEX)
        return TitansOutput(logits, loss, new_state)

    def hidden_states(
        self, input_ids: Tensor, state: TitansState | None = None
    ) -> tuple[Tensor, TitansState]:
        """input_ids [B, T], state (None: a new stream) -> (the final-norm hidden states
        [B, T, hidden] that the LM head reads, the state after the input)."""
        self._check_input_ids(input_ids)
        return self._run(input_ids, state)

    def _check_input_ids(self, input_ids: Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"input_ids must be an integer tensor [B, T], got {input_ids.dtype} "
                f"{tuple(input_ids.shape)}"
            )
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids has no tokens (T = 0)")
        # The range checks read values back from the device, which torch.compile cannot trace
        # (a graph break per call): compiled training skips them.
        checking = not torch.compiler.is_compiling()
        if checking and input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size
        ):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    def _run(self, input_ids: Tensor, state: TitansState | None) -> tuple[Tensor, TitansState]:
        b, t_len = input_ids.shape
        if state is None:
            state = self.init_state(b)
        else:
            self.check_state(state, b)

        x = self.embed_tokens(input_ids)
        layer_states = []
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            x, layer_state = layer(x, state.position, layer_state)
            layer_states.append(layer_state)
        x = self.norm(x)
        return x, TitansState(layer_states, state.position + t_len, b, self.config)

    def check_state(self, state: TitansState, batch_size: int) -> None:
        """``ValueError`` unless ``state`` can continue a stream of ``batch_size`` rows in this
        model: made by a model of the same config, for that batch size, at a position >= 0."""
        if not isinstance(state, TitansState):
            raise ValueError(f"state must be a TitansState, got {type(state).__name__}")
        if state.config != self.config:
            theirs, ours = state.config.to_dict(), self.config.to_dict()
            diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
            raise ValueError(f"state was made by a model of another config (field: (state's, "
                             f"this model's)): {diff}")
        if state.batch_size != batch_size:
            raise ValueError(f"state is for batch size {state.batch_size}, input_ids has "
                             f"{batch_size}")
        check_int("state.position", state.position, 0)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        state: TitansState | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample a continuation: [B, T] -> [B, T + n], n <= max_new_tokens.

        The prompt is read in one pass, then one token per step with the carried state (the
        memory keeps learning from the prompt and from its own output), under
        ``torch.no_grad()`` rather than inference mode so the ids stay usable in autograd.
        temperature 0 is greedy;
        top_k / top_p restrict sampling to the k most likely tokens / the smallest set with
        probability >= top_p. Sequences that produced ``eos_token_id`` are padded with it, and
        generation stops when all have.
        """
        check_int("max_new_tokens", max_new_tokens, 0)
        check_number("temperature", temperature, ">= 0", lambda t: t >= 0)
        check_int("top_k", top_k, 1, optional=True)
        check_number("top_p", top_p, "in (0, 1]", lambda p: 0 < p <= 1, optional=True)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got {tuple(input_ids.shape)}")
        tokens = [input_ids]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        out = self(input_ids, state, logits_to_keep=1)
        for step in range(max_new_tokens):
            nxt = sample_next_token(out.logits[:, -1], temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, eos_token_id, nxt)
                done |= nxt == eos_token_id
            tokens.append(nxt[:, None])
            if step + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
                break
            out = self(nxt[:, None], out.state, logits_to_keep=1)
        return torch.cat(tokens, 1)


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """logits [B, V] -> token ids [B]: greedy at temperature 0, else sampled (top-k, top-p)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
