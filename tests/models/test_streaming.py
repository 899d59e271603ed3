"""stream / stream_losses: piecewise streaming equals one full forward for every input form,
piece bookkeeping, continuing from a state, usable states, errors and bounded memory."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from titans import RuntimeConfig, TitansConfig, TitansLM, apply_runtime, stream, stream_losses

N = 40  # crosses several MAC segments (12), attention windows (7) and memory chunks (4)
VOCAB = 61


def config(variant, **overrides):
    """The small config of tests/models/test_lm.py."""
    values = dict(variant=variant, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_heads=2, segment_len=12, window_size=7, chunk_size=4,
                  memory_expansion=2)
    if variant in ("mac", "mag", "mal"):
        values["num_persistent_tokens"] = 3
    return TitansConfig(**{**values, **overrides})


_MODELS = {}


def model_for(variant, dtype=torch.float64):
    """A seeded model per (variant, dtype), built once (streaming never changes parameters)."""
    key = (variant, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        # Attention blocks of 5 queries, as in tests/models/test_lm.py.
        _MODELS[key] = apply_runtime(TitansLM(config(variant)).to(dtype),
                                     RuntimeConfig(attention_block_size=5))
    return _MODELS[key]


def token_ids(batch=1, n=N, seed=1):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def full_losses(model, ids):
    """Per-token next-token cross-entropy of one full forward: [B, N - 1]."""
    logits = model(ids).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")


def assert_close(got, expected, atol=1e-10):
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=atol)


# ---------------------------------------------------------------- equivalence with one pass


def test_reference_losses_match_the_models_mean_loss():
    """The per-token reference used below averages to the model's own labels loss."""
    model = model_for("mac")
    ids = token_ids()
    out = model(ids, labels=ids)
    torch.testing.assert_close(full_losses(model, ids).mean().float(), out.loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("variant", ["mac", "mag", "swa", "lmm"])
@pytest.mark.parametrize("piece_len", [1, 7, N - 1, N, N + 5])
def test_stream_losses_equal_one_full_forward(variant, piece_len):
    """stream_losses over a 1-D tensor == per-token cross-entropy of one forward (float64)."""
    model = model_for(variant)
    ids = token_ids()
    got = stream_losses(model, ids[0], piece_len)
    assert_close(got, full_losses(model, ids))


@pytest.mark.parametrize("variant", ["mac", "lmm"])
def test_stream_losses_of_a_batch_match_per_row(variant):
    """A [2, N] tensor streams both rows side by side; each row equals its own full pass."""
    model = model_for(variant)
    ids = token_ids(batch=2)
    got = stream_losses(model, ids, 7)
    assert got.shape == (2, N - 1)
    assert_close(got, full_losses(model, ids))
    for row in range(2):
        assert_close(got[row:row + 1], full_losses(model, ids[row:row + 1]))
    assert (got[0] - got[1]).abs().max() > 1e-3  # the rows really are different streams


@pytest.mark.parametrize("piece_len", [1, 7, N + 5])
def test_stream_losses_from_an_iterator_of_ints(piece_len):
    """A Python iterator of ints gives the losses of the full pass."""
    model = model_for("mag")
    ids = token_ids()
    got = stream_losses(model, iter(ids[0].tolist()), piece_len)
    assert_close(got, full_losses(model, ids))


@pytest.mark.parametrize("piece_len", [4, 7, 16])
def test_stream_losses_from_a_generator_of_uneven_blocks(piece_len):
    """A generator of 1-D and [1, m] tensor blocks of uneven sizes gives the full-pass losses."""
    model = model_for("mac")
    ids = token_ids()
    sizes = [1, 5, 2, 9, 3, 11, 9]
    assert sum(sizes) == N

    def blocks():
        a = 0
        for i, size in enumerate(sizes):
            block = ids[0, a:a + size]
            yield block if i % 2 else block[None]
            a += size

    got = stream_losses(model, blocks(), piece_len)
    assert_close(got, full_losses(model, ids))


@pytest.mark.parametrize("variant", ["mac", "swa"])
@pytest.mark.parametrize("piece_len", [5, 12, 13])
def test_stream_pieces_logits_starts_and_losses(variant, piece_len):
    """Pieces: concatenated logits and input_ids == one forward; start = 0, p, 2p, ...; losses
    have n columns (n - 1 for the last piece) and equal the full pass's slice; state.position
    counts the tokens read."""
    model = model_for(variant)
    ids = token_ids()
    full_logits = model(ids).logits
    reference = full_losses(model, ids)
    pieces = list(stream(model, ids, piece_len, logits=True))
    assert len(pieces) == -(-N // piece_len)
    assert [p.start for p in pieces] == list(range(0, N, piece_len))
    assert torch.equal(torch.cat([p.input_ids for p in pieces], 1), ids)
    assert_close(torch.cat([p.logits for p in pieces], 1), full_logits)
    for i, p in enumerate(pieces):
        n = p.input_ids.shape[1]
        assert n == min(piece_len, N - p.start)
        assert p.losses.shape == (1, n - 1 if i == len(pieces) - 1 else n)
        assert_close(p.losses, reference[:, p.start:p.start + p.losses.shape[1]])
        assert p.state.position == p.start + n


def test_losses_false_and_default_logits_give_none():
    """losses=False gives losses None; logits default to None; the state is still carried."""
    model = model_for("lmm")
    ids = token_ids()
    pieces = list(stream(model, ids, 9, losses=False))
    assert len(pieces) == 5
    assert all(p.losses is None and p.logits is None for p in pieces)
    assert pieces[-1].state.position == N
    assert all(p.losses is not None for p in stream(model, ids, 9))


@pytest.mark.parametrize("variant", ["mac", "transformer"])
@pytest.mark.parametrize("keep", [1, 3, 12])
def test_logits_to_keep_gives_the_last_positions_of_each_piece(variant, keep):
    """logits_to_keep=k: each piece's logits are the full pass's at its last min(n, k)
    positions, and the states are those of a stream that computes every logit."""
    model = model_for(variant)
    ids = token_ids()
    full_logits = model(ids).logits
    pieces = list(stream(model, ids, 5, losses=False, logits=True, logits_to_keep=keep))
    every = list(stream(model, ids, 5, losses=False))
    assert [p.start for p in pieces] == list(range(0, N, 5))
    for p, q in zip(pieces, every, strict=True):
        end = p.start + p.input_ids.shape[1]
        kept = min(keep, p.input_ids.shape[1])
        assert p.losses is None and p.logits.shape == (1, kept, VOCAB)
        assert_close(p.logits, full_logits[:, end - kept:end])
        assert p.state.position == q.state.position == end
    nxt = ids[:, :1]  # the carried states continue the stream alike
    assert_close(model(nxt, pieces[-1].state).logits, model(nxt, every[-1].state).logits)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"logits_to_keep": 1}, "losses=False"),
    ({"losses": False, "logits_to_keep": -1}, "logits_to_keep"),
    ({"losses": False, "logits_to_keep": True}, "logits_to_keep"),
    ({"losses": False, "logits_to_keep": 1.0}, "logits_to_keep"),
])
def test_logits_to_keep_errors(kwargs, message):
    """The losses need every position's logits; logits_to_keep is an int >= 0. Both raise when
    stream() is called."""
    with pytest.raises(ValueError, match=message):
        stream(model_for("lmm"), token_ids(), 5, **kwargs)


