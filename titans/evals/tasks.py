"""Long-context tasks rendered to an exact number of tokens: needle-in-a-haystack and bAbI-style
reasoning hidden in long prose, with the question at the end.

Tasks (after RULER's S-NIAH and BABILong; the public datasets are not reachable offline, so the
project generates its own):

- ``niah1`` (S-NIAH-1, passkey): a 5-digit pass key hidden in the repeated filler sentences of
  the passkey-retrieval test ("The grass is green. The sky is blue. ...").
- ``niah2`` (S-NIAH-2): a 7-digit "special magic number" hidden in real prose.
- ``niah3`` (S-NIAH-3): a UUID hidden in real prose.
- ``qa1`` .. ``qa5``: a generated bAbI story (:mod:`titans.evals.babi`) whose facts are scattered,
  in order, through real prose.
- ``niah_mq`` (after RULER's multi-query NIAH): :data:`MQ_NEEDLES` special magic numbers, each
  for its own key word, scattered through real prose, then one question per needle in a random
  order; every question but the last is followed by its answer. A training task: each of its
  answers is scored (:class:`TaskBatches`), so an item teaches retrieval several times where a
  single-needle item teaches it once; as an evaluation item only the last answer counts.

An item is ``[prose with the needle or facts inserted between sentences] + "\\nQuestion: ...
\\nAnswer:"`` (needle tasks go on with the needle's own words, "The pass key is", as RULER's
prompts do), exactly ``length`` tokens, and its answer is the text of the continuation (a leading
space, then the value). The needle goes at the sentence boundary nearest to ``depth`` (0 = before
the first prose token, 1 = after the last) of the prose part.

Determinism: an item is drawn from ``random.Random`` seeded with the string
``"{seed}/{task}/{length}/{depth}/{index}"`` (hashed with SHA-512 by ``random``, so it does not
depend on ``PYTHONHASHSEED``, the platform or the tokenizer): the needle value, the bAbI story,
the sentence the prose starts at and the relative places of scattered facts are the same for every
model and tokenizer; only how much prose fills ``length`` tokens depends on the tokenizer. Models
that share a tokenizer see identical token sequences.

Pieces are tokenized separately and concatenated as ids (each sentence as ``" " + sentence``), so
the needle has the same ids wherever it lands and lengths are exact without re-tokenizing.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from titans.checks import check_int, check_number, check_numbers
from titans.evals.babi import BABI_TASKS, generate_story
from titans.models.lm import IGNORE_INDEX

NEEDLE_TASKS = ("niah1", "niah2", "niah3")
MQ_TASK = "niah_mq"
TASKS = NEEDLE_TASKS + BABI_TASKS + (MQ_TASK,)

# Needles of a niah_mq item, and the key words they are drawn from (one token each with bpe:8192
# and most vocabularies; distinct within an item).
MQ_NEEDLES = 4
MQ_KEYS = ("apple", "river", "tiger", "silver", "garden", "window", "castle", "ocean", "pencil",
           "forest", "mirror", "rocket", "violin", "desert", "candle", "island", "bridge",
           "dragon", "marble", "falcon", "harbor", "lemon", "meadow", "planet", "saddle",
           "tunnel", "wagon", "anchor", "basket", "cotton", "ladder", "pepper")

# The haystack of the passkey-retrieval test (Mohtashami & Jaggi, 2023), used by S-NIAH-1.
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.")

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before spaces;
# the quote or bracket is matched by a lookbehind so that it stays with its sentence.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


class TaskTokenizer(Protocol):
    """What the tasks need of a tokenizer (``titans.data.Tokenizer`` has it)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, runs of whitespace (line breaks included) collapsed to a space."""
    text = " ".join(text.split())
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


class Haystack:
    """Prose cut into sentences and tokenized once; items take consecutive sentences from it.

    tokens: [N] int64 ids of all sentences, each encoded as ``" " + sentence``.
    starts: [S + 1] int64 index in ``tokens`` where each sentence starts, then N.
    """

    def __init__(self, sentences: Sequence[str], tokenizer: TaskTokenizer) -> None:
        encoded = [ids for ids in tokenizer.encode_batch([" " + s for s in sentences]) if ids]
        if not encoded:
            raise ValueError("a haystack needs at least one non-empty sentence")
        self.tokens = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64)
        self.starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in encoded], out=self.starts[1:])

    @classmethod
    def from_documents(cls, documents: Iterable[str], tokenizer: TaskTokenizer) -> Haystack:
        """All sentences of ``documents``, in order."""
        return cls([s for doc in documents for s in split_sentences(doc)], tokenizer)

    @property
    def num_sentences(self) -> int:
        return len(self.starts) - 1

    def take(self, first_sentence: int, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """``num_tokens`` tokens starting at sentence ``first_sentence``, wrapping around to the
        first sentence when the prose runs out (a 1M-token haystack reuses a shorter text).

        Returns (tokens [num_tokens] int64, boundaries [k] int64): the positions in ``tokens``
        where a sentence starts, plus ``num_tokens`` itself (0 is always a boundary); the last
        sentence may be cut.
        """
        total = len(self.tokens)
        offset = int(self.starts[first_sentence % self.num_sentences])
        tokens = self.tokens[(offset + np.arange(num_tokens)) % total]
        relative = (self.starts[:-1] - offset) % total  # sentence starts seen from the offset
        laps = np.arange(-(-num_tokens // total)) * total
        bounds = (relative[None, :] + laps[:, None]).ravel()
        bounds = np.sort(bounds[bounds < num_tokens])
        return tokens, np.append(bounds, num_tokens)


@dataclass(frozen=True)
class TaskItem:
    """One rendered item.

    input_ids: [length] int64 context: prose with the needle / facts inserted, then the question.
    answer: the expected text of the continuation, without its leading space.
    answer_ids: ids of ``" " + answer``, the continuation a model is trained to produce.
    positions: index in ``input_ids`` where the needle (or each fact, in order) starts.
    depth: the requested needle depth (None for tasks whose needles or facts are scattered).
    prompt: the text after the first ``"\nQuestion: "``, which ends the context (question and
        answer cue; for niah_mq the earlier questions and answers too).
    answer_spans: ``(start, end)`` in ``input_ids`` of the answers given in the context (niah_mq's
        earlier answers, each ``" " + value``); training scores them with the final answer.
    """

    task: str
    index: int
    length: int
    depth: float | None
    input_ids: np.ndarray
    answer: str
    answer_ids: tuple[int, ...]
    positions: tuple[int, ...]
    prompt: str
    answer_spans: tuple[tuple[int, int], ...] = ()


class TaskGenerator:
    """Renders items of every task with one tokenizer and one body of prose.

    documents: the prose of niah2/niah3/qa* haystacks (held-out documents for evaluation, the
    training split for fine-tuning). niah1 always uses :data:`FILLER`.
    """

    def __init__(self, tokenizer: TaskTokenizer, documents: Iterable[str]) -> None:
        self.tokenizer = tokenizer
        self.prose = Haystack.from_documents(documents, tokenizer)
        self.filler = Haystack(FILLER, tokenizer)

    def item(
        self,
        task: str,
        length: int,
        depth: float | None = None,
        index: int = 0,
        seed: int = 0,
        reserve_answer: bool = False,
    ) -> TaskItem:
        """Item ``index`` of ``task`` with a context of exactly ``length`` tokens.

        depth: where the needle goes, in [0, 1]; required for needle tasks, None for bAbI tasks.
        reserve_answer: make the context ``length - len(answer_ids)`` tokens, so that context +
            answer is ``length`` (training sequences).
        """
        needle = needs_depth(task)  # an unknown task raises here
        for name, value, low in (("length", length, 1), ("index", index, 0), ("seed", seed, 0)):
            check_int(name, value, low, numpy=True)
        if needle:
            check_number(f"{task}'s depth", depth, "in [0, 1]", lambda d: 0 <= d <= 1)
            depth = float(depth)
        elif depth is not None:
            raise ValueError(f"{task} scatters its facts through the prose: depth must be None, "
                             f"got {depth!r}")
        rng = random.Random(f"{seed}/{task}/{length}/{depth}/{index}")
        inserts, questions = _content(task, rng)
        haystack = self.filler if task == "niah1" else self.prose
        first_sentence = rng.randrange(haystack.num_sentences)
        # Fractions of the prose before each insert: drawn before any tokenization, so they are
        # the same for every tokenizer.
        fractions = [depth] if depth is not None else sorted(rng.random() for _ in inserts)

        insert_ids = self.tokenizer.encode_batch([" " + s for s in inserts])
        # Questions and answers are encoded apart, so an answer's ids are the same in the context
        # (niah_mq's earlier answers) as in the continuation.
        *answered, (last_prompt, answer) = questions
        encoded = self.tokenizer.encode_batch(
            [piece for p, a in answered for piece in (f"\nQuestion: {p}", " " + a)]
            + [f"\nQuestion: {last_prompt}", " " + answer])
        question_ids: list[int] = []
        spans = []  # of the answered questions' answers, within question_ids
        for q_ids, a_ids in zip(encoded[:-2:2], encoded[1:-2:2], strict=True):
            question_ids += q_ids
            spans.append((len(question_ids), len(question_ids) + len(a_ids)))
            question_ids += a_ids
        question_ids += encoded[-2]
        answer_ids = encoded[-1]
        prompt = "".join(f"{p} {a}\nQuestion: " for p, a in answered) + last_prompt
        context_len = length - len(answer_ids) if reserve_answer else length
        prose_len = context_len - sum(map(len, insert_ids)) - len(question_ids)
        if prose_len < 0:
            raise ValueError(
                f"length {length} is too short for {task} item {index}: its needle/facts, "
                f"question{' and answer' if reserve_answer else ''} alone take "
                f"{length - prose_len} tokens"
            )
        prose, bounds = haystack.take(first_sentence, prose_len)
        # The sentence boundary nearest to each fraction (the first one on ties).
        cuts = [int(bounds[np.argmin(np.abs(bounds - f * prose_len))]) for f in fractions]
        parts, positions, done, filled = [], [], 0, 0
        for cut, ids in zip(cuts, insert_ids, strict=True):
            parts.append(prose[done:cut])
            filled += cut - done
            positions.append(filled)
            parts.append(np.asarray(ids, dtype=np.int64))
            filled += len(ids)
            done = cut
        parts += [prose[done:], np.asarray(question_ids, dtype=np.int64)]
        input_ids = np.concatenate(parts)
        offset = len(input_ids) - len(question_ids)
        return TaskItem(task, index, length, depth, input_ids, answer, tuple(answer_ids),
                        tuple(positions), prompt,
                        tuple((offset + a, offset + b) for a, b in spans))

    def items(
        self,
        task: str,
        length: int,
        depths: Sequence[float | None],
        num_items: int,
        seed: int = 0,
    ) -> list[TaskItem]:
        """``num_items`` items per depth (bAbI tasks: ``depths=[None]``), depth-major."""
        return [self.item(task, length, depth, i, seed) for depth in depths
                for i in range(num_items)]


class TaskBatches:
    """Fine-tuning batches of task items for :func:`titans.train.train` (a ``BatchSource``).

    Row r of global batch ``step`` is an item of a task drawn from ``tasks`` (uniformly, or in
    proportion to ``weights``; needle depth uniform in [0, 1]), rendered to exactly ``seq_len``
    tokens including its answer, with labels -100 everywhere but the answer tokens: the loss is
    the answer's cross-entropy given the context, as in the paper's fine-tuned BABILong setting
    (``score_context=True`` scores every token instead). A pure function of
    ``(step, seed, rank, world_size)``, so a resumed run sees the data of an uninterrupted one.
    Items are drawn with seed ``seed + 1_000_003`` so they never coincide with evaluation items
    of a small seed, and from the generator's own prose (give it the training documents).
    """

    def __init__(self, generator: TaskGenerator, tasks: Sequence[str],
                 weights: Sequence[float] | None = None, score_context: bool = False) -> None:
        check_task_mix(tasks, weights)
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.generator = generator
        self.tasks = tuple(tasks)
        self.score_context = score_context

    def __call__(
        self, seq_len: int, batch_size: int, step: int, seed: int, rank: int = 0,
        world_size: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """[batch_size, seq_len] input ids and labels (int64, CPU)."""
        ids = np.empty((batch_size, seq_len), dtype=np.int64)
        labels = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int64)
        for r in range(batch_size):
            row = (step * world_size + rank) * batch_size + r
            rng = random.Random(f"batch/{seed}/{row}")
            task = rng.choices(self.tasks, self.weights)[0]
            depth = rng.random() if needs_depth(task) else None
            item = self.generator.item(task, seq_len, depth, row, seed + 1_000_003,
                                       reserve_answer=True)
            n = len(item.answer_ids)
            ids[r] = np.concatenate([item.input_ids, item.answer_ids])
            if self.score_context:
                labels[r] = ids[r]
            else:
                labels[r, seq_len - n:] = item.answer_ids
                for a, b in item.answer_spans:
                    labels[r, a:b] = ids[r, a:b]
        return torch.from_numpy(ids), torch.from_numpy(labels)


def score(prediction: str, answer: str) -> bool:
    """Exact match of a greedy continuation with the answer, ignoring surrounding whitespace."""
    return prediction.strip() == answer.strip()


def _content(task: str, rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """(sentences to insert, [(prompt, answer), ...]) of a task: the questions at the end, each
    but the last answered in the context. Needle prompts end by repeating the needle's own words,
    as RULER's do, so the answer is what followed them in the context."""
    if task == "niah1":
        key = str(rng.randrange(10_000, 100_000))
        return ([f"The pass key is {key}. Remember it. {key} is the pass key."],
                [("What is the pass key?\nAnswer: The pass key is", key)])
    if task == "niah2":
        number = str(rng.randrange(1_000_000, 10_000_000))
        return ([f"The special magic number is {number}."],
                [("What is the special magic number?\nAnswer: The special magic number is",
                  number)])
    if task == "niah3":
        value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return ([f"The special magic uuid is {value}."],
                [("What is the special magic uuid?\nAnswer: The special magic uuid is", value)])
    if task == MQ_TASK:
        keys = rng.sample(MQ_KEYS, MQ_NEEDLES)
        numbers = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
        order = rng.sample(range(MQ_NEEDLES), MQ_NEEDLES)
        return ([f"The special magic number for {k} is {n}." for k, n in zip(keys, numbers,
                                                                                strict=True)],
                [(f"What is the special magic number for {keys[i]}?\nAnswer: The special magic "
                  f"number for {keys[i]} is", numbers[i]) for i in order])
    story = generate_story(task, rng)
    return list(story.facts), [(f"{story.question}\nAnswer:", story.answer)]


def needs_depth(task: str) -> bool:
    """Whether ``task``'s items hide a needle at a depth the caller chooses (the needle tasks),
    rather than scatter their facts through the prose (the bAbI tasks, which take no depth).
    An unknown task raises ``ValueError``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")
    return task in NEEDLE_TASKS


def check_task_mix(tasks: Sequence[str], weights: Sequence[float] | None, prefix: str = "") -> None:
    """Raise ``ValueError`` unless ``tasks`` is a non-empty list of :data:`TASKS` and ``weights``
    None (uniform) or one finite number > 0 per task. ``prefix`` goes before the field names in
    the messages (``"task."`` for a config file's task section)."""
    if not isinstance(tasks, (list, tuple)) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"{prefix}tasks must be a non-empty list of {TASKS}, got {tasks!r}")
    if weights is None:
        return
    check_numbers(f"{prefix}weights", weights, "> 0", lambda w: w > 0)
    if len(weights) != len(tasks):
        raise ValueError(f"{prefix}weights must be one number per task ({len(tasks)} tasks), "
                         f"got {weights!r}")
