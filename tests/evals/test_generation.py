"""generate_text: seeded determinism, temperature 0 is the greedy argmax continuation, stopping at
EOS, only new text returned, empty prompts start from EOS, and errors."""

import pytest
import torch

from titans import TitansConfig, TitansLM
from titans.evals import generate_text

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'ABCDEFGHIJKLMNOPQRSTUVWXYZ012"  # 61 characters


class CharTokenizer:
    """One token per character of ALPHABET (61 ids); ``eos_id`` decodes to nothing, as special
    tokens do in ``titans.data.Tokenizer``."""

    vocab_size = len(ALPHABET)

    def __init__(self, eos_id: int = 60) -> None:
        self.eos_id = eos_id

    def encode(self, text):
        return [ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return "".join(ALPHABET[i] for i in ids if i != self.eos_id)


_MODEL = []


def model():
    """A seeded float64 MAG model with the vocabulary of CharTokenizer, built once."""
    if not _MODEL:
        torch.manual_seed(0)
        cfg = TitansConfig(variant="mag", vocab_size=len(ALPHABET), hidden_size=32,
                           num_hidden_layers=2, num_heads=2, segment_len=12, window_size=7,
                           chunk_size=4, memory_expansion=2, num_persistent_tokens=3)
        _MODEL.append(TitansLM(cfg).double())
    return _MODEL[0]


def greedy(ids, steps, eos_id=None):
    """Argmax continuation by a full forward of the whole sequence at every step."""
    ids = list(ids)
    new = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model()(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == eos_id:
                break
            new.append(nxt)
    return new


def test_same_seed_same_text_and_seeds_differ():
    tok = CharTokenizer()
    texts = [generate_text(model(), tok, "the sea", max_new_tokens=12, temperature=1.0, seed=s)
             for s in (0, 0, 1, 2)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1  # near-uniform tiny model: different seeds, different samples
    # The text is the one model.generate samples with a generator seeded the same way.
    prompt = tok.encode("the sea")
    out = model().generate(torch.tensor([prompt]), 12, temperature=1.0, top_k=50,
                           eos_token_id=tok.eos_id, generator=torch.Generator().manual_seed(0))
    assert texts[0] == tok.decode(out[0, len(prompt):].tolist())


def test_temperature_zero_is_the_greedy_continuation():
    tok = CharTokenizer()
    new = greedy(tok.encode("call me"), 10, tok.eos_id)
    text = generate_text(model(), tok, "call me", max_new_tokens=10, temperature=0, seed=123)
    assert text == tok.decode(new)
    assert len(text) == 10  # nothing of the prompt is returned
    assert generate_text(model(), tok, "call me", max_new_tokens=10, temperature=0.7, top_k=1,
                         seed=5) == text


def test_stops_at_eos():
    """With the first greedy token that is new (in neither the prompt nor the earlier output,
    and not the first) declared EOS, only the tokens before it are returned."""
    prompt = CharTokenizer().encode("ishmael")
    first = greedy(prompt, 10)
    stop = next(j for j in range(1, 10) if first[j] not in first[:j] + list(prompt))
    tok = CharTokenizer(eos_id=first[stop])
    text = generate_text(model(), tok, "ishmael", max_new_tokens=10, temperature=0)
    assert text == tok.decode(first[:stop]) and len(text) == stop


def test_empty_prompt_starts_from_eos():
    tok = CharTokenizer()
    text = generate_text(model(), tok, "", max_new_tokens=8, temperature=0)
    assert text == tok.decode(greedy([tok.eos_id], 8, tok.eos_id))
    assert len(text) == 8
    assert generate_text(model(), tok, "whale", max_new_tokens=0) == ""


def test_errors():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="prompt must be a str"):
        generate_text(model(), tok, ["a"])
    with pytest.raises(ValueError, match="seed must be an int"):
        generate_text(model(), tok, "a", seed=1.5)
    with pytest.raises(ValueError, match="temperature"):
        generate_text(model(), tok, "a", temperature=-1)
    big = CharTokenizer()
    big.vocab_size = 100
    with pytest.raises(ValueError, match="100 tokens but the model only 61"):
        generate_text(model(), big, "a")
