"""Span decoding with the semantics of the transformers 4.x question-answering pipeline.

Pure functions over logits, masks and character spans, so that they can be tested
without a model. The reference behaviour (transformers 4.57, fast tokenizer, right
padding, ``top_k=1``, ``handle_impossible_answer=False``, ``align_to_words=True``):

* per window, the softmax runs over context tokens and the CLS token (question,
  separator and padding tokens are set to -10000 first); CLS is then zeroed;
* the ``top_k * 2 + 10`` best ``(start, end)`` pairs with ``start <= end`` and
  ``end - start < max_answer_len`` are kept, each scored ``p_start * p_end``;
* each pair is widened to whole words and turned into a character span;
* candidates from all windows whose text is equal ignoring case are merged by
  adding their scores (the first keeps its offsets); the best merged one wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

REFERENCE_TOP_K = 1
# The reference asks each window for more candidates than it returns, because word
# alignment can fold several token spans into one answer.
CANDIDATES_PER_WINDOW = REFERENCE_TOP_K * 2 + 10


@dataclasses.dataclass(frozen=True)
class Span:
    """A decoded answer: character offsets into the context and its score."""

    answer: str
    start: int
    end: int
    score: float


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    p_mask: np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    max_answer_len: int = 15,
    top_k: int = CANDIDATES_PER_WINDOW,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best token spans of one window.

    Args:
        start_logits: ``[seq_len]`` start logits of the window (padding allowed).
        end_logits: ``[seq_len]`` end logits.
        p_mask: ``[seq_len]``, 1 (True) where a token cannot be part of an answer
            (question, special tokens except CLS), 0 for context tokens and CLS.
        attention_mask: ``[seq_len]``, 0 on padding; None when the window is unpadded.
        max_answer_len: longest span in tokens.
        top_k: how many pairs to return at most.

    Returns:
        ``(starts, ends, scores)``: token indices and ``p_start * p_end``, best first.
    """
    start = np.asarray(start_logits, dtype=np.float32)[None]
    end = np.asarray(end_logits, dtype=np.float32)[None]
    undesired = np.abs(np.asarray(p_mask).astype(np.int64) - 1)[None]
    if attention_mask is not None:
        undesired = undesired & np.asarray(attention_mask).astype(np.int64)[None]
    masked = undesired == 0
    start = np.where(masked, -10000.0, start)
    end = np.where(masked, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    start[0, 0] = end[0, 0] = 0.0
    return _decode_spans(start, end, top_k, max_answer_len, undesired)


def _decode_spans(start, end, top_k, max_answer_len, undesired):
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if top_k == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < top_k:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, top_k)[0:top_k]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # As in the reference: membership in the flattened nonzero() tuple, which also
    # admits index 0 (the zeroed CLS) - kept for identical results.
    allowed = undesired.nonzero()
    desired = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[desired], ends[desired]
    return starts, ends, candidates[0, starts, ends]


def best_answer(
    context: str,
    windows: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    char_span: Callable[[int, int, int], tuple[int, int]],
) -> Span | None:
    """Merges the candidates of all windows of one example into the best answer.

    Args:
        context: the original context string.
        windows: per window, ``(starts, ends, scores)`` from ``window_candidates``.
        char_span: ``(window_index, start_token, end_token) -> (start_char, end_char)``,
            the word-aligned character span of a token span.

    Returns:
        The best span, or None when no window produced a candidate.
    """
    # Insertion-ordered: on equal scores the first-seen answer wins, as in the reference.
    merged: dict[str, list] = {}
    for window_index, (starts, ends, scores) in enumerate(windows):
        for s, e, score in zip(starts, ends, scores):
            start_char, end_char = char_span(window_index, int(s), int(e))
            text = context[start_char:end_char]
            key = text.lower()
            if key in merged:
                merged[key][3] += score.item()
            else:
                merged[key] = [text, start_char, end_char, score.item()]
    if not merged:
        return None
    text, start_char, end_char, score = sorted(merged.values(), key=lambda item: item[3], reverse=True)[0]
    return Span(answer=text, start=start_char, end=end_char, score=float(score))


def word_aligned_span(encoding, start_token: int, end_token: int, sequence_index: int = 1) -> tuple[int, int]:
    """Widens a token span to whole words of the context, like the reference.

    Args:
        encoding: a ``tokenizers.Encoding`` of one window.
        start_token: first token of the span.
        end_token: last token of the span (inclusive).
        sequence_index: which sequence of the pair holds the context.

    Returns:
        ``(start_char, end_char)`` into the context.
    """
    try:
        start_word = encoding.token_to_word(start_token)
        end_word = encoding.token_to_word(end_token)
        start_char = encoding.word_to_chars(start_word, sequence_index=sequence_index)[0]
        end_char = encoding.word_to_chars(end_word, sequence_index=sequence_index)[1]
    except Exception:  # pylint: disable=broad-except
        # The reference falls back to raw offsets whenever word lookup fails
        # (e.g. a special token has no word).
        start_char = encoding.offsets[start_token][0]
        end_char = encoding.offsets[end_token][1]
    return start_char, end_char
