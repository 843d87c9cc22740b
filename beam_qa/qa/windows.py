"""The windows of a batch as arrays, and the micro-batches they run in.

One tokenizer call windows every example of a batch (long contexts overflow into several
windows of ``max_seq_len`` tokens with ``doc_stride`` overlap). ``tokenize`` turns its output into
``Windows``: token ids padded to the longest window, lengths, and which tokens may be part of an
answer, built with array operations over the whole batch rather than per window. Windows sorted
by length are then cut into micro-batches of at most ``tokens_per_forward`` padded tokens
(``micro_batches``), each padded only to its own longest window.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

QaExample = tuple[str, str]  # (question, context)

# Model inputs the handler can build (others a model may name are not fed).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class Windows:
    """Every window of one batch, in the tokenizer's order (by example, then window order).

    Attributes:
        encodings: the tokenizer's ``Encoding`` of each window (offsets and words for the answer).
        example: ``[n]`` the batch index of each window's example.
        lengths: ``[n]`` tokens of each window.
        ids: ``[n, width]`` token ids, right-padded with the tokenizer's pad id.
        type_ids: ``[n, width]`` token type ids, or None when the model takes none.
        allowed: ``[n, width]`` True where a token may start or end an answer: the context's
            tokens and CLS (the reference's ``p_mask`` is its negation), False on padding.
        errors: batch index -> why that example has no window (its question is too long).
    """

    encodings: list[Any]
    example: np.ndarray
    lengths: np.ndarray
    ids: np.ndarray
    type_ids: np.ndarray | None
    allowed: np.ndarray
    errors: dict[int, str]

    def __len__(self) -> int:
        return len(self.lengths)

    def inputs(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The model inputs ``names`` for windows ``rows``, padded to the longest of them."""
        width = int(self.lengths[rows].max())
        out: dict[str, np.ndarray] = {}
        for name in names:
            if name == "input_ids":
                out[name] = self.ids[rows, :width]
            elif name == "attention_mask":
                out[name] = (np.arange(width)[None, :] < self.lengths[rows][:, None]).astype(np.int64)
            elif name == "token_type_ids" and self.type_ids is not None:
                out[name] = self.type_ids[rows, :width]
        return out

    def example_bounds(self, examples: int) -> np.ndarray:
        """``[examples + 1]``: the windows of example ``i`` are ``bounds[i]:bounds[i + 1]``."""
        return np.searchsorted(self.example, np.arange(examples + 1), side="left")


def tokenize(batch: Sequence[QaExample], tokenizer, *, max_seq_len: int, doc_stride: int,
             type_ids: bool = False) -> Windows:
    """Windows every example of ``batch`` with one tokenizer call.

    Args:
        batch: ``(question, context)`` pairs.
        tokenizer: a fast, right-padding Hugging Face tokenizer.
        max_seq_len: tokens per window, special tokens included.
        doc_stride: tokens shared by consecutive windows of one context.
        type_ids: whether the model takes ``token_type_ids``.
    """
    kwargs = dict(truncation="only_second", max_length=max_seq_len, stride=doc_stride,
                  return_overflowing_tokens=True, padding=False, return_attention_mask=False,
                  return_token_type_ids=type_ids)
    errors: dict[int, str] = {}
    try:
        encoded = tokenizer([q for q, _ in batch], [c for _, c in batch], **kwargs)
        parts = [(encoded["overflow_to_sample_mapping"], encoded.encodings, encoded["input_ids"],
                  encoded["token_type_ids"] if type_ids else None)]
    except Exception:  # pylint: disable=broad-except
        # One example that cannot be windowed (a question longer than the window) fails the whole
        # batch call; redo it one by one to isolate it.
        parts = []
        for index, (question, context) in enumerate(batch):
            try:
                single = tokenizer(question, context, **kwargs)
            except Exception as exc:  # pylint: disable=broad-except
                errors[index] = f"question too long for max_seq_len {max_seq_len}: {exc}"
                continue
            parts.append(([index] * len(single.encodings), single.encodings, single["input_ids"],
                          single["token_type_ids"] if type_ids else None))
    example = np.fromiter(itertools.chain.from_iterable(p[0] for p in parts), dtype=np.int64)
    encodings = [e for p in parts for e in p[1]]
    id_lists = [ids for p in parts for ids in p[2]]
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    width = int(lengths.max()) if len(lengths) else 0
    real = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(lengths), width), tokenizer.pad_token_id or 0, dtype=np.int64)
    ids[real] = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    types = None
    if type_ids:
        types = np.zeros_like(ids)
        types[real] = np.fromiter(itertools.chain.from_iterable(t for p in parts for t in p[3]), dtype=np.int64,
                                  count=int(lengths.sum()))
    allowed = _context_tokens(encodings, width)
    if tokenizer.cls_token_id is not None:
        allowed |= (ids == tokenizer.cls_token_id) & real
    return Windows(encodings=encodings, example=example, lengths=lengths, ids=ids, type_ids=types,
                   allowed=allowed, errors=errors)


