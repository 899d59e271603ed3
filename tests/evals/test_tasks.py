"""Long-context task items (titans.evals.tasks) with real byte-level BPE tokenizers: contexts are
exactly ``length`` tokens (``reserve_answer``: context + answer), the needle lands at the sentence
boundary nearest the requested depth and the rest is a run of consecutive haystack sentences,
answers and bAbI facts can be read back from the text in story order, the question ends the
context, items are deterministic and their content does not depend on the tokenizer,
``Haystack.take`` (exact size, wrap-around, sentence boundaries), ``split_sentences``, niah1's
filler haystack, ``TaskBatches`` (labels, purity, ranks, weights, errors), argument errors and
``score``."""

import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

from titans.data import train_bpe
from titans.evals.babi import BABI_TASKS
from titans.evals.tasks import (
    FILLER,
    MQ_KEYS,
    MQ_NEEDLES,
    MQ_TASK,
    NEEDLE_TASKS,
    TASKS,
    Haystack,
    TaskBatches,
    TaskGenerator,
    _content,
    check_task_mix,
    needs_depth,
    score,
    split_sentences,
)

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# bAbI stories take up to ~300 tokens with these small tokenizers, needles and answers ~160,
# niah_mq's four needles and questions ~500.
LENGTHS = {**dict.fromkeys(NEEDLE_TASKS, (167, 250, 1000, 4097)),
           **dict.fromkeys(BABI_TASKS, (401, 1000, 4097)), MQ_TASK: (1000, 4097)}


def make_prose(num_docs=3, sentences_per_doc=40, seed=0):
    """Documents of varied sentences (some questions and exclamations) drawn from word lists,
    with line breaks inside; about 2,400 words in all."""
    subjects = ("The old miller", "A quiet fisherman", "Her younger brother", "The village baker",
                "A tired traveller", "The schoolteacher", "My grandmother", "The new doctor")
    verbs = ("walked along", "painted", "looked across", "forgot about", "talked about",
             "repaired", "dreamed of", "sold")
    objects = ("the narrow bridge", "a wooden boat", "the northern hills", "the empty market",
               "an old lantern", "the stone wall", "a broken clock", "the orchard gate")
    times = ("before dawn", "in the rain", "after supper", "every spring", "without a word",
             "for many years", "on Sundays", "while singing")
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        sentences = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
                     f"{rng.choice(times)}{rng.choice('...?!')}"
                     for _ in range(sentences_per_doc)]
        half = sentences_per_doc // 2
        docs.append(" ".join(sentences[:half]) + "\n" + " ".join(sentences[half:]))
    return docs