@pytest.mark.parametrize("variant", ["mac", "mag", "lmm"])
@pytest.mark.parametrize("k", [1, 13, 24])
def test_continue_from_a_state(variant, k):
    """stream(state=model(ids[:, :k]).state) gives the full pass's losses after k, starts at k."""
    model = model_for(variant)
    ids = token_ids()
    reference = full_losses(model, ids)
    state = model(ids[:, :k]).state
    pieces = list(stream(model, ids[:, k:], 5, state=state))
    assert [p.start for p in pieces] == list(range(k, N, 5))
    assert_close(torch.cat([p.losses for p in pieces], 1), reference[:, k:])
    assert pieces[-1].state.position == N


@pytest.mark.parametrize("variant", ["mac", "mal", "transformer"])
def test_streamed_state_supports_a_later_training_step(variant):
    """A streamed piece's state feeds a grad-enabled forward whose loss backpropagates into the
    parameters (finite, non-zero gradients) and whose logits equal the full pass."""
    model = model_for(variant)
    ids = token_ids(n=N + 10)
    *_, last = stream(model, ids[:, :N], 8)
    nxt = ids[:, N:]
    model.zero_grad()
    with torch.enable_grad():
        out = model(nxt, last.state, labels=nxt)
        assert out.loss.requires_grad
        out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.embed_tokens.weight.grad.abs().sum() > 0
    assert model.layers[0].mixer_norm.weight.grad.abs().sum() > 0
    if variant != "transformer":
        assert model.layers[0].mixer.memory.gate_proj.weight.grad.abs().sum() > 0
    assert_close(out.logits.detach(), model(ids).logits[:, N:].detach())
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- empty input and errors


