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

``window_candidates`` is that reference, one window at a time; ``batch_candidates`` gives the
same candidates, bit for bit, for a whole padded batch of windows at once: it scores only the
``start x end`` band within ``max_answer_len`` (the reference builds the whole outer product and
zeroes the rest) and falls back to the reference for the rare window whose top candidates it
cannot tell apart by value alone (ties, or fewer positive candidates than asked for). The torch
form for the device that holds the logits is ``beam_qa.qa.decode_torch``.
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


def batch_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    allowed: np.ndarray,
    lengths: np.ndarray,
    *,
    max_answer_len: int = 15,
    top_k: int = CANDIDATES_PER_WINDOW,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``window_candidates`` for every window of a right-padded batch, with the same results.

    Args:
        start_logits: ``[windows, width]`` start logits (anything on padding).
        end_logits: ``[windows, width]`` end logits.
        allowed: ``[windows, width]``, True where a token may be part of an answer (context
            tokens and CLS: ``p_mask`` False) and False on padding.
        lengths: ``[windows]`` tokens of each window before padding.
        max_answer_len: longest span in tokens.
        top_k: how many pairs to return at most per window.

    Returns:
        Per window, ``(starts, ends, scores)`` exactly as ``window_candidates`` returns them for
        that window unpadded.
    """
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    allowed = np.asarray(allowed, dtype=bool)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    starts, ends, values = top_pairs(start_logits, end_logits, allowed, lengths,
                                     max_answer_len=max_answer_len, top_k=top_k)
    return finish_candidates(starts, ends, values, allowed, lengths, top_k=top_k, reference=lambda w: window_candidates(
        start_logits[w, :lengths[w]], end_logits[w, :lengths[w]], ~allowed[w, :lengths[w]],
        max_answer_len=max_answer_len, top_k=top_k))


def top_pairs(start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray, lengths: np.ndarray, *,
              max_answer_len: int, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``top_k + 1`` best ``(start, end)`` pairs of each window within the band, best first.

    Returns:
        ``(starts, ends, scores)``, each ``[windows, top_k + 1]`` (fewer columns when a window
        has fewer pairs), scores as the reference computes them.
    """
    count = len(lengths)
    p_start = _window_softmax(start_logits, allowed, lengths)
    p_end = _window_softmax(end_logits, allowed, lengths)
    width = p_start.shape[1]
    band = max(1, min(max_answer_len, width))
    # scores[w, d, i] = p_start[w, i] * p_end[w, i + d]: the reference's outer product within the
    # band (0 <= d < max_answer_len), one float32 product each, so the values are the same bits.
    # Offset-major, so that the best pair of each start is an elementwise maximum over planes.
    ends_padded = np.zeros((count, width + band - 1), dtype=np.float32)
    ends_padded[:, :width] = p_end
    row, step = ends_padded.strides
    shifted = np.lib.stride_tricks.as_strided(ends_padded, (count, band, width), (row, step, step), writeable=False)
    scores = p_start[:, None, :] * shifted
    # The top_k + 1 best pairs lie in the top_k + 1 start tokens with the best pair each (each of
    # those holds a pair at least as good as any pair of another start), so only their bands are
    # sorted: a selection over the starts, then a sort of (top_k + 1) x band values per window.
    taken = min(top_k + 1, width)
    if taken < width:
        picked = np.argpartition(-scores.max(axis=1), taken - 1, axis=1)[:, :taken]
    else:
        picked = np.broadcast_to(np.arange(width), (count, width))
    # [window, start, offset], flattened start-major as the reference's (start, end) order.
    pool = np.take_along_axis(scores, picked[:, None, :], axis=2).transpose(0, 2, 1).reshape(count, taken * band)
    order = np.argsort(-pool, axis=1, kind="stable")[:, :top_k + 1]
    starts = np.take_along_axis(picked, order // band, axis=1)
    return starts, starts + order % band, np.take_along_axis(pool, order, axis=1)


def finish_candidates(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, allowed: np.ndarray,
                      lengths: np.ndarray, *, top_k: int, reference: Callable[[int], tuple]) -> list[tuple]:
    """Per window, the reference's candidates from its ``top_k + 1`` best pairs (``top_pairs``).

    The reference picks its top_k from the whole L x L product, where ties (zeros off the band,
    or equal products) are ordered by numpy's selection internals. Where the first top_k values
    are positive, strictly decreasing and strictly above the next one (which is at least every
    pair left out), the choice and its order are set by value alone, so the band gives the same;
    any other window is decoded by ``reference(window)``.
    """
    count = len(lengths)
    if values.shape[1] < top_k:  # fewer pairs than asked for in every window
        return [reference(window) for window in range(count)]
    chosen = values[:, :top_k]
    exact = (lengths * lengths > top_k) & (chosen[:, -1] > 0)
    if top_k > 1:
        exact &= np.all(chosen[:, :-1] > chosen[:, 1:], axis=1)
    if values.shape[1] > top_k:
        exact &= chosen[:, -1] > values[:, top_k]
    starts, ends = starts[:, :top_k], ends[:, :top_k]
    # The reference keeps a pair whose tokens are in ``undesired.nonzero()`` taken as one flat
    # set: the allowed tokens and 0 (from the row indices of that tuple) when any token is allowed.
    admitted = allowed.copy()
    admitted[:, 0] |= allowed.any(axis=1)
    rows = np.arange(count)[:, None]
    width = allowed.shape[1]
    keep = admitted[rows, np.minimum(starts, width - 1)] & admitted[rows, np.minimum(ends, width - 1)]
    return [(starts[w][keep[w]], ends[w][keep[w]], chosen[w][keep[w]]) if exact[w] else reference(w)
            for w in range(count)]


def _window_softmax(logits: np.ndarray, allowed: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The reference's per-window softmax over allowed tokens, CLS then zeroed; 0 on padding."""
    masked = np.where(allowed, logits, np.float32(-10000.0))
    # Padding is not part of the reference's window: -inf leaves its maximum alone and exps to 0.
    masked[np.arange(logits.shape[1])[None, :] >= lengths[:, None]] = -np.inf
    exp = np.exp(masked - masked.max(axis=1, keepdims=True))
    # numpy sums float32 pairwise in blocks whose bounds depend on the length summed, so a padded
    # row would round differently from the reference's unpadded window: sum each window over its
    # own length, one call per distinct length (at most max_seq_len of them, not one per window).
    totals = np.empty(len(lengths), dtype=np.float32)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        totals[rows] = exp[rows, :length].sum(axis=1)
    probabilities = exp / totals[:, None]
    probabilities[:, 0] = 0.0
    return probabilities


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
