"""Comparing transcripts word by word: tests and benchmarks judge a
transcript made another way (batched, packed) against one clip alone."""

from __future__ import annotations


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: what a listener would compare."""
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit
    distance; 0 for two empty texts, 1 per word for an empty reference."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref) if ref else float(len(hyp))
