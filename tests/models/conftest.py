"""Fixtures shared by the model tests."""

import random
from collections.abc import Callable

import pytest
import torch
from torch import nn


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _check_stream_equivalences(model: nn.Module, ids: torch.Tensor, prefill: int) -> None:
    """Logits of one pass over ids [B, T] == two random splits into 5 pieces with carried state
    == a prefill of ``prefill`` tokens then one token at a time; the final states agree too
    (continuing from either gives the same logits)."""
    length = ids.shape[1]
    full = model(ids)
    rng = random.Random(0)
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, length), 4))
        state, logits = None, []
        for a, b in zip([0, *cuts], [*cuts, length], strict=True):
            out = model(ids[:, a:b], state)
            state = out.state
            logits.append(out.logits)
        assert _rel_err(torch.cat(logits, 1), full.logits) < 1e-10
        assert state.position == length
    out = model(ids[:, :prefill])
    logits = [out.logits]
    for t in range(prefill, length):
        out = model(ids[:, t:t + 1], out.state)
        logits.append(out.logits)
    assert _rel_err(torch.cat(logits, 1), full.logits) < 1e-10
    nxt = torch.randint(0, int(ids.max()) + 1, (ids.shape[0], 7),
                        generator=torch.Generator().manual_seed(5))
    assert _rel_err(model(nxt, out.state).logits, model(nxt, full.state).logits) < 1e-10


@pytest.fixture
def check_stream_equivalences() -> Callable[[nn.Module, torch.Tensor, int], None]:
    """The stream equivalences every stateful model keeps (see ``_check_stream_equivalences``)."""
    return _check_stream_equivalences
