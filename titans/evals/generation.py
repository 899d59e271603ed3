"""Text in, text out: sample a continuation of a prompt with a tokenizer and a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from titans.checks import check_int
from titans.models.lm import TitansLM


class TextTokenizer(Protocol):
    """What :func:`generate_text` needs of a tokenizer (``titans.data.Tokenizer`` has it)."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def generate_text(
    model: TitansLM,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens and return only the new text.

    The prompt's ids [1, T] are read in one pass, then tokens are sampled one at a time with
    :meth:`TitansLM.generate` (temperature 0 = greedy; ``top_k`` / ``top_p`` as there), drawing
    from a ``torch.Generator`` seeded with ``seed``, so the same arguments give the same text.
    Generation stops at ``tokenizer.eos_id``, which is not part of the result.

    An empty prompt (one that encodes to no tokens) is replaced by the single token
    ``tokenizer.eos_id``: documents are separated by EOS in the packed training stream, so EOS is
    the context that precedes the start of a document (unconditional sampling).

    The new text is ``decode(prompt_ids + new_ids)`` minus the prefix ``decode(prompt_ids)``,
    so a SentencePiece-style tokenizer keeps the space that starts the continuation (decoding the
    new ids alone would drop it); if the decoded prompt is not a prefix, ``decode(new_ids)``.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    check_int("seed", seed)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}: they do not belong together"
        )
    prompt_ids = list(tokenizer.encode(prompt)) or [tokenizer.eos_id]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_token_id=tokenizer.eos_id, generator=generator)
    new_ids = out[0, len(prompt_ids):].tolist()
    if tokenizer.eos_id in new_ids:
        new_ids = new_ids[:new_ids.index(tokenizer.eos_id)]
    prefix = tokenizer.decode(prompt_ids)
    text = tokenizer.decode(prompt_ids + new_ids)
    return text[len(prefix):] if text.startswith(prefix) else tokenizer.decode(new_ids)