PROSE = make_prose()
PROSE_SENTENCES = {s for doc in PROSE for s in split_sentences(doc)}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Two byte-level BPEs of different vocabularies trained on the prose."""
    root = tmp_path_factory.mktemp("bpe")
    return [train_bpe(PROSE, vocab, root / f"bpe{vocab}.json") for vocab in (300, 512)]


@pytest.fixture(scope="module")
def tokenizer(tokenizers):
    return tokenizers[1]


@pytest.fixture(scope="module")
def generators(tokenizers):
    return [TaskGenerator(tok, PROSE) for tok in tokenizers]


@pytest.fixture(scope="module")
def generator(generators):
    return generators[1]


def needle_sentence(task, answer):
    """The sentence hidden by a needle task, rebuilt from its answer."""
    return {
        "niah1": f"The pass key is {answer}. Remember it. {answer} is the pass key.",
        "niah2": f"The special magic number is {answer}.",
        "niah3": f"The special magic uuid is {answer}.",
    }[task]


def question_ids(tokenizer, item):
    return tokenizer.encode(f"\nQuestion: {item.prompt}")


def inserted_sentences(item, seed=0):
    """The needle or the bAbI facts of an item, in order (bAbI: the documented seeding)."""
    if item.task in NEEDLE_TASKS:
        return [needle_sentence(item.task, item.answer)]
    rng = random.Random(f"{seed}/{item.task}/{item.length}/None/{item.index}")
    facts, questions = _content(item.task, rng)
    *answered, (prompt, answer) = questions
    assert "".join(f"{p} {a}\nQuestion: " for p, a in answered) + prompt == item.prompt
    assert answer == item.answer
    return facts


def find_window(haystack, prose):
    """(first sentence, boundaries) such that ``haystack.take`` gives exactly ``prose``."""
    for first in range(haystack.num_sentences):
        tokens, bounds = haystack.take(first, len(prose))
        if np.array_equal(tokens, prose):
            return first, bounds
    raise AssertionError("the prose is not a run of consecutive haystack sentences")


def split_item(tokenizer, item, seed=0):
    """Check that the needle / facts sit at ``item.positions`` and the question ends the
    context; return (prose ids with them removed, ids of each insert)."""
    inserts = [tokenizer.encode(" " + s) for s in inserted_sentences(item, seed)]
    question = question_ids(tokenizer, item)
    ids = item.input_ids
    assert len(item.positions) == len(inserts)
    assert list(item.positions) == sorted(item.positions)
    prose, done = [], 0
    for pos, insert in zip(item.positions, inserts, strict=True):
        assert pos >= done
        assert ids[pos:pos + len(insert)].tolist() == insert
        prose.append(ids[done:pos])
        done = pos + len(insert)
    assert ids[len(ids) - len(question):].tolist() == question
    prose.append(ids[done:len(ids) - len(question)])
    return np.concatenate(prose), inserts


def depth_of(task):
    return 0.3 if task in NEEDLE_TASKS else None  # niah_mq scatters its needles like bAbI


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("task", TASKS)
def test_contexts_are_exactly_length_tokens(task, generators, tokenizers):
    for gen, tok in zip(generators, tokenizers, strict=True):
        for length in LENGTHS[task]:
            for index in range(3):
                item = gen.item(task, length, depth_of(task), index)
                assert item.input_ids.dtype == np.int64
                assert len(item.input_ids) == length
                assert (item.task, item.length, item.index) == (task, length, index)
                assert item.answer_ids == tuple(tok.encode(" " + item.answer))
                reserved = gen.item(task, length, depth_of(task), index, reserve_answer=True)
                assert len(reserved.input_ids) + len(reserved.answer_ids) == length
                # Reserving room for the answer only shortens the prose.
                assert (reserved.answer, reserved.prompt) == (item.answer, item.prompt)


# ----------------------------------------------------------------------------- needles


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_needle_at_the_boundary_nearest_the_depth(task, generator, tokenizer):
    haystack = generator.filler if task == "niah1" else generator.prose
    max_sentence = int(np.diff(haystack.starts).max())
    for length in (250, 1000, 4097):
        for depth in DEPTHS:
            item = generator.item(task, length, depth, index=1)
            assert item.depth == depth
            prose, (needle,) = split_item(tokenizer, item)
            prose_len = length - len(needle) - len(question_ids(tokenizer, item))
            assert len(prose) == prose_len
            _, bounds = find_window(haystack, prose)
            (pos,) = item.positions
            target = depth * prose_len
            assert pos in bounds  # between two sentences
            assert abs(pos - target) == np.abs(bounds - target).min()  # the nearest one
            assert abs(pos - target) <= max_sentence / 2
            if depth == 0:
                assert pos == 0
            if depth == 1:  # right before the question
                assert pos + len(needle) == length - len(question_ids(tokenizer, item))


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_needle_answer_is_in_the_text_and_the_question_ends_it(task, generator, tokenizer):
    pattern = {"niah1": r"\d{5}", "niah2": r"\d{7}",
               "niah3": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"}
    for index in range(5):
        item = generator.item(task, 300, 0.5, index)
        assert re.fullmatch(pattern[task], item.answer)
        text = tokenizer.decode(item.input_ids)
        assert text.count(" " + needle_sentence(task, item.answer)) == 1
        assert text.endswith(f"\nQuestion: {item.prompt}")
        assert item.prompt.endswith("is")  # the cue repeats the needle's words
        # The cue followed by the answer is a sentence of the needle.
        cue = item.prompt.rsplit("Answer: ", 1)[1]
        assert f"{cue} {item.answer}" in needle_sentence(task, item.answer)


@pytest.mark.parametrize("task", BABI_TASKS)
def test_babi_facts_appear_in_story_order(task, generator, tokenizer):
    spread = 0
    for index in range(6):
        item = generator.item(task, 600, None, index)
        assert item.depth is None
        prose, inserts = split_item(tokenizer, item)
        find_window(generator.prose, prose)
        text = tokenizer.decode(item.input_ids)
        assert text.endswith(f"\nQuestion: {item.prompt}")
        assert item.prompt.endswith("?\nAnswer:")
        body = text[:-len(f"\nQuestion: {item.prompt}")]
        found = 0
        for fact in inserted_sentences(item):
            at = body.find(" " + fact, found)
            assert at >= found, fact
            found = at + len(fact) + 1
        assert re.search(rf"\b{item.answer}\b", body)
        # Facts are scattered: some prose lies between the first and the last.
        spread += item.positions[-1] - item.positions[0] > sum(map(len, inserts[:-1]))
    assert spread >= 3


def test_niah_mq_answers_every_needle_by_its_key(generator, tokenizer):
    needle = re.compile(r"The special magic number for (\w+) is (\d{7})\.")
    question = re.compile(r"What is the special magic number for (\w+)\?\nAnswer: The special "
                          r"magic number for (\w+) is")
    for index in range(6):
        item = generator.item(MQ_TASK, 1000, None, index)
        assert item.depth is None
        prose, _ = split_item(tokenizer, item)
        find_window(generator.prose, prose)
        text = tokenizer.decode(item.input_ids)
        values = dict(needle.findall(text))
        assert len(values) == MQ_NEEDLES and set(values) <= set(MQ_KEYS)
        asked = question.findall(item.prompt)
        assert [a for a, b in asked] == [b for a, b in asked]
        # Every needle is asked for once; the last question is the item's answer.
        assert sorted(a for a, _ in asked) == sorted(values)
        assert item.answer == values[asked[-1][0]]
        # The earlier questions are answered in the context, at answer_spans.
        assert len(item.answer_spans) == MQ_NEEDLES - 1
        for (key, _), (a, b) in zip(asked, item.answer_spans, strict=False):
            assert item.input_ids[a:b].tolist() == tokenizer.encode(" " + values[key])
            assert tokenizer.decode(item.input_ids[:a]).endswith(f"magic number for {key} is")
        assert item.prompt.endswith(f"magic number for {asked[-1][0]} is")
    for task in NEEDLE_TASKS + BABI_TASKS:
        assert generator.item(task, 1000, depth_of(task)).answer_spans == ()


def test_niah1_hides_its_needle_in_filler(generator, tokenizer):
    for depth in (0.0, 0.5, 1.0):
        item = generator.item("niah1", 400, depth)
        text = tokenizer.decode(item.input_ids[:-len(question_ids(tokenizer, item))])
        prose = text.replace(" " + needle_sentence("niah1", item.answer), "")
        sentences = split_sentences(prose)
        assert len(sentences) > 20
        assert set(sentences[:-1]) <= set(FILLER)
        assert any(f.startswith(sentences[-1]) for f in FILLER)  # the last may be cut


@pytest.mark.parametrize("task", ["niah2", "niah3", "qa1", MQ_TASK])
def test_other_tasks_use_the_prose(task, generator, tokenizer):
    item = generator.item(task, 1000, depth_of(task))
    prose, _ = split_item(tokenizer, item)
    sentences = split_sentences(tokenizer.decode(prose))
    assert len(sentences) > 10
    assert set(sentences[:-1]) <= PROSE_SENTENCES
    assert not set(sentences) & set(FILLER)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", TASKS)
def test_same_arguments_give_the_same_item(task, generator, tokenizer):
    item = generator.item(task, 700, depth_of(task), 3, seed=2)
    for again in (generator.item(task, 700, depth_of(task), 3, seed=2),
                  TaskGenerator(tokenizer, PROSE).item(task, 700, depth_of(task), 3, seed=2)):
        assert np.array_equal(again.input_ids, item.input_ids)
        assert (again.answer, again.answer_ids, again.positions, again.prompt) == (
            item.answer, item.answer_ids, item.positions, item.prompt)
    others = [generator.item(task, 700, depth_of(task), i, seed=2).input_ids for i in range(3)]
    assert all(not np.array_equal(ids, item.input_ids) for ids in others)


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_index_and_seed_change_the_needle(task, generator):
    by_index = {generator.item(task, 300, 0.5, i).answer for i in range(6)}
    assert len(by_index) == 6
    by_seed = {generator.item(task, 300, 0.5, 0, seed=s).answer for s in range(6)}
    assert len(by_seed) == 6


@pytest.mark.parametrize("task", BABI_TASKS)
def test_index_changes_the_story(task, generator):
    stories = {tuple(inserted_sentences(generator.item(task, 600, None, i))) for i in range(6)}
    assert len(stories) >= 5


@pytest.mark.parametrize("task", TASKS)
def test_content_does_not_depend_on_the_tokenizer(task, generators, tokenizers):
    for index in range(3):
        items = [gen.item(task, 1000, depth_of(task), index, seed=4) for gen in generators]
        assert items[0].answer == items[1].answer
        assert items[0].prompt == items[1].prompt
        texts = [tok.decode(it.input_ids) for tok, it in zip(tokenizers, items, strict=True)]
        for sentence in inserted_sentences(items[0], seed=4):
            assert all(" " + sentence in text for text in texts)
        # The prose starts at the same sentence too.
        starts = []
        for gen, tok, it in zip(generators, tokenizers, items, strict=True):
            prose, _ = split_item(tok, it, seed=4)
            starts.append(find_window(gen.filler if task == "niah1" else gen.prose, prose)[0])
        assert starts[0] == starts[1]
    assert tokenizers[0].vocab_size != tokenizers[1].vocab_size


def test_items_are_depth_major(generator):
    items = generator.items("niah2", 300, [0.0, 0.5, 1.0], 2, seed=3)
    expected = [(d, i) for d in (0.0, 0.5, 1.0) for i in range(2)]
    assert [(it.depth, it.index) for it in items] == expected
    for it in items:
        single = generator.item("niah2", 300, it.depth, it.index, seed=3)
        assert np.array_equal(it.input_ids, single.input_ids)


# ----------------------------------------------------------------------------- Haystack


def test_haystack_tokens_and_starts(tokenizer):
    sentences = ["One small cat sat.", "Two dogs ran far away!", "Why?", "The end of it."]
    haystack = Haystack(sentences, tokenizer)
    ids = [tokenizer.encode(" " + s) for s in sentences]
    assert haystack.num_sentences == 4
    assert haystack.tokens.tolist() == [t for seq in ids for t in seq]
    assert haystack.starts.tolist() == np.cumsum([0] + [len(seq) for seq in ids]).tolist()
    from_docs = Haystack.from_documents(["One small cat sat. Two dogs ran\nfar away!",
                                         "Why? The end of it."], tokenizer)
    assert np.array_equal(from_docs.tokens, haystack.tokens)
    with pytest.raises(ValueError, match="non-empty"):
        Haystack([], tokenizer)


def test_haystack_take_wraps_around_with_sentence_boundaries(tokenizer):
    sentences = ["One small cat sat.", "Two dogs ran far away!", "Why?", "The end of it.",
                 "A fifth sentence closes the text."]
    haystack = Haystack(sentences, tokenizer)
    ids = [tokenizer.encode(" " + s) for s in sentences]
    total = len(haystack.tokens)
    for first in range(5):
        # The sentences from `first` on, cyclically, as far as three laps.
        cycle = (ids[first:] + ids[:first]) * 3
        stream = [t for seq in cycle for t in seq]
        sentence_starts = np.cumsum([0] + [len(seq) for seq in cycle])
        for num_tokens in (0, 1, 5, len(ids[first]), total - 1, total, total + 3, 2 * total + 7):
            tokens, bounds = haystack.take(first, num_tokens)
            assert tokens.dtype == np.int64
            assert tokens.tolist() == stream[:num_tokens]
            expected = [int(s) for s in sentence_starts if s < num_tokens] + [num_tokens]
            assert bounds.tolist() == expected
            assert bounds[0] == 0 and bounds[-1] == num_tokens
            assert np.all(np.diff(bounds) > 0)
            for b in bounds[:-1]:  # each boundary starts a sentence
                assert any(tokens[b:b + len(seq)].tolist() == seq[:num_tokens - b] for seq in ids)


def test_split_sentences():
    text = ('He said "Stop!" Then he left.\nWhy?  (Nobody knew.) It cost 3.5 pounds!\n\n'
            "'Fine.' The end")
    assert split_sentences(text) == ['He said "Stop!"', "Then he left.", "Why?",
                                     "(Nobody knew.)", "It cost 3.5 pounds!", "'Fine.'",
                                     "The end"]
    assert split_sentences("  \n ") == []
    assert split_sentences("No end mark here") == ["No end mark here"]


# ----------------------------------------------------------------------------- TaskBatches


def task_of(prompt):
    """The task of a rendered prompt (the text after the last "Question: ")."""
    forms = [("niah1", "What is the pass key?"), ("niah2", "What is the special magic number?"),
             (MQ_TASK, "What is the special magic number for "),
             ("niah3", "What is the special magic uuid?"), ("qa3", "Where was the "),
             ("qa2", "Where is the "), ("qa1", "Where is "), ("qa5", "Who "),
             ("qa5", "What did "), ("qa4", "What is ")]
    return next(task for task, start in forms if prompt.startswith(start))


def read_rows(tokenizer, ids, labels):
    """(task, context text, answer text) of each row, checking the labels: -100 but on a suffix
    equal to the ids there (niah_mq: and on its answers in the context)."""
    rows = []
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
        scored = [i for i, label in enumerate(row_labels) if label != -100]
        assert all(row_labels[i] == row_ids[i] for i in scored)
        n = next(k for k in range(1, len(scored) + 1)
                 if k == len(scored) or scored[-k - 1] != len(row_ids) - k - 1)
        assert scored[-n:] == list(range(len(row_ids) - n, len(row_ids)))
        # Scored tokens in the context (niah_mq's answered questions): each run is a number
        # right after its question's cue.
        runs = np.split(np.array(scored[:-n]), np.flatnonzero(np.diff(scored[:-n]) > 1) + 1)
        for run in (r for r in runs if len(r)):
            assert re.fullmatch(r" \d{7}", tokenizer.decode(row_ids[run[0]:run[-1] + 1]))
            assert re.search(r"magic number for \w+ is$", tokenizer.decode(row_ids[:run[0]]))
        assert row_labels[-n:] == row_ids[-n:]
        context, answer = tokenizer.decode(row_ids[:-n]), tokenizer.decode(row_ids[-n:])
        prompt = context.rsplit("\nQuestion: ", 1)[1]
        rows.append((task_of(prompt), context, answer))
    return rows


def test_task_batches_labels_score_only_the_answer(generator, tokenizer):
    batches = TaskBatches(generator, TASKS)
    ids, labels = batches(1000, 24, step=3, seed=5)
    assert ids.shape == labels.shape == (24, 1000)
    assert ids.dtype == labels.dtype == torch.int64
    values = {"niah1": r"The pass key is (\d+)\.", "niah2": r"The special magic number is (\d+)\.",
              "niah3": r"The special magic uuid is ([0-9a-f-]+)\."}
    rows = read_rows(tokenizer, ids, labels)
    for task, context, answer in rows:
        assert answer.startswith(" ") and answer.strip() == answer[1:]
        if task in NEEDLE_TASKS:
            assert re.findall(values[task], context) == [answer[1:]]
        elif task == MQ_TASK:
            key = context.rsplit("magic number for ", 1)[1].removesuffix(" is")
            assert re.findall(rf"The special magic number for {key} is (\d+)\.", context) == [
                answer[1:]]
        else:
            assert re.search(rf"\b{answer[1:]}\b", context.rsplit("\nQuestion: ", 1)[0])
    assert len({task for task, _, _ in rows}) >= 6


def test_task_batches_score_context_labels_everything(generator):
    ids, labels = TaskBatches(generator, ["niah2", "qa2"], score_context=True)(400, 4, 0, 0)
    assert torch.equal(ids, labels)
    plain_ids, _ = TaskBatches(generator, ["niah2", "qa2"])(400, 4, 0, 0)
    assert torch.equal(ids, plain_ids)


def test_task_batches_are_a_pure_function_of_step_seed_rank(generator):
    batches = TaskBatches(generator, TASKS)
    ids, labels = batches(1000, 4, step=7, seed=1)
    again = TaskBatches(TaskGenerator(generator.tokenizer, PROSE), TASKS)(1000, 4, step=7, seed=1)
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels)
    assert not torch.equal(batches(1000, 4, step=8, seed=1)[0], ids)
    assert not torch.equal(batches(1000, 4, step=7, seed=2)[0], ids)
    for step in (0, 3):
        whole = batches(1000, 6, step, seed=1)
        parts = [batches(1000, 3, step, seed=1, rank=rank, world_size=2) for rank in (0, 1)]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_task_batches_draw_tasks_by_weight(generator, tokenizer):
    def shares(tasks, weights):
        batches = TaskBatches(generator, tasks, weights)
        counts = Counter()
        for step in range(10):
            counts.update(task for task, _, _ in read_rows(tokenizer, *batches(320, 20, step, 0)))
        assert sum(counts.values()) == 200
        return {task: counts[task] / 200 for task in tasks}

    assert shares(["niah1", "qa1"], [19, 1])["niah1"] >= 0.85
    assert shares(["niah1", "qa1"], [1, 19.0])["qa1"] >= 0.85
    assert 0.35 <= shares(["niah1", "qa1"], None)["niah1"] <= 0.65


def test_task_batches_draw_needle_depths_across_the_context(generator):
    ids, _ = TaskBatches(generator, ["niah2"])(400, 40, 0, 0)
    needle_start = generator.tokenizer.encode(" The special magic number is")
    where = []
    for row in ids.tolist():
        starts = [i for i in range(len(row)) if row[i:i + len(needle_start)] == needle_start]
        where.append(starts[0] / len(row))
    assert min(where) < 0.2 and max(where) > 0.7


@pytest.mark.parametrize("tasks, weights", [
    ([], None), (["qa9"], None), (["niah1", "nope"], None), (["niah1"], [1, 2]),
    (["niah1", "qa1"], [1]), (["niah1", "qa1"], [1, 0]), (["niah1", "qa1"], [1, -2]),
    (["niah1", "qa1"], [1, True]), (["niah1", "qa1"], [1, "2"]), (["niah1"], [float("nan")]),
    (["niah1", "qa1"], [1, float("inf")]),
])
def test_task_batches_reject_bad_tasks_and_weights(generator, tasks, weights):
    with pytest.raises(ValueError):
        TaskBatches(generator, tasks, weights)


def test_needle_tasks_and_only_they_take_a_depth():
    assert [t for t in TASKS if needs_depth(t)] == list(NEEDLE_TASKS)
    assert not any(needs_depth(t) for t in BABI_TASKS)
    with pytest.raises(ValueError, match="unknown task 'niah4'"):
        needs_depth("niah4")


def test_task_mix_errors_name_the_field_with_its_prefix():
    check_task_mix(["niah1", "qa1"], [1, 2.5])
    check_task_mix(("qa2",), None)
    with pytest.raises(ValueError, match=r"^task\.tasks must be a non-empty list of .*'nope'"):
        check_task_mix(["niah1", "nope"], None, "task.")
    with pytest.raises(ValueError,
                       match=r"^task\.weights must be a non-empty list of finite numbers"):
        check_task_mix(["niah1"], [float("nan")], "task.")
    with pytest.raises(ValueError, match=r"^weights must be one number per task \(2 tasks\)"):
        check_task_mix(["niah1", "qa1"], [1])


def test_task_batches_too_short_sequences_raise(generator):
    with pytest.raises(ValueError, match="length 30"):
        TaskBatches(generator, ["qa3"])(30, 2, 0, 0)


# ----------------------------------------------------------------------------- errors, score


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="niah4", length=300, depth=0.5), "unknown task"),
    (dict(task="niah1", length=300), "depth"),
    (dict(task="niah2", length=300, depth=-0.01), "depth"),
    (dict(task="niah3", length=300, depth=1.01), "depth"),
    (dict(task="niah1", length=300, depth=True), "depth"),
    (dict(task="niah1", length=300, depth="0.5"), "depth"),
    (dict(task="qa1", length=300, depth=0.5), "depth must be None"),
    (dict(task="qa4", length=300, depth=0.0), "depth must be None"),
    (dict(task="niah1", length=40, depth=0.5), "length 40"),
    (dict(task="qa3", length=60), "length 60"),
    (dict(task="niah2", length=0, depth=0.5), "length"),
    (dict(task="niah2", length=300, depth=0.5, index=-1), "index"),
    (dict(task="niah2", length=300, depth=0.5, seed=-1), "seed"),
    (dict(task="niah2", length=300.0, depth=0.5), "length"),
])
def test_item_argument_errors(generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator.item(**kwargs)


def test_reserving_the_answer_can_make_a_length_too_short(generator):
    def fits(length):
        try:
            generator.item("niah2", length, 0.5)
        except ValueError as e:
            assert f"length {length} " in str(e)
            return False
        return True

    shortest = next(n for n in range(20, 300) if fits(n))
    assert len(generator.item("niah2", shortest, 0.5).input_ids) == shortest
    with pytest.raises(ValueError, match=f"length {shortest} .*question and answer alone"):
        generator.item("niah2", shortest, 0.5, reserve_answer=True)


def test_score_is_whitespace_insensitive_exact_match():
    assert score("12345", "12345")
    assert score(" 12345\n", "12345")
    assert score("kitchen", " kitchen ")
    assert not score("123", "1234")  # not a prefix match
    assert not score("1234", "123")
    assert not score("Kitchen", "kitchen")
    assert not score("", "1")
