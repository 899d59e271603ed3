"""Evaluation: perplexity and bits-per-byte at several context lengths, text generation, and
long-context tasks (needle-in-a-haystack, bAbI-style reasoning) streamed to any length."""

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

__all__ = [
    "BABI_TASKS", "NEEDLE_TASKS", "TASKS", "Haystack", "Story", "TaskBatches", "TaskGenerator",
    "TaskItem", "TextTokenizer", "answer_items", "evaluate_perplexity", "evaluate_task",
    "generate_story", "generate_text", "score",
]
