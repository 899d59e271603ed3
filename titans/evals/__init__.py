"""Evaluation: perplexity and bits-per-byte at several context lengths, text generation."""

from titans.evals.generation import TextTokenizer, generate_text
from titans.evals.perplexity import evaluate_perplexity

__all__ = ["TextTokenizer", "evaluate_perplexity", "generate_text"]
