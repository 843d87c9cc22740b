"""The windows of a batch as arrays, and the micro-batches they run in.

One tokenizer call windows every example of a batch (long contexts overflow into several
windows of ``max_seq_len`` tokens with ``doc_stride`` overlap). ``tokenize`` turns its output into
``Windows``: token ids padded to the longest window, lengths, and which tokens may be part of an
answer, built with array operations over the whole batch rather than per window. Windows sorted
by length are then cut into micro-batches of at most ``tokens_per_forward`` padded tokens
(``micro_batches``), each padded only to its own longest window.

Every row's work is bounded before its pair is tokenized (``check_rows``): its question must leave
each window at least ``min_new_tokens`` new context tokens, and its context may need at most
``max_windows`` windows. Without the first, a question of 252 tokens (defaults: ``max_seq_len``
384, ``doc_stride`` 128) advances each window by one token, so a 5,000-token context becomes about
4,900 windows, and a longer one makes the tokenizers library panic (``pyo3_runtime.PanicException``,
a ``BaseException``) for the whole batch.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_qa.errors import RowErrorKind

QaExample = tuple[str, str]  # (question, context)

# Model inputs the handler can build (others a model may name are not fed).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# Characters a question may have per token it may hold, decided before tokenizing it: no token of a
# WordPiece or BPE vocabulary covers more (WordPiece makes a longer word one [UNK]), so a longer
# question is too long whatever it says, and a pasted megabyte is never tokenized.
QUESTION_CHARS_PER_TOKEN = 100

# Raised to end the process or a generator, never by a row: these are never a row's failure.
_NOT_ROW_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit)

RowFailure = tuple[RowErrorKind, str]  # (kind, message) of a row that gets no window


def is_row_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while windowing or answering rows, may be turned into row errors.

    Everything but ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``: a Rust panic in
    the tokenizers library arrives as ``pyo3_runtime.PanicException``, which derives from
    ``BaseException`` so that ``except Exception`` lets it through and fails the bundle.
    """
    return not isinstance(exc, _NOT_ROW_FAILURES)


def _this_rows(exc: BaseException) -> bool:
    """Whether a tokenizer's ``exc`` may be the row's own failure: a row failure that is not a
    shortage of memory (which the handler retries in smaller batches instead)."""
    return is_row_failure(exc) and not isinstance(exc, MemoryError)