def test_empty_streams():
    """An empty stream yields no pieces and stream_losses returns a [1, 0] tensor; a single
    token gives one piece with no loss."""
    model = model_for("mac")
    for empty in (torch.zeros(0, dtype=torch.long), iter([]), (t for t in ())):
        assert list(stream(model, empty, 4)) == []
    assert stream_losses(model, []).shape == (1, 0)
    assert stream_losses(model, torch.zeros(0, dtype=torch.long), 3).shape == (1, 0)
    pieces = list(stream(model, [7], 4))
    assert len(pieces) == 1
    assert pieces[0].losses.shape == (1, 0)
    assert pieces[0].state.position == 1


@pytest.mark.parametrize("bad", [0, -3, 2.0, "8", None])
def test_bad_piece_len_raises(bad):
    """piece_len 0, negative or non-int raises ValueError naming piece_len."""
    model = model_for("swa")
    with pytest.raises(ValueError, match="piece_len"):
        stream_losses(model, token_ids()[0], bad)
    with pytest.raises(ValueError, match="piece_len"):
        next(stream(model, token_ids()[0], bad))


def test_three_dimensional_tokens_raise():
    """A 3-D token tensor raises ValueError instead of being streamed."""
    model = model_for("swa")
    with pytest.raises(ValueError, match=r"\[N\] or \[B, N\]"):
        stream_losses(model, torch.zeros(1, 2, 3, dtype=torch.long), 4)


# ---------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("variant", ["lmm", "mac", "mag", "transformer"])
def test_state_memory_is_bounded_over_a_long_stream(variant):
    """Streaming 3000 tokens in pieces of 100: state bytes after piece 5 == after the last piece
    for memory variants; full attention's KV cache keeps growing."""
    model = model_for(variant, torch.float32)
    ids = torch.randint(0, VOCAB, (3000,), generator=torch.Generator().manual_seed(5))
    sizes = [p.state.num_bytes() for p in stream(model, ids, 100, losses=False)]
    assert len(sizes) == 30
    if variant == "transformer":
        assert sizes[-1] == 5 * sizes[5]  # the KV cache is linear in tokens: 3000 vs 600
        assert all(a < b for a, b in itertools.pairwise(sizes))
    else:
        assert sizes[5] == sizes[-1] > 0
        assert max(sizes[5:]) <= max(sizes[:5])  # segment phases repeat; nothing accumulates


def test_iterating_a_tensor_streams_its_items_and_errors_come_early():
    """An iterator over a 1-D tensor (0-d items) streams like ints; bad shapes and piece_len
    raise when stream() is called; an empty [B, 0] batch gives [B, 0] losses."""
    model = model_for("lmm")
    ids = token_ids()[0]
    torch.testing.assert_close(stream_losses(model, iter(ids), 7), stream_losses(model, ids, 7))
    with pytest.raises(ValueError, match=r"got \(1, 2, 3\)"):
        stream(model, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="piece_len"):
        stream(model, ids, 0)
    assert stream_losses(model, torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
