"""titans.data.batches: get_batch cuts a token stream into shuffled sequences, a pure function of
the step that splits the global batch over ranks; as_batch_source checks a stream early and
passes a callable source through."""

import numpy as np
import pytest
import torch

from titans.data.batches import as_batch_source, get_batch

VOCAB = 64


def synthetic_tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def test_get_batch_rows_are_sequences_of_the_stream_and_deterministic() -> None:
    tokens = np.arange(1001, dtype=np.uint16)  # 100 sequences of 10 (the last token spare)
    batch = get_batch(tokens, 10, 4, step=3, seed=7)
    assert batch.dtype == torch.int64 and batch.shape == (4, 10)
    for row in batch:  # each row is one aligned, consecutive slice of the stream
        assert int(row[0]) % 10 == 0 and torch.equal(row, row[0] + torch.arange(10))
    assert torch.equal(batch, get_batch(tokens, 10, 4, step=3, seed=7))
    assert not torch.equal(batch, get_batch(tokens, 10, 4, step=4, seed=7))
    assert not torch.equal(batch, get_batch(tokens, 10, 4, step=3, seed=8))


def test_get_batch_ranks_split_the_global_batch() -> None:
    tokens = synthetic_tokens(5000, seed=0)
    for step in (0, 5, 40):  # 40: past the first epoch of 156 sequences
        whole = get_batch(tokens, 32, 12, step, seed=1)
        parts = [get_batch(tokens, 32, 4, step, seed=1, rank=r, world_size=3) for r in range(3)]
        assert torch.equal(torch.cat(parts), whole)


def test_get_batch_epochs_are_permutations() -> None:
    tokens = np.arange(10 * 24 + 1, dtype=np.int64)  # 24 sequences, batches of 6: 4 per epoch

    def starts(step: int, batch_size: int = 6) -> list[int]:
        return (get_batch(tokens, 10, batch_size, step, seed=3)[:, 0] // 10).tolist()

    epoch0 = [s for step in range(4) for s in starts(step)]
    epoch1 = [s for step in range(4, 8) for s in starts(step)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(24))
    assert epoch0 != epoch1 and epoch0 != list(range(24))  # shuffled, differently per epoch
    # A batch straddling the boundary: rows 20..29 = the end of epoch 0 and start of epoch 1.
    assert starts(2, batch_size=10) == epoch0[20:] + epoch1[:6]


def test_get_batch_rejects_bad_input() -> None:
    tokens = np.arange(100, dtype=np.int32)
    with pytest.raises(ValueError, match="at least seq_len"):
        get_batch(tokens[:10], 10, 1, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        get_batch(tokens, 10, 1, 0, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="integer"):
        get_batch(tokens.astype(np.float32), 10, 1, 0, 0)
    with pytest.raises(ValueError, match="step"):
        get_batch(tokens, 10, 1, -1, 0)


def test_a_token_stream_becomes_get_batch_rows_scored_everywhere() -> None:
    tokens = synthetic_tokens(500, seed=2)
    source = as_batch_source("train_tokens", tokens, 16)
    ids, labels = source(16, 3, 5, 1, 0, 1)
    assert torch.equal(ids, get_batch(tokens, 16, 3, 5, 1)) and labels is ids


def test_as_batch_source_passes_callables_and_rejects_bad_streams() -> None:
    def source(seq_len, batch_size, step, seed, rank, world_size):
        raise AssertionError("not called")

    assert as_batch_source("train_tokens", source, 16) is source
    with pytest.raises(ValueError, match="val_tokens has 16 tokens; seq_len 16 needs at least 17"):
        as_batch_source("val_tokens", np.arange(16), 16)
    with pytest.raises(ValueError, match="train_tokens must be a 1-D integer numpy array"):
        as_batch_source("train_tokens", np.zeros((2, 40), dtype=np.int64), 16)