def describe(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, at most ``limit`` characters of its message
    (a message may quote the input)."""
    first_line = (str(exc).splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def min_new_tokens(max_seq_len: int, doc_stride: int, special_tokens: int) -> int:
    """The fewest new context tokens each window must add to the one before it.

    Half of ``doc_stride``, or half of what a window adds with an empty question if that is
    less, one at least. A question longer than leaves this much is ``question_too_long``. With
    the defaults (``max_seq_len`` 384, ``doc_stride`` 128, 3 special tokens in a pair) that is 64:
    a question may have up to 189 tokens (SQuAD's longest has 34, the reference's
    ``max_question_len`` is 64), and a window then advances at least 64 tokens instead of the 253
    of an empty question, so a long question costs at most about 4 times the windows.

    Args:
        max_seq_len: tokens per window, special tokens included.
        doc_stride: tokens shared by consecutive windows of one context.
        special_tokens: special tokens the tokenizer adds to a pair.
    """
    return max(1, min(doc_stride // 2, (max_seq_len - special_tokens - doc_stride) // 2))


def windows_needed(context_tokens: int, room: int, doc_stride: int) -> int:
    """Windows of a context of ``context_tokens`` tokens when each window holds ``room`` of them
    (``room > doc_stride``), consecutive windows sharing ``doc_stride`` (as the tokenizer cuts them)."""
    if context_tokens <= room:
        return 1
    return 1 + -(-(context_tokens - room) // (room - doc_stride))


def _too_many_windows(needed: int, max_windows: int) -> str:
    return (f"context needs {needed:,} windows with this question, over the limit of {max_windows:,} a row "
            "(derived from --max_context_chars); shorten the question or split the context into several rows")


def check_rows(batch: Sequence[QaExample], tokenizer, *, max_seq_len: int, doc_stride: int,
               max_windows: int | None = None) -> dict[int, RowFailure]:
    """The rows of ``batch`` whose work would be out of bounds, and why, before their pairs are tokenized.

    A question that leaves a window fewer than ``min_new_tokens`` new context tokens (or has more
    than ``QUESTION_CHARS_PER_TOKEN`` characters per token it may hold) is ``question_too_long``;
    a context that needs more than ``max_windows`` windows is ``context_too_long``. Lengths are
    bounded from UTF-8 lengths first (no WordPiece or byte-level BPE token is shorter than a
    byte), so that the usual row costs no tokenizer call here: the questions that bound does not
    settle are counted in one batched call, and a context is counted, on its own, only when its
    bound is over the limit.

    Args:
        batch: ``(question, context)`` pairs.
        tokenizer: a fast Hugging Face tokenizer.
        max_seq_len: tokens per window, special tokens included.
        doc_stride: tokens shared by consecutive windows of one context.
        max_windows: the most windows one row may have, or None.

    Returns:
        batch index -> ``(kind, message)`` of each row that must not be tokenized as a pair.
    """
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    least_new = min_new_tokens(max_seq_len, doc_stride, specials)
    most = max(0, max_seq_len - specials - doc_stride - least_new)
    rule = (f"with doc_stride {doc_stride} a question may have at most {most} tokens, so that each window "
            f"adds {least_new} new context tokens; shorten the question")
    errors: dict[int, RowFailure] = {}
    questions: dict[int, int] = {}  # batch index -> the question's tokens, or a bound on them
    counted = []
    for index, (question, _) in enumerate(batch):
        if len(question) > most * QUESTION_CHARS_PER_TOKEN:
            errors[index] = (RowErrorKind.QUESTION_TOO_LONG,
                             f"question too long for max_seq_len {max_seq_len}: {len(question):,} characters; {rule}")
        elif (size := _utf8_length(question)) < most:
            # No WordPiece or byte-level BPE token is shorter than a byte (SentencePiece may add one
            # before the first word): a question this short fits uncounted, as almost all do.
            questions[index] = size
        else:
            counted.append(index)
    for index, tokens in zip(counted, _token_counts([batch[i][0] for i in counted], tokenizer)):
        if isinstance(tokens, BaseException):
            errors[index] = (RowErrorKind.MODEL, f"the tokenizer failed on this row's question: {describe(tokens)}")
        elif tokens > most:
            errors[index] = (RowErrorKind.QUESTION_TOO_LONG,
                             f"question too long for max_seq_len {max_seq_len}: {tokens:,} tokens; {rule}")
        else:
            questions[index] = tokens
    if max_windows is None:
        return errors
    for index, tokens in questions.items():
        context = batch[index][1]
        room = max_seq_len - specials - tokens
        if windows_needed(_utf8_length(context), room, doc_stride) > max_windows:
            # Rare (a context near --max_context_chars of dense or non-ASCII text): count it.
            exact = _token_counts([context], tokenizer)[0]
            if isinstance(exact, BaseException):
                errors[index] = (RowErrorKind.MODEL, f"the tokenizer failed on this row's context: {describe(exact)}")
            elif (needed := windows_needed(exact, room, doc_stride)) > max_windows:
                errors[index] = (RowErrorKind.CONTEXT_TOO_LONG, _too_many_windows(needed, max_windows))
    return errors


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _token_counts(texts: list[str], tokenizer) -> list[int | BaseException]:
    """Tokens of each text alone, without special tokens: one batched call, or one call per text
    after a failure (the failure of a text is its item)."""
    if not texts:
        return []
    kwargs = dict(add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    try:
        return [len(ids) for ids in tokenizer(texts, **kwargs)["input_ids"]]
    except BaseException as exc:  # pylint: disable=broad-except
        if not _this_rows(exc):
            raise
    out: list[int | BaseException] = []
    for text in texts:
        try:
            out.append(len(tokenizer(text, **kwargs)["input_ids"]))
        except BaseException as exc:  # pylint: disable=broad-except
            if not _this_rows(exc):
                raise
            out.append(exc)
    return out


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
        errors: batch index -> ``(kind, message)`` of each example that has no window (``check_rows``,
            or the tokenizer failed on it).
    """

    encodings: list[Any]
    example: np.ndarray
    lengths: np.ndarray
    ids: np.ndarray
    type_ids: np.ndarray | None
    allowed: np.ndarray
    errors: dict[int, RowFailure]

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
             type_ids: bool = False, max_windows: int | None = None) -> Windows:
    """Windows every example of ``batch`` with one tokenizer call.

    Each row's work is bounded before the pairs are tokenized (``check_rows``): a question that
    leaves a window too little new context is ``question_too_long`` and a context that would need
    more than ``max_windows`` windows is ``context_too_long``; those rows get no window. Whatever
    the tokenizer still raises for a row (a native panic included) is that row's ``model`` error:
    the batch call is then redone one row at a time to find it, and its batch-mates are windowed.

    Args:
        batch: ``(question, context)`` pairs.
        tokenizer: a fast, right-padding Hugging Face tokenizer.
        max_seq_len: tokens per window, special tokens included.
        doc_stride: tokens shared by consecutive windows of one context.
        type_ids: whether the model takes ``token_type_ids``.
        max_windows: the most windows one row may have (None: no limit beyond the minimum of new
            tokens per window).
    """
    kwargs = dict(truncation="only_second", max_length=max_seq_len, stride=doc_stride,
                  return_overflowing_tokens=True, padding=False, return_attention_mask=False,
                  return_token_type_ids=type_ids)
    errors = check_rows(batch, tokenizer, max_seq_len=max_seq_len, doc_stride=doc_stride, max_windows=max_windows)
    valid = [index for index in range(len(batch)) if index not in errors]
    parts = []
    try:
        if valid:
            encoded = tokenizer([batch[i][0] for i in valid], [batch[i][1] for i in valid], **kwargs)
            parts = [(np.asarray(valid, dtype=np.int64)[np.asarray(encoded["overflow_to_sample_mapping"],
                                                                   dtype=np.int64)],
                      encoded.encodings, encoded["input_ids"], encoded["token_type_ids"] if type_ids else None)]
    except BaseException as exc:  # pylint: disable=broad-except
        if not _this_rows(exc):
            raise
        # One row the checks let through still fails the whole batch call (a tokenizer's panic is
        # a BaseException); redo it one by one to isolate that row.
        parts = []
        for index in valid:
            question, context = batch[index]
            try:
                single = tokenizer(question, context, **kwargs)
            except BaseException as row_exc:  # pylint: disable=broad-except
                if not _this_rows(row_exc):
                    raise
                errors[index] = (RowErrorKind.MODEL, f"the tokenizer failed on this row: {describe(row_exc)}")
                continue
            parts.append(([index] * len(single.encodings), single.encodings, single["input_ids"],
                          single["token_type_ids"] if type_ids else None))
    example = np.fromiter(itertools.chain.from_iterable(p[0] for p in parts), dtype=np.int64)
    encodings = [e for p in parts for e in p[1]]
    id_lists = [ids for p in parts for ids in p[2]]
    type_lists = [t for p in parts for t in p[3]] if type_ids else None
    if max_windows is not None and len(example):
        # The checks bound a row's windows from its context's UTF-8 length; a tokenizer that makes
        # more tokens than that is caught here, before any window reaches the model.
        counts = np.bincount(example, minlength=len(batch))
        over = np.flatnonzero(counts > max_windows)
        if len(over):
            for index in over.tolist():
                errors[int(index)] = (RowErrorKind.CONTEXT_TOO_LONG, _too_many_windows(int(counts[index]), max_windows))
            keep = np.flatnonzero(counts[example] <= max_windows).tolist()
            example = example[keep]
            encodings = [encodings[i] for i in keep]
            id_lists = [id_lists[i] for i in keep]
            type_lists = [type_lists[i] for i in keep] if type_lists is not None else None
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    width = int(lengths.max()) if len(lengths) else 0
    real = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(lengths), width), tokenizer.pad_token_id or 0, dtype=np.int64)
    ids[real] = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    types = None
    if type_lists is not None:
        types = np.zeros_like(ids)
        types[real] = np.fromiter(itertools.chain.from_iterable(type_lists), dtype=np.int64,
                                  count=int(lengths.sum()))
    allowed = _context_tokens(encodings, width)
    if tokenizer.cls_token_id is not None:
        cls = (ids == tokenizer.cls_token_id) & real
        # A question may spell the CLS token ("[CLS]"). The reference unmasks it too, then reads
        # that question token's offsets as if they were the context's (a span past the context's
        # end); only the template's CLS may stand for "no answer" here. Rare: one CLS a window is the rule.
        for window in np.flatnonzero(cls.sum(axis=1) > 1).tolist():
            sequence_ids = encodings[window].sequence_ids
            for column in np.flatnonzero(cls[window]).tolist():
                cls[window, column] = sequence_ids[column] is None
        allowed |= cls
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
