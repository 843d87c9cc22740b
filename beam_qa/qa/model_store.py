"""Finding, fetching and loading a question-answering model once per process."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
from typing import Any

_LOGGER = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str, str], "LoadedModel"] = {}
_CACHE_LOCK = threading.Lock()
_LOAD_COUNT = 0


class ModelNotFoundError(ValueError):
    """The model named by ``--model`` cannot be found or loaded."""


@dataclasses.dataclass
class LoadedModel:
    """A tokenizer and model ready for inference on one device."""

    name: str
    tokenizer: Any
    model: Any
    device: str
    fp16: bool


def advice(model: str, reason: str) -> str:
    return (f"Cannot load the question-answering model {model!r}: {reason}. Pass --model "
            "(QA_MODEL for make run) with one of: a local directory holding config.json, "
            "model weights and a fast tokenizer (python -m beam_qa.dev.tiny_model DIR builds a "
            "small offline one), a gs://bucket/path directory with the same files, or a "
            "Hugging Face model id reachable from this machine (for example the default "
            "distilbert/distilbert-base-cased-distilled-squad).")


def check_model_available(model: str) -> None:
    """Fails fast, before the graph is built, when ``model`` cannot be found.

    Only the small config file is looked at; the weights load on the workers.

    Raises:
        ModelNotFoundError: with a message that says what to pass instead.
    """
    if model.startswith("gs://"):
        from beam_qa.storage import Storage
        storage = Storage()
        if not storage.exists(model.rstrip("/") + "/config.json"):
            raise ModelNotFoundError(advice(model, "no config.json under that gs:// directory"))
        return
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ModelNotFoundError(advice(model, "the directory has no config.json"))
        return
    if model.startswith((".", "/")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise ModelNotFoundError(advice(model, "no such directory"))
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        # Fail in seconds rather than after the Hub client's ~25 s of retries.
        raise ModelNotFoundError(advice(model, "it is not in the local Hugging Face cache and the "
                                        "Hub cannot be reached from this machine"))
    try:
        from transformers import AutoConfig
        AutoConfig.from_pretrained(model)
    except Exception as exc:  # pylint: disable=broad-except
        # Any failure here (offline, unknown id, gated repo) means the workers would fail too.
        raise ModelNotFoundError(advice(model, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")) from exc


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _local_copy(model: str) -> str:
    """Copies a gs:// model directory to local disk once; returns the local directory."""
    from beam_qa.storage import Storage
    digest = hashlib.sha256(model.encode()).hexdigest()[:16]
    target = os.path.join(tempfile.gettempdir(), "beam_qa_models", digest)
    done_marker = os.path.join(target, ".complete")
    if os.path.exists(done_marker):
        return target
    storage = Storage()
    staging = tempfile.mkdtemp(prefix=digest, dir=os.path.dirname(target) if os.path.isdir(
        os.path.dirname(target)) else None)
    count = storage.download_prefix(model.rstrip("/") + "/", staging)
    if count == 0:
        raise ModelNotFoundError(advice(model, "the gs:// directory is empty"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.rename(staging, target)
    except OSError:
        pass  # another process won the race; its copy is complete
    return target


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA GPU is visible; use --device cpu or auto")
    return device


def load_model(model: str, device: str = "auto", quantize: str = "none") -> LoadedModel:
    """Loads ``model`` once per process and returns the shared instance.

    Beam's shared handle lets the DirectRunner drop a model when it discards a DoFn;
    this process-wide cache keeps it, so every bundle and every file reuses one load.

    Args:
        model: Hugging Face id, local directory or gs:// directory.
        device: ``auto``, ``cpu`` or ``cuda``.
        quantize: ``none`` or ``int8`` (dynamic quantization of Linear layers, CPU).

    Returns:
        The loaded model.
    """
    global _LOAD_COUNT
    resolved_device = resolve_device(device)
    key = (model, resolved_device, quantize)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        import torch
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer
        path = _local_copy(model) if model.startswith("gs://") else model
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            qa_model = AutoModelForQuestionAnswering.from_pretrained(path)
        except Exception as exc:  # pylint: disable=broad-except
            raise ModelNotFoundError(advice(model, f"{type(exc).__name__}: {exc}")) from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ModelNotFoundError(advice(model, "it has no fast tokenizer (tokenizer.json)"))
        if tokenizer.padding_side != "right":
            raise ModelNotFoundError(advice(model, "its tokenizer pads on the left; only "
                                            "question-first (right-padding) models are supported"))
        qa_model.eval()
        fp16 = False
        if quantize == "int8":
            qa_model = torch.ao.quantization.quantize_dynamic(qa_model, {torch.nn.Linear}, dtype=torch.qint8)
        elif resolved_device == "cuda":
            qa_model = qa_model.half()
            fp16 = True
        qa_model.to(resolved_device)
        loaded = LoadedModel(name=model, tokenizer=tokenizer, model=qa_model,
                             device=resolved_device, fp16=fp16)
        _CACHE[key] = loaded
        _LOAD_COUNT += 1
        _LOGGER.info("beam_qa model loaded: %s on %s (quantize=%s, load #%d in pid %d)",
                     model, resolved_device, quantize, _LOAD_COUNT, os.getpid())
        return loaded


def evict(model: str) -> None:
    """Drops every cached copy of ``model`` (a model replaced by a newer one, ``qa/model_watch.py``).

    Batches still running keep their reference until they finish; then the memory is free.
    """
    with _CACHE_LOCK:
        for key in [key for key in _CACHE if key[0] == model]:
            del _CACHE[key]


def load_count() -> int:
    """How many times this process actually loaded a model (cache misses)."""
    return _LOAD_COUNT
