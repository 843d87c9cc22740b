"""A batch's forward passes, one micro-batch after another, overlapped with the work around them.

``candidates(windows, plan, model, ...)`` runs the model on each micro-batch of ``plan`` and
returns every window's span candidates (``decode``). With ``overlap``, the passes run on a
model thread while this thread prepares the next micro-batch's inputs and decodes the previous
one's logits: ONNX Runtime and torch release the GIL while they compute, and a GPU computes
asynchronously anyway, so preparing and decoding come off the model's critical path. On a GPU,
spans are scored where the logits are (``decode_torch``) and only a few pairs per window come
back to the host.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Any

import numpy as np

from beam_qa import runtime
from beam_qa.qa import decode
from beam_qa.qa.windows import MODEL_INPUTS, Windows

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (starts, ends, scores) of one window

_POOL_LOCK = threading.Lock()
_POOL: list[concurrent.futures.ThreadPoolExecutor] = []
# Model threads of this process: one per model call that may run at once (a few are plenty:
# ``WorkerRuntime.forward_slots`` bounds the calls that actually compute together).
_POOL_THREADS = 8


def _model_threads() -> concurrent.futures.ThreadPoolExecutor:
    """This process's model threads, started on first use (never at import)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(concurrent.futures.ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="beam_qa-model"))
        return _POOL[0]


def overlap_pays(device: str) -> bool:
    """Whether the passes should run on a model thread (``candidates``' ``overlap``).

    On a GPU always: the device computes while the CPU prepares and decodes. On a CPU only when
    a model call leaves a core free (fewer intra-op threads than usable CPUs): otherwise the
    model's own threads already hold every core and the overlap only adds switching.
    """
    if str(device).startswith("cuda"):
        return True
    import torch
    return torch.get_num_threads() < usable_cpus()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def input_names(tokenizer) -> list[str]:
    """The model inputs the tokenizer says the model takes, among those the handler builds."""
    return [name for name in tokenizer.model_input_names if name in MODEL_INPUTS]


def candidates(windows: Windows, plan: list[np.ndarray], model, *, max_answer_len: int, concurrent_calls: int,
               overlap: bool, device_decode: bool | None = None) -> list[Candidates | None]:
    """Every window's span candidates, running the model on each micro-batch of ``plan``.

    Args:
        windows: the batch's windows.
        plan: window indices per micro-batch (``windows.micro_batches``).
        model: a ``LoadedModel``.
        max_answer_len: longest span in tokens.
        concurrent_calls: model calls at once in this process (``WorkerRuntime.forward_slots``).
        overlap: run the passes on a model thread while this one prepares and decodes.
        device_decode: score spans in torch where the logits are (default: on a GPU only).

    Returns:
        ``(starts, ends, scores)`` per window, in window order.
    """
    import torch
    device = str(model.device)
    on_gpu = device.startswith("cuda")
    device_decode = on_gpu if device_decode is None else device_decode
    names = input_names(model.tokenizer)
    out: list[Candidates | None] = [None] * len(windows)

    def run(rows: np.ndarray, inputs: dict[str, np.ndarray]):
        tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
        if on_gpu:
            tensors = {name: tensor.pin_memory().to(device, non_blocking=True) for name, tensor in tensors.items()}
        with runtime.current().forward_slots(concurrent_calls), torch.inference_mode():
            output = model.model(**tensors)
            if not device_decode:
                return output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
            from beam_qa.qa import decode_torch
            allowed = torch.from_numpy(windows.allowed[rows][:, :inputs["input_ids"].shape[1]]).to(device)
            lengths = torch.from_numpy(windows.lengths[rows]).to(device)
            pairs = decode_torch.top_pairs(output.start_logits, output.end_logits, allowed, lengths,
                                           max_answer_len=max_answer_len, top_k=decode.CANDIDATES_PER_WINDOW)
            return pairs, (output.start_logits, output.end_logits)

    def finish(rows: np.ndarray, result) -> None:
        width = int(windows.lengths[rows].max())
        allowed, lengths = windows.allowed[rows][:, :width], windows.lengths[rows]
        if device_decode:
            (starts, ends, values), (start_logits, end_logits) = result

            def reference(w: int) -> Candidates:  # a tie: the CPU reference on this window's logits
                n = int(lengths[w])
                return decode.window_candidates(start_logits[w, :n].float().cpu().numpy(),
                                                end_logits[w, :n].float().cpu().numpy(), ~allowed[w, :n],
                                                max_answer_len=max_answer_len)
            found = decode.finish_candidates(starts, ends, values, allowed, lengths,
                                             top_k=decode.CANDIDATES_PER_WINDOW, reference=reference)
        else:
            start_logits, end_logits = result
            found = decode.batch_candidates(start_logits, end_logits, allowed, lengths, max_answer_len=max_answer_len)
        for window, window_candidates in zip(rows.tolist(), found):
            out[window] = window_candidates

    if not overlap:
        if device_decode:
            for rows in plan:
                finish(rows, run(rows, windows.inputs(rows, names)))
            return out
        # One decode for the whole batch: its cost is a few dozen array operations however many
        # windows it holds, so once per batch rather than once per micro-batch.
        start_logits = np.zeros(windows.ids.shape, dtype=np.float32)
        end_logits = np.zeros(windows.ids.shape, dtype=np.float32)
        for rows in plan:
            starts, ends = run(rows, windows.inputs(rows, names))
            start_logits[rows, :starts.shape[1]] = starts
            end_logits[rows, :ends.shape[1]] = ends
        every = np.arange(len(windows))
        finish(every, (start_logits, end_logits))
        return out
    pool = _model_threads()
    pending: collections.deque[tuple[np.ndarray, concurrent.futures.Future]] = collections.deque()
    try:
        for rows in plan:
            pending.append((rows, pool.submit(run, rows, windows.inputs(rows, names))))
            if len(pending) > 1:  # the pass before this one is done or nearly: decode it meanwhile
                done_rows, future = pending.popleft()
                finish(done_rows, future.result())
        while pending:
            done_rows, future = pending.popleft()
            finish(done_rows, future.result())
    finally:
        # After a failure, let the passes already queued end before the caller retries or isolates
        # rows, so that no pass of this batch still runs beside the next attempt.
        for _, future in pending:
            future.cancel()
        concurrent.futures.wait([future for _, future in pending])
    return out


def free_memory(model: Any) -> None:
    """Gives cached memory back before a retry (the CUDA caching allocator keeps freed blocks)."""
    import gc
    gc.collect()
    if str(model.device).startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