def _context_tokens(encodings: list[Any], width: int) -> np.ndarray:
    """``[n, width]`` True on the tokens of the second sequence (the context) of each window.

    A question-first pair puts the context's tokens in one run, so each window needs only where
    its run starts and how long it is (two C-level list scans), not a test per token.
    """
    first = np.zeros(len(encodings), dtype=np.int64)
    count = np.zeros(len(encodings), dtype=np.int64)
    for window, encoding in enumerate(encodings):
        sequence_ids = encoding.sequence_ids
        if 1 in sequence_ids:
            first[window] = sequence_ids.index(1)
            count[window] = sequence_ids.count(1)
            end = first[window] + count[window]
            if sequence_ids[end - 1] != 1 or (end < len(sequence_ids) and sequence_ids[end] == 1):
                raise ValueError("the context's tokens are not one run in a window; only question-first "
                                 "pair tokenizers are supported")
    columns = np.arange(width)[None, :]
    return (columns >= first[:, None]) & (columns < (first + count)[:, None])


def greedy_runs(lengths: Sequence[int], budget: int) -> list[int]:
    """Run sizes that fill each run in turn up to ``budget`` padded tokens (one window at least).

    ``lengths`` are sorted ascending, so a run is padded to its last window.
    """
    runs: list[int] = []
    for length in lengths:
        if runs and (runs[-1] + 1) * length <= budget:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


# Cells of the split's cost matrix built at once (about 8 MB of float64).
_DP_CELLS = 1 << 20


def least_padding_runs(lengths: Sequence[int], budget: int) -> list[int]:
    """Run sizes over ascending ``lengths``: as few runs as ``greedy_runs``, padded the least.

    The greedy fill cuts wherever the budget runs out and pads each run to its longest window;
    on a batch that mixes rows of many files that wastes compute (``python -m
    benchmarks.padding`` counts it). This is our own small dynamic programme, since no library
    splits a sorted sequence under a budget: the least padded tokens covering the first ``j``
    windows in ``k`` runs, for ``k`` up to the greedy count (fewer runs win a tie). Each step is
    a few array operations over (windows x windows per run), a million cells at a time, so the
    Python work grows with the number of runs, not with the windows (``benchmarks/overhead.py``
    times the split as its own stage).
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    count = len(sizes)
    if count == 0:
        return []
    most = len(greedy_runs(lengths, budget))
    ends = np.arange(1, count + 1)
    # The run that ends at window j (exclusive) holds at most budget // its last window, one at least.
    longest = np.maximum(1, budget // sizes)
    first = np.maximum(0, ends - longest)
    span = int(min(count, longest.max()))
    # starts[j - 1, t]: the t-th candidate start of a run ending at j, ascending; invalid ones masked.
    # Built for a block of ends at a time, so that memory stays bounded on GPU-sized batches.
    block = max(1, _DP_CELLS // span)
    padded = np.full(count + 1, np.inf)
    padded[0] = 0.0
    chosen: list[np.ndarray] = []
    best_padding, best_runs = np.inf, 0
    for runs in range(1, most + 1):
        now = np.full(count + 1, np.inf)
        picked = np.zeros(count, dtype=np.int64)
        for low in range(0, count, block):
            j = ends[low:low + block]
            starts = j[:, None] - span + np.arange(span)[None, :]
            valid = starts >= first[low:low + block, None]
            starts = np.where(valid, starts, 0)
            cost = np.where(valid, padded[starts] + (j[:, None] - starts) * sizes[low:low + block, None], np.inf)
            at = np.argmin(cost, axis=1)  # the first minimum: the earliest start, as a scan would pick
            rows = np.arange(len(j))
            now[low + 1:low + 1 + len(j)] = cost[rows, at]
            picked[low:low + len(j)] = starts[rows, at]
        chosen.append(picked)
        padded = now
        if padded[count] < best_padding:
            best_padding, best_runs = padded[count], runs
    out, end = [], count
    for runs in range(best_runs, 0, -1):
        begin = int(chosen[runs - 1][end - 1])
        out.append(end - begin)
        end = begin
    return out[::-1]


def micro_batches(lengths: np.ndarray, budget: int, split=least_padding_runs) -> list[np.ndarray]:
    """Window indices per micro-batch: sorted by length, cut by ``split`` under ``budget`` padded tokens."""
    order = np.argsort(lengths, kind="stable")
    runs = split(lengths[order].tolist(), budget)
    return np.split(order, np.cumsum(runs)[:-1]) if runs else []
