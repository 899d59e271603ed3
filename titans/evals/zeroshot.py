"""Zero-shot benchmarks of the paper's Table 1, with prompts and metrics exactly as
lm-evaluation-harness 0.4 defines them, scored by :mod:`titans.evals.scoring`.

Each task turns a document (a row of the dataset lm-eval reads, from
:func:`titans.data.benchmarks.load_benchmark`) into a :class:`Question`: one (context,
continuation) request per option, as lm-eval's task YAML builds them (``doc_to_text``,
``doc_to_choice``, ``target_delimiter=" "``, ``doc_to_target``):

- piqa: ``"Question: {goal}\\nAnswer:"`` + ``" " + sol1 | sol2``;
- hellaswag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` +
  ``" " + preprocess(ending)`` (lm-eval's ``utils.preprocess``: WikiHow ``[title]`` and bracket
  artifacts removed);
- winogrande (partial evaluation): the context is the sentence up to the blank with one option
  filled in, the continuation the rest of the sentence after the blank, shared by both options;
- arc_easy / arc_challenge: ``"Question: {question}\\nAnswer:"`` + ``" " + choice``;
- social_iqa: ``"Q: {context} {question}\\nA:"`` + ``" " + answerA | answerB | answerC``;
- boolq: ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` + ``" no" | " yes"``;
- lambada_openai: the passage up to its last space + ``" " + last word``.

Metrics, as lm-eval's ``ConfigurableTask.process_results`` and aggregations compute them:
``acc`` = the option of highest log-likelihood is the gold one (ties: the first); ``acc_norm``
the same with each log-likelihood divided by the character length of the option's
``doc_to_choice`` string; means over documents with the standard error
``sample_stddev / sqrt(n)``; LAMBADA's ``acc`` = the last word is the greedy continuation, and
``perplexity`` = ``exp(-mean log-likelihood of the last word)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from titans.evals.generation import TextTokenizer
from titans.evals.scoring import continuation_logprobs, encode_pair
from titans.models.lm import TitansLM

BATCH_SIZE = 8  # continuations of one context scored side by side
PIECE_LEN = 2048  # tokens per streamed piece of a context
DOCS_PER_CALL = 64  # documents scored per call: the granularity of progress reports


@dataclass(frozen=True)
class Question:
    """One document's scoring requests, one per option.

    contexts, continuations: the text of each option's (context, continuation) request;
    choices: lm-eval's ``doc_to_choice`` strings, whose character lengths divide the
    log-likelihoods for ``acc_norm`` (empty for LAMBADA); gold: index of the right option.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class ZeroShotTask:
    """A benchmark as lm-eval runs it.

    name: lm-eval's task name (also the key of :data:`titans.data.benchmarks.BENCHMARKS`);
    metrics: what :func:`evaluate_zeroshot` reports; paper_metrics: the ones the paper's Table 1
    prints; question: document -> :class:`Question`.
    """

    name: str
    metrics: tuple[str, ...]
    paper_metrics: tuple[str, ...]
    question: Callable[[dict[str, Any]], Question]


def _choice_question(context: str, choices: Sequence[str], gold: int) -> Question:
    """A question whose options share ``context`` and continue with ``" " + choice``."""
    return Question((context,) * len(choices), tuple(f" {c}" for c in choices), tuple(choices),
                    gold)


def _hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess``."""
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _piqa(doc: dict[str, Any]) -> Question:
    return _choice_question(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]],
                            doc["label"])


def _hellaswag(doc: dict[str, Any]) -> Question:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return _choice_question(_hellaswag_preprocess(doc["activity_label"] + ": " + context),
                            [_hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _winogrande(doc: dict[str, Any]) -> Question:
    blank = doc["sentence"].index("_")
    contexts = tuple(doc["sentence"][:blank] + option for option in (doc["option1"],
                                                                     doc["option2"]))
    rest = " " + doc["sentence"][blank + 1:].strip()
    return Question(contexts, (rest, rest), contexts, {"1": 0, "2": 1}[doc["answer"]])


def _arc(doc: dict[str, Any]) -> Question:
    return _choice_question(f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"],
                            doc["choices"]["label"].index(doc["answerKey"]))


def _social_iqa(doc: dict[str, Any]) -> Question:
    return _choice_question(f"Q: {doc['context']} {doc['question']}\nA:",
                            [doc["answerA"], doc["answerB"], doc["answerC"]],
                            int(doc["label"]) - 1)


def _boolq(doc: dict[str, Any]) -> Question:
    return _choice_question(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",
                            ["no", "yes"], doc["label"])


def _lambada(doc: dict[str, Any]) -> Question:
    words = doc["text"].split(" ")
    return Question((" ".join(words[:-1]),), (" " + words[-1],), (), 0)


_MC = ("acc", "acc_norm")
# In the order of the paper's Table 1. WinoGrande's options differ in their contexts, which
# acc_norm does not measure (its lm-eval task defines acc only).
ZEROSHOT_TASKS: dict[str, ZeroShotTask] = {t.name: t for t in (
    ZeroShotTask("lambada_openai", ("perplexity", "acc"), ("perplexity", "acc"), _lambada),
    ZeroShotTask("piqa", _MC, ("acc",), _piqa),
    ZeroShotTask("hellaswag", _MC, ("acc_norm",), _hellaswag),
    ZeroShotTask("winogrande", ("acc",), ("acc",), _winogrande),
    ZeroShotTask("arc_easy", _MC, ("acc",), _arc),
    ZeroShotTask("arc_challenge", _MC, ("acc_norm",), _arc),
    ZeroShotTask("social_iqa", _MC, ("acc",), _social_iqa),
    ZeroShotTask("boolq", _MC, ("acc",), _boolq),
)}


def chance(task: str, docs: Sequence[dict[str, Any]]) -> float | None:
    """Expected accuracy of a uniform random guess over ``docs`` (mean of 1 / options); None for
    LAMBADA, whose answer is any word."""
    if task == "lambada_openai":
        return None
    questions = [ZEROSHOT_TASKS[task].question(doc) for doc in docs]
    return sum(1 / len(q.contexts) for q in questions) / len(questions)


def document_metrics(
    task: str, question: Question, results: Sequence[tuple[float, bool]]
) -> dict[str, float]:
    """A document's metrics from its options' (log-likelihood, is greedy) results, as lm-eval's
    ``process_results``: ``acc`` (and ``acc_norm``) 1.0 or 0.0; LAMBADA's ``perplexity`` item is
    the log-likelihood itself (aggregated by :func:`aggregate`)."""
    if task == "lambada_openai":
        (loglikelihood, greedy), = results
        return {"perplexity": loglikelihood, "acc": float(greedy)}
    lls = np.array([ll for ll, _ in results])
    metrics = {"acc": 1.0 if np.argmax(lls) == question.gold else 0.0}
    if "acc_norm" in ZEROSHOT_TASKS[task].metrics:
        lengths = np.array([float(len(c)) for c in question.choices])
        metrics["acc_norm"] = 1.0 if np.argmax(lls / lengths) == question.gold else 0.0
    return metrics


def aggregate(per_document: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """lm-eval's aggregation of per-document metrics: the mean of each (``perplexity``:
    ``exp(-mean)``), and ``<metric>_stderr`` = sample standard deviation / sqrt(n) for the means
    (None for one document, and for perplexity, whose lm-eval error is a bootstrap)."""
    n = len(per_document)
    out: dict[str, float | None] = {}
    for metric in per_document[0]:
        values = [d[metric] for d in per_document]
        mean = sum(values) / n
        if metric == "perplexity":
            out[metric] = math.exp(-mean)
            continue
        out[metric] = mean
        out[f"{metric}_stderr"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                                   / math.sqrt(n) if n > 1 else None)
    return out


def evaluate_zeroshot(
    model: TitansLM,
    tokenizer: TextTokenizer,
    task: str,
    docs: Sequence[dict[str, Any]],
    batch_size: int = BATCH_SIZE,
    piece_len: int = PIECE_LEN,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float | None]:
    """Metrics of ``model`` on ``docs`` of ``task`` (a key of :data:`ZEROSHOT_TASKS`), zero-shot.

    Every option's request is encoded with :func:`~titans.evals.scoring.encode_pair` (lm-eval's
    split of context and continuation ids) and scored with
    :func:`~titans.evals.scoring.continuation_logprobs` (each context read once, with state
    carried through ``piece_len``-token pieces; ``batch_size`` continuations side by side).
    ``progress`` is called with the number of documents done after every
    :data:`DOCS_PER_CALL`. Returns :func:`aggregate`'s metrics plus ``n`` (documents).
    """
    if not docs:
        raise ValueError(f"no documents of {task} to evaluate")
    questions = [ZEROSHOT_TASKS[task].question(doc) for doc in docs]
    per_document = []
    for start in range(0, len(questions), DOCS_PER_CALL):
        group = questions[start:start + DOCS_PER_CALL]
        requests = [encode_pair(tokenizer.encode, context, continuation, tokenizer.eos_id)
                    for q in group
                    for context, continuation in zip(q.contexts, q.continuations, strict=True)]
        results = iter(continuation_logprobs(model, requests, batch_size, piece_len))
        for q in group:
            per_document.append(document_metrics(task, q, [next(results) for _ in q.contexts]))
        if progress is not None:
            progress(len(group))
    return {**aggregate(per_document), "n": len(questions)}
