"""Rows whose question leaves a window little room: texts of an exact number of tokens for a tokenizer.

With ``max_seq_len`` 384, ``doc_stride`` 128 and a 3-special-token pair, a question of 252 tokens
leaves each window one new context token, and one of 253 to 380 tokens over a context that needs
more than one window makes the tokenizers library panic (``pyo3_runtime.PanicException``).
"""

from __future__ import annotations

# Words that are one token in most vocabularies (the tests' tokenizers are trained on SQuAD, or on a
# tiny built-in corpus without it).
_CANDIDATES = ("the", "of", "a", "tower", "in")


def one_token_word(tokenizer) -> str:
    """A word that ``tokenizer`` makes one token of, also when repeated with spaces."""
    for word in _CANDIDATES:
        if len(tokenizer(" ".join([word] * 10), add_special_tokens=False)["input_ids"]) == 10:
            return word
    raise AssertionError(f"none of {_CANDIDATES} is one token for this tokenizer")


def text_of_tokens(tokenizer, tokens: int, word: str | None = None) -> str:
    """Text of exactly ``tokens`` tokens (special tokens not counted)."""
    text = " ".join([word or one_token_word(tokenizer)] * tokens)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == tokens
    return text
