"""Log-likelihood scoring against a naive full forward, and lm-eval's request encoding."""

import pytest
import torch

from titans import TitansConfig, TitansLM
from titans.evals.scoring import continuation_logprobs, document_logprob, encode_pair

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(variant="mac"):
    torch.manual_seed(0)
    cfg = TitansConfig.from_preset("tiny", variant, vocab_size=53, hidden_size=32, segment_len=8,
                                   window_size=6, chunk_size=4)
    return TitansLM(cfg).double().eval()


def naive_logprob(model, context, continuation):
    """Sum of log p(continuation token | everything before it) from one full forward."""
    logits = model(torch.tensor([context + continuation])).logits[0].log_softmax(-1)
    steps = range(len(context) - 1, len(context) + len(continuation) - 1)
    return sum(float(logits[t, tok]) for t, tok in zip(steps, continuation, strict=True))


@pytest.mark.parametrize("variant", ["mac", "swa", "transformer"])
def test_continuation_logprobs_equal_a_full_forward(variant):
    """Shared contexts, continuations of several lengths, contexts longer than a piece, batches
    split below the group size: each score is that of one full forward over context +
    continuation, in request order."""
    model = tiny_model(variant)
    g = torch.Generator().manual_seed(1)
    long_ctx = torch.randint(0, 53, (23,), generator=g).tolist()
    requests = [(long_ctx, [5, 6]), ([7], [8, 9, 10]), (long_ctx, [9]), (long_ctx, [1, 2]),
                (long_ctx, [3, 4]), ([7], [8]), ([2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12])]
    scores = continuation_logprobs(model, requests, batch_size=2, piece_len=5)
    for (ctx, cont), (lp, _) in zip(requests, scores, strict=True):
        assert lp == pytest.approx(naive_logprob(model, ctx, cont), rel=1e-10, abs=1e-10)
    again = continuation_logprobs(model, requests, batch_size=16, piece_len=64)
    assert [g for _, g in again] == [g for _, g in scores]
    assert [lp for lp, _ in again] == pytest.approx([lp for lp, _ in scores], rel=1e-12)


def test_greedy_flag_is_true_exactly_for_the_argmax_continuation():
    model = tiny_model()
    ctx = [3, 1, 4, 1, 5]
    greedy = model.generate(torch.tensor([ctx]), 4, temperature=0)[0, 5:].tolist()
    other = [*greedy[:3], (greedy[3] + 1) % 53]
    (_, g1), (_, g2) = continuation_logprobs(model, [(ctx, greedy), (ctx, other)])
    assert g1 and not g2


def test_document_logprob_streams_a_document_like_one_pass():
    model = tiny_model("mag")
    ids = torch.randint(0, 53, (41,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = naive_logprob(model, [0], ids)
    assert document_logprob(model, ids, 0, piece_len=6) == pytest.approx(expected, rel=1e-6)
    assert document_logprob(model, [], 0) == 0.0


def test_bad_requests_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="request 1 has an empty context"):
        continuation_logprobs(model, [([1], [2]), ([], [3])])
    with pytest.raises(ValueError, match="batch_size"):
        continuation_logprobs(model, [([1], [2])], batch_size=0)


def fake_encode(text):
    """One id per character, except that " a" is one token (a merge across the boundary)."""
    ids, i = [], 0
    while i < len(text):
        if text.startswith(" a", i):
            ids.append(1000)
            i += 2
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def test_encode_pair_follows_lm_eval():
    # Trailing spaces of the context move to the continuation, where " a" then merges.
    assert encode_pair(fake_encode, "Q: x\nA: ", "a b", 0) == (
        fake_encode("Q: x\nA:"), [1000, ord(" "), ord("b")])
    # The continuation's ids are the tail of the whole text's ids.
    assert encode_pair(fake_encode, "xy", " ab", 0) == ([ord("x"), ord("y")], [1000, ord("b")])
    assert encode_pair(fake_encode, "", "hi", 7) == ([7], [ord("h"), ord("i")])
