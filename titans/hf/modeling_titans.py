"""``transformers`` models around :class:`TitansLM`: ``from_pretrained``, ``save_pretrained``
and ``generate`` for every Titans variant and baseline.

The recurrent state (memory weights, momentum, conv and attention caches) rides in
:class:`TitansCache`, the object ``generate`` passes from step to step as ``cache``; it holds a
:class:`TitansState` and nothing else. ``generate`` feeds the prompt in one call and then only
the tokens the state has not read, so its output equals :meth:`TitansLM.generate` token for
token. Beam search works (the cache reorders its rows with :meth:`TitansState.select`); what
needs to rewind a memory (assisted or speculative decoding) and padded batches (a pad token
would be written into the memory) are refused with an error that says so.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from titans.hf.configuration_titans import TitansHFConfig
from titans.models.lm import TitansLM, TitansState


class TitansCache:
    """``generate``'s cache for a Titans model: the :class:`TitansState` after the tokens read
    so far (None before the first call), reordered for beam search and expanded for several
    sequences per prompt."""

    is_compileable = False  # generate asks before it considers compiling the decoding step

    def __init__(self, state: TitansState | None = None) -> None:
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens read so far."""
        return 0 if self.state is None else self.state.position

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep (and reorder) the rows ``indices`` [N]."""
        if self.state is not None:
            self.state = self.state.select(indices)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search: row i continues the beam ``beam_idx[i]``."""
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row (several sequences per prompt)."""
        if self.state is not None:
            rows = torch.arange(self.state.batch_size).repeat_interleave(repeats)
            self.batch_select_indices(rows)

    def crop(self, max_length: int) -> None:
        raise ValueError("a Titans cache cannot be rewound: the memory has already learnt from "
                         "the tokens to drop (assisted / speculative decoding is not supported)")


def _check_unpadded(attention_mask: Tensor | None) -> None:
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("attention_mask has padding: a Titans memory would learn from the pad "
                         "tokens (its state is not masked). Generate or score rows of different "
                         "lengths one at a time (or group rows of equal length)")


class TitansPreTrainedModel(PreTrainedModel):
    """Loading, saving and the weights of a wrapped :class:`TitansLM` (``self.model``)."""

    config_class = TitansHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["TitansBlock"]
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "model.lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TitansHFConfig) -> None:
        super().__init__(config)
        self.model = TitansLM(config.to_titans())
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> TitansPreTrainedModel:
        """``PreTrainedModel.from_pretrained``, with CPU weights copied into storage of their own.

        Loaded tensors can sit at any byte offset of the file; CPU kernels take other SIMD paths
        for unaligned data and round differently (~1e-7), so the copy is what makes the logits
        bitwise those of the model that was saved."""
        model = super().from_pretrained(*args, **kwargs)
        with torch.no_grad():
            for param in model.parameters():
                if param.device.type == "cpu":
                    param.data = param.data.clone()
        return model

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: :class:`TitansLM` initialises its weights when it is built (the
        residual-projection scaling depends on the whole model), and loading overwrites them."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.embed_tokens = value

    @staticmethod
    def _check_inputs(input_ids: Tensor | None, inputs_embeds: Tensor | None,
                      attention_mask: Tensor | None) -> Tensor:
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported: pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is required")
        _check_unpadded(attention_mask)
        return input_ids


class TitansModel(TitansPreTrainedModel):
    """The Titans stack without the LM head's output: ``last_hidden_state`` [B, T, hidden] (after
    the final norm) and the ``cache`` to continue from."""

    def forward(
        self,
        input_ids: Tensor | None = None,
        cache: TitansCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        input_ids = self._check_inputs(input_ids, inputs_embeds, attention_mask)
        state = None if cache is None else cache.state
        hidden, state = self.model.hidden_states(input_ids, state)
        return BaseModelOutputWithPast(last_hidden_state=hidden,
                                       cache=_next_cache(cache, state, use_cache, self.config))


def _next_cache(cache: TitansCache | None, state: TitansState, use_cache: bool | None,
                config: TitansHFConfig) -> TitansCache | None:
    """The cache to return: the caller's, advanced (generate keeps using its object), or a new
    one, unless caching is off."""
    if not (config.use_cache if use_cache is None else use_cache):
        return None
    cache = cache if cache is not None else TitansCache()
    cache.state = state
    return cache


class TitansForCausalLM(TitansPreTrainedModel, GenerationMixin):
    """A Titans causal LM for ``transformers``: logits [B, T, V] (or the last
    ``logits_to_keep``), the loss of ``labels`` (as in the library: labels[:, t + 1] predicted
    at t, -100 ignored), and ``generate`` with the state carried in :class:`TitansCache`."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state is a TitansCache, not attention key/value layers

    def forward(
        self,
        input_ids: Tensor | None = None,
        cache: TitansCache | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        input_ids = self._check_inputs(input_ids, inputs_embeds, attention_mask)
        out = self.model(input_ids, None if cache is None else cache.state, labels=labels,
                         logits_to_keep=logits_to_keep)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits,
                                      cache=_next_cache(cache, out.state, use_cache, self.config))

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: TitansCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The tokens the state has not read yet: the whole prompt first, then the newest."""
        _check_unpadded(attention_mask)
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        inputs: dict[str, Any] = {"input_ids": input_ids, "cache": cache, "use_cache": use_cache}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs
