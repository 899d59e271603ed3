"""Evaluation: perplexity and bits-per-byte at several context lengths, text generation,
long-context tasks (needle-in-a-haystack, bAbI-style reasoning) streamed to any length, and the
zero-shot benchmarks of the paper's Table 1 with lm-eval's prompts and metrics."""

from titans.evals.babi import BABI_TASKS, Story, generate_story
from titans.evals.generation import TextTokenizer, generate_text
from titans.evals.long_context import answer_items, evaluate_task
from titans.evals.perplexity import evaluate_perplexity
from titans.evals.tasks import (
    NEEDLE_TASKS,
    TASKS,
    Haystack,
    TaskBatches,
    TaskGenerator,
    TaskItem,
    score,
)
from titans.evals.zeroshot import ZEROSHOT_TASKS, evaluate_zeroshot

__all__ = [
    "BABI_TASKS", "NEEDLE_TASKS", "TASKS", "ZEROSHOT_TASKS", "Haystack", "Story", "TaskBatches",
    "TaskGenerator", "TaskItem", "TextTokenizer", "answer_items", "evaluate_perplexity",
    "evaluate_task", "evaluate_zeroshot", "generate_story", "generate_text", "score",
]
