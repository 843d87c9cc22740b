"""Span scoring on the device that holds the logits (a GPU): only a few pairs per window come back.

The same steps as ``decode.top_pairs`` (the reference's masked softmax per window, CLS zeroed,
``p_start x p_end`` within the ``max_answer_len`` band, the ``top_k + 1`` best pairs) in torch,
so a micro-batch's logits never leave the GPU: what is copied to the host is ``[windows, top_k
+ 1]`` starts, ends and scores. ``decode.finish_candidates`` then applies the reference's rules
on the host and decodes on the CPU, from the logits of that window alone, any window whose best
pairs tie. The arithmetic is the device's (its own summation order), so scores may differ from
the CPU's in the last bits; ``make bench-gpu`` compares the answers with fp32.

torch is imported lazily: the CPU path and the upload service never need it here.
"""

from __future__ import annotations

import numpy as np


def top_pairs(start_logits, end_logits, allowed, lengths, *, max_answer_len: int,
              top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode.top_pairs`` for torch tensors on any device; returns host numpy arrays.

    Args:
        start_logits: ``[windows, width]`` tensor.
        end_logits: ``[windows, width]`` tensor.
        allowed: ``[windows, width]`` bool tensor (context tokens and CLS, False on padding).
        lengths: ``[windows]`` int tensor.
        max_answer_len: longest span in tokens.
        top_k: candidates asked for per window (``top_k + 1`` come back, for the tie test).
    """
    import torch
    count, width = start_logits.shape
    p_start = _window_softmax(start_logits, allowed, lengths)
    p_end = _window_softmax(end_logits, allowed, lengths)
    band = max(1, min(max_answer_len, width))
    ends_padded = torch.nn.functional.pad(p_end, (0, band - 1))
    scores = p_start.unsqueeze(-1) * ends_padded.unfold(1, band, 1)  # [windows, width, band]
    take = min(top_k + 1, width * band)
    values, flat = torch.topk(scores.reshape(count, width * band), take, dim=1, sorted=True)
    starts = torch.div(flat, band, rounding_mode="floor")
    ends = starts + flat % band
    return starts.cpu().numpy(), ends.cpu().numpy(), values.cpu().numpy()


def _window_softmax(logits, allowed, lengths):
    import torch
    logits = logits.float()
    masked = torch.where(allowed, logits, torch.full_like(logits, -10000.0))
    padding = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
    masked = masked.masked_fill(padding, float("-inf"))
    probabilities = torch.softmax(masked, dim=1)
    probabilities[:, 0] = 0.0
    return probabilities
