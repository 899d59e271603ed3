"""Long-context evaluation (titans.evals.long_context): answer_items equals a naive greedy decode
(a full forward over context + tokens so far for every new token) for every variant, whatever
the piece length, and rejects mixed lengths; evaluate_task's rows (order, counts, accuracy
against score(), bAbI rows, batching, full-attention skipping, training mode restored, errors)
with answer_items replaced by a fake of known correctness, plus one real run on a tiny model."""

import numpy as np
import pytest
import torch

from titans import TitansConfig, TitansLM
from titans.data import train_bpe
from titans.evals import long_context
from titans.evals.long_context import answer_items, evaluate_task
from titans.evals.tasks import TaskGenerator, score

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ("mac", "mag", "mal", "lmm", "transformer", "swa")

PROSE = [
    """The harbour was quiet before the boats came in. Gulls circled over the grey water and the
    fishermen mended their nets on the stones. Nobody spoke much in the early hours! An old woman
    sold bread from a cart near the lighthouse. Children ran along the wall, daring each other to
    jump. Would the weather hold until the evening? The harbour master thought it would not.""",
    """In the valley the river turned twice before it reached the mill. The miller had built a
    wooden bridge there, painted green every spring. Travellers stopped to water their horses and
    to ask the way to the town. "Follow the river," he always said, "and you cannot miss it." Most
    of them thanked him and went on. A few stayed for supper and told stories of the mountains.""",
    """The library opened at nine and closed at six. Its reading room had tall windows and long
    oak tables marked by a century of elbows. A clerk stamped every book that left the building.
    Students whispered over their papers while the clock ticked above the door. On rainy days the
    room filled early. The librarian kept a kettle in the back and offered tea to the regulars.""",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe(PROSE, 320, tmp_path_factory.mktemp("bpe") / "bpe.json")


@pytest.fixture(scope="module")
def generator(tokenizer):
    return TaskGenerator(tokenizer, PROSE)


_MODELS = {}


def model_for(variant, vocab_size):
    """A seeded tiny float64 model per variant, built once (evaluation changes no parameter);
    float64, so that the streamed and the naive decode can only differ by a real defect."""
    if variant not in _MODELS:
        extra = {"num_persistent_tokens": 2} if variant in ("mac", "mag", "mal") else {}
        cfg = TitansConfig(variant=variant, vocab_size=vocab_size, hidden_size=32,
                           num_hidden_layers=2, num_heads=2, segment_len=16, window_size=16,
                           chunk_size=4, memory_expansion=2, **extra)
        torch.manual_seed(0)
        _MODELS[variant] = TitansLM(cfg).double().eval()
    return _MODELS[variant]


@torch.no_grad()
def naive_greedy(model, item):
    """One item at a time, no state: a full forward over context + generated tokens per token."""
    ids = item.input_ids.tolist()
    new = []
    for _ in item.answer_ids:
        logits = model(torch.tensor([ids + new])).logits[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] > 1e-8  # an unambiguous argmax, so rounding cannot flip it
        new.append(int(logits.argmax()))
    return new


def mixed_items(generator, length=150):
    """Three items of one length whose answers have different numbers of tokens."""
    items = [generator.item("niah1", length, 0.5, 0), generator.item("niah2", length, 1.0, 1),
             generator.item("qa4", length, None, 2)]
    assert len({len(item.answer_ids) for item in items}) > 1
    return items


# ----------------------------------------------------------------------------- answer_items


@pytest.mark.parametrize("variant", VARIANTS)
def test_answer_items_equals_a_naive_greedy_decode(variant, generator, tokenizer):
    model = model_for(variant, tokenizer.vocab_size)
    items = mixed_items(generator)
    expected = [naive_greedy(model, item) for item in items]
    assert [len(ids) for ids in expected] == [len(item.answer_ids) for item in items]
    for piece_len in (7, 64, 2048):
        assert answer_items(model, items, piece_len=piece_len) == expected, piece_len
    assert answer_items(model, items[1:2]) == expected[1:2]  # alone == in a batch


def test_answer_items_rejects_mixed_lengths_and_accepts_nothing(generator, tokenizer):
    model = model_for("lmm", tokenizer.vocab_size)
    items = [generator.item("niah1", 150, 0.5), generator.item("niah1", 151, 0.5)]
    with pytest.raises(ValueError, match="share a length"):
        answer_items(model, items)
    assert answer_items(model, []) == []
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="piece_len"):
            answer_items(model, items[:1], piece_len=bad)


