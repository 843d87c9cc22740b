"""Finding, fetching and loading a question-answering model once per process."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from beam_qa import metrics
from beam_qa import runtime as worker_runtime
from beam_qa.bounded_io import ContentTooLarge, safe_join
from beam_qa.errors import UsageError
from beam_qa.qa import model_manifest
from beam_qa.qa import precision as precisions
from beam_qa.qa.model_manifest import MANIFEST, MAX_MANIFEST_BYTES, ModelRefusedError

__all__ = ["LoadedModel", "ModelNotFoundError", "ModelRefusedError", "check_model_available", "evict", "load_model"]

_LOGGER = logging.getLogger(__name__)


class ModelNotFoundError(UsageError):
    """The model named by ``--model`` cannot be found or loaded."""


@dataclasses.dataclass
class LoadedModel:
    """A tokenizer and model ready for inference on one device."""

    name: str
    tokenizer: Any
    model: Any  # called with input_ids/attention_mask/...; returns .start_logits, .end_logits
    device: str
    precision: str  # the resolved precision: fp32, bf16, fp16 or int8
    model_id: str  # what answers: "NAME@REVISION PRECISION DEVICE(FEATURES)[ onnxruntime]", stored with answers


def advice(model: str, reason: str) -> str:
    return (f"Cannot load the question-answering model {model!r}: {reason}. Pass --model "
            "(QA_MODEL for make run) with one of: a local directory holding config.json, "
            "model weights and a fast tokenizer (make demo-model builds a real small one offline "
            "under .cache/demo-model/), a gs://bucket/path directory with the same files and their "
            f"{MANIFEST} (python -m beam_qa.qa.model_manifest), or a "
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
        if not storage.exists(model.rstrip("/") + "/" + MANIFEST):
            raise ModelNotFoundError(advice(model, f"no {MANIFEST} under that gs:// directory (a published model "
                                            "carries one, written last: docs/deploy.md)"))
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
    """Copies a gs:// model directory to local disk once, checked against its manifest; returns the folder.

    Only the files the manifest names are copied, each into the model's own folder (a name
    that would leave it is refused) and checked against its size and SHA-256 as it arrives.

    Raises:
        ModelRefusedError: the model does not match its manifest; nothing of it is kept.
    """
    from beam_qa.storage import Storage
    storage = Storage()
    base = model.rstrip("/") + "/"
    try:
        manifest = storage.read_bytes(base + MANIFEST, max_bytes=MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(advice(model, f"no {MANIFEST} under that gs:// directory (publish it last, "
                                        "docs/deploy.md)")) from exc
    except ContentTooLarge as exc:
        raise _refused(model, f"its {MANIFEST} is over {MAX_MANIFEST_BYTES} bytes") from exc
    try:
        files = model_manifest.parse(manifest)
    except ModelRefusedError as exc:
        raise _refused(model, str(exc)) from exc
    # The manifest's own hash is part of the folder's name: a model republished in place is a new copy.
    digest = hashlib.sha256(model.encode() + b"\0" + manifest).hexdigest()[:16]
    root = os.path.join(tempfile.gettempdir(), "beam_qa_models")
    target = os.path.join(root, digest)
    if os.path.exists(os.path.join(target, ".complete")):
        return target
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=digest, dir=root)
    try:
        for name, (size, sha) in sorted(files.items()):
            path = safe_join(staging, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                got = storage.download_to_path(base + name, path, max_bytes=size)
            except ContentTooLarge as exc:
                raise _refused(model, f"{name} is larger than the {size} bytes its manifest says") from exc
            except FileNotFoundError as exc:
                raise _refused(model, f"{name}, listed in its manifest, is missing") from exc
            if got != sha or os.path.getsize(path) != size:
                raise _refused(model, f"{name} does not match its manifest (SHA-256 {got[:12]}…, "
                               f"expected {sha[:12]}…)")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race; its copy is complete
    return target


def _refused(model: str, reason: str) -> ModelRefusedError:
    """Counts and logs a refused model; the caller raises what this returns."""
    metrics.MODELS_REFUSED.inc()
    _LOGGER.error("beam_qa refused the model %s: %s", model, reason)
    return ModelRefusedError(f"refused the model {model!r}: {reason}; publish it again with its manifest "
                             f"({MANIFEST}, written last: docs/deploy.md)")


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA GPU is visible; use --device cpu or auto")
    return device


def load_model(model: str, device: str = "auto", precision: str = "fp32", runtime: str = "auto") -> LoadedModel:
    """Loads ``model`` once per process and returns the shared instance.

    Beam's shared handle lets the DirectRunner drop a model when it discards a DoFn;
    the process's runtime (``beam_qa.runtime``) keeps it, so every bundle and every file reuses
    one load. The cache key is the model, the resolved device, precision and runtime.

    Args:
        model: Hugging Face id, local directory or gs:// directory.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16``, ``fp16``, ``int8`` or ``auto`` (``beam_qa.qa.precision``).
        runtime: ``auto``, ``torch`` or ``onnxruntime`` (``beam_qa.qa.precision.resolve_runtime``).

    Returns:
        The loaded model.
    """
    owner = worker_runtime.current()
    resolved_device = resolve_device(device)
    resolved_precision = precisions.resolve(precision, resolved_device)
    resolved_runtime = precisions.resolve_runtime(runtime, resolved_precision, resolved_device)
    key = (model, resolved_device, resolved_precision, resolved_runtime)
    with owner.models_lock:
        if key in owner.models:
            return owner.models[key]
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
        revision = weights_revision(qa_model, path)
        runner = _prepare(qa_model, resolved_device, resolved_precision, resolved_runtime, revision, tokenizer)
        model_id = f"{model}@{revision} {resolved_precision} {precisions.describe_device(resolved_device)}"
        if resolved_runtime == "onnxruntime":
            model_id += " onnxruntime"
        loaded = LoadedModel(name=model, tokenizer=tokenizer, model=runner, device=resolved_device,
                             precision=resolved_precision, model_id=model_id)
        owner.models[key] = loaded
        owner.model_loads += 1
        _LOGGER.info("beam_qa model loaded: %s (precision %s requested; cpu features: %s; torch threads %d; "
                     "load #%d in pid %d)", model_id, precision, ",".join(precisions.cpu_features()) or "none",
                     _torch_threads(), owner.model_loads, os.getpid())
        return loaded


def evict(model: str) -> None:
    """Drops every cached copy of ``model`` (a model replaced by a newer one, ``qa/model_watch.py``).

    Batches still running keep their reference until they finish; then the memory is free.
    """
    owner = worker_runtime.current()
    with owner.models_lock:
        for key in [key for key in owner.models if key[0] == model]:
            del owner.models[key]


def _prepare(qa_model, device: str, precision: str, runtime: str, revision: str, tokenizer):
    """The callable that runs the forward pass for ``precision`` on ``device``."""
    import torch
    if runtime == "onnxruntime":
        from beam_qa.qa import onnx_runtime
        if precision == "int8":
            return onnx_runtime.quantized_runner(qa_model, tokenizer, revision)
        return onnx_runtime.fp32_runner(qa_model, tokenizer, revision)
    # fp16/bf16 run the whole model in half precision, cast once here: a GPU's tensor cores
    # want both operands in it, and on a CPU with native bf16 (AVX-512 BF16, AMX) it is faster
    # than autocast, which re-casts every weight on every call and promotes the residual stream
    # back to fp32 (README "Throughput"). torch's layer-norm and softmax kernels accumulate in
    # fp32 inside; ``make quality`` measures what it keeps.
    if precision in ("fp16", "bf16"):
        qa_model = qa_model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    return qa_model.to(device)


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def weights_revision(qa_model, path: str) -> str:
    """12 hex digits naming the weights exactly: the Hub commit, or a hash of the weight files.

    A model from the Hub carries the commit it was downloaded at; a local (or gs://) directory
    is named by the SHA-256 of its weight files, so two different fine-tunes never share an id.
    """
    commit = getattr(qa_model.config, "_commit_hash", None)
    if commit:
        return str(commit)[:12]
    files = sorted(p for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()) \
        if os.path.isdir(path) else []
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    if not files:
        # No weight files to read (an unusual layout): hash the parameters themselves.
        for name, tensor in sorted(qa_model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def load_count() -> int:
    """How many times this process actually loaded a model (cache misses)."""
    return worker_runtime.current().model_loads