# ----------------------------------------------------------------------------- evaluate_task


def right_answer(item):
    """Which items the fake answers correctly: a pattern over index and depth."""
    return (item.index + round(4 * (item.depth or 0))) % 3 != 1


def install_fake(monkeypatch, tokenizer, calls):
    """Replace answer_items by a fake that answers ``right_answer`` items correctly (sometimes
    with extra whitespace) and the others wrongly (a prefix, one digit more, another value)."""
    def fake(model, items, piece_len=2048):
        calls.append({"training": model.training, "items": list(items), "piece_len": piece_len})
        out = []
        for item in items:
            if right_answer(item):
                text = f" {item.answer}" if item.index % 2 else f" {item.answer} \n"
            else:
                text = (f" {item.answer[:-1]}", f" {item.answer}7", " nothing")[item.index % 3]
            out.append(tokenizer.encode(text))
        return out

    monkeypatch.setattr(long_context, "answer_items", fake)


def test_evaluate_task_rows_count_exact_matches(monkeypatch, generator, tokenizer):
    calls = []
    install_fake(monkeypatch, tokenizer, calls)
    model = model_for("swa", tokenizer.vocab_size)
    lengths, depths = [160, 200], [0.0, 0.25, 1.0]
    rows = evaluate_task(model, generator, "niah2", lengths, depths, num_items=4, seed=3,
                         batch_size=5, piece_len=33)
    assert [(r["length"], r["depth"]) for r in rows] == [(n, d) for n in lengths for d in depths]
    for row in rows:
        items = generator.items("niah2", row["length"], [row["depth"]], 4, seed=3)
        expected = sum(right_answer(item) for item in items)
        assert row["task"] == "niah2" and row["items"] == 4 and row["skipped"] is None
        assert row["correct"] == expected
        assert row["accuracy"] == expected / 4
        assert [p[0] for p in row["predictions"]] == [item.answer for item in items]
        assert row["correct"] == sum(score(pred, answer) for answer, pred in row["predictions"])
        assert row["tokens_per_s"] > 0 and row["peak_memory_mib"] > 0
        assert row["memory_kind"] == "rss"
    assert 0 < sum(r["correct"] for r in rows) < sum(r["items"] for r in rows)
    # Every item of a length once, in order, in batches of at most 5 of one length.
    assert [len(c["items"]) for c in calls] == [5, 5, 2, 5, 5, 2]
    for length, batches in ((160, calls[:3]), (200, calls[3:])):
        seen = [item for c in batches for item in c["items"]]
        expected = generator.items("niah2", length, depths, 4, seed=3)
        assert len(seen) == len(expected)
        for a, b in zip(seen, expected, strict=True):
            assert np.array_equal(a.input_ids, b.input_ids) and a.answer == b.answer
    assert all(c["piece_len"] == 33 and not c["training"] for c in calls)


def test_evaluate_task_babi_has_one_row_per_length(monkeypatch, generator, tokenizer):
    calls = []
    install_fake(monkeypatch, tokenizer, calls)
    model = model_for("lmm", tokenizer.vocab_size)
    rows = evaluate_task(model, generator, "qa4", [150, 180], num_items=5)
    assert [(r["length"], r["depth"]) for r in rows] == [(150, None), (180, None)]
    for row in rows:
        items = generator.items("qa4", row["length"], [None], 5)
        assert row["correct"] == sum(right_answer(item) for item in items) == 3
        assert row["accuracy"] == 0.6


def test_evaluate_task_argument_errors(generator, tokenizer):
    model = model_for("lmm", tokenizer.vocab_size)
    with pytest.raises(ValueError, match="depths"):
        evaluate_task(model, generator, "niah1", [150])
    with pytest.raises(ValueError, match="depths"):
        evaluate_task(model, generator, "niah1", [150], [])
    with pytest.raises(ValueError, match="depths must be None"):
        evaluate_task(model, generator, "qa1", [150], [0.5])
    with pytest.raises(ValueError, match="num_items"):
        evaluate_task(model, generator, "niah1", [150], [0.5], num_items=0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_task(model, generator, "niah1", [150], [0.5], batch_size=0)
    with pytest.raises(ValueError, match="length"):
        evaluate_task(model, generator, "niah1", [], [0.5])


def test_full_attention_is_skipped_beyond_its_limit(monkeypatch, generator, tokenizer):
    calls = []
    install_fake(monkeypatch, tokenizer, calls)
    depths = [0.0, 1.0]
    rows = evaluate_task(model_for("transformer", tokenizer.vocab_size), generator, "niah1",
                         [150, 200], depths, num_items=2, max_full_attention_length=180)
    assert [(r["length"], r["depth"]) for r in rows] == [(150, 0.0), (150, 1.0), (200, 0.0),
                                                         (200, 1.0)]
    assert all(r["skipped"] is None and r["accuracy"] is not None for r in rows[:2])
    for row in rows[2:]:
        assert row["accuracy"] is None and row["items"] == 0 and row["predictions"] == []
        assert "180" in row["skipped"]
    assert {item.length for c in calls for item in c["items"]} == {150}  # 200 never ran
    # A sliding-window model (bounded cache) runs at the same length; so does full attention
    # without a limit.
    for variant, limit in (("swa", 180), ("transformer", None)):
        calls.clear()
        rows = evaluate_task(model_for(variant, tokenizer.vocab_size), generator, "niah1", [200],
                             depths, num_items=2, max_full_attention_length=limit)
        assert all(r["skipped"] is None and r["accuracy"] is not None for r in rows)
        assert [r["correct"] for r in rows] == [
            sum(right_answer(i) for i in generator.items("niah1", 200, [d], 2)) for d in depths]


def test_evaluate_task_restores_the_training_mode(monkeypatch, generator, tokenizer):
    calls = []
    install_fake(monkeypatch, tokenizer, calls)
    model = model_for("mal", tokenizer.vocab_size)
    try:
        for training in (True, False):
            model.train(training)
            evaluate_task(model, generator, "niah1", [150], [0.5], num_items=1)
            assert model.training is training
            assert all(m.training is training for m in model.modules())
        model.train()

        def broken(*args, **kwargs):
            assert not model.training  # evaluated in eval mode
            raise RuntimeError("boom")

        monkeypatch.setattr(long_context, "answer_items", broken)
        with pytest.raises(RuntimeError, match="boom"):
            evaluate_task(model, generator, "niah1", [150], [0.5], num_items=1)
        assert model.training  # restored on errors too
    finally:
        model.eval()
    assert calls and not any(c["training"] for c in calls)


def test_evaluate_task_real_run(generator, tokenizer):
    """An untrained tiny model end to end: predictions are its greedy continuations."""
    model = model_for("mag", tokenizer.vocab_size)
    rows = evaluate_task(model, generator, "niah1", [128, 160], [0.0, 1.0], num_items=1,
                         piece_len=50)
    assert [(r["length"], r["depth"]) for r in rows] == [(128, 0.0), (128, 1.0), (160, 0.0),
                                                         (160, 1.0)]
    for row in rows:
        (item,) = generator.items("niah1", row["length"], [row["depth"]], 1)
        prediction = tokenizer.decode(answer_items(model, [item])[0])
        assert row["predictions"] == [[item.answer, prediction.strip()]]
        assert row["correct"] == int(score(prediction, item.answer))
        assert row["accuracy"] == row["correct"] and row["items"] == 1
        assert row["tokens_per_s"] > 0 and row["peak_memory_mib"] > 0
        assert row["memory_kind"] == "rss" and row["skipped"] is None
    assert not model.training
