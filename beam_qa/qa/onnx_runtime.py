"""CPU inference through ONNX Runtime: export once, fuse, optionally quantize per channel, run.

fp32 on a CPU runs here by default (``--runtime auto``): the exported graph after ONNX
Runtime's BERT fusions (embedding and skip layer norms, bias + GELU; the exporter's
scaled-dot-product attention is not a pattern the optimizer fuses, so attention stays as
MatMul/Softmax nodes) runs the same arithmetic in fp32 as torch
eager mode, and on the development machine it answered 1.8× as many rows per second with
answers identical to torch's (README "Throughput"; ``make equivalence`` checks it against the
transformers 4.57 pipeline).

For int8, ``torch.ao.quantization.quantize_dynamic`` warns that it is deprecated on every use and is
slated for removal; ONNX Runtime's quantization is maintained and its int8 kernels
(``MatMulInteger`` after ``DynamicQuantizeLinear``) use AVX2 and AVX-512 VNNI. The recipe
(``RECIPE``) was chosen with ``make quality`` on the demo model (README "Precision and answer
quality"):

* the model is exported with torch's ``torch.export``-based ONNX exporter (the TorchScript
  one is deprecated), batch and sequence length dynamic;
* ONNX Runtime's transformer optimizer fuses what it recognises in that graph (embedding and
  skip layer norms, bias + GELU), in fp32;
* ``quantize_dynamic`` stores every weight MatMul as int8 with one scale per output channel
  (``per_channel``) and quantizes activations per call (uint8). Names listed in
  ``RECIPE["keep_fp32"]`` would stay fp32; on the demo model keeping the feed-forward output
  layers in fp32 did not help (README), so none is kept.

The exported files (fused fp32, and quantized int8) are cached per weights revision and per
code that built them under ``$QA_ONNX_CACHE`` (default: ``<tmp>/beam_qa_models/onnx``), so a
process exports at most once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

RECIPE: dict[str, Any] = {
    "exporter": "torch.onnx.export(dynamo=True)",
    "optimizer": "onnxruntime.transformers bert fusions",
    "weights": "int8 symmetric, per output channel",
    "activations": "uint8, dynamic per call",
    "keep_fp32": [],
}
_OUTPUTS = ("start_logits", "end_logits")


def cache_root() -> Path:
    return Path(os.environ.get("QA_ONNX_CACHE") or Path(tempfile.gettempdir()) / "beam_qa_models" / "onnx")


@functools.cache
def _build_digest() -> str:
    """Names what built a cached file: the recipe, this module's code and the runtimes' versions.

    A file built by other code (an older beam-qa on a reused machine or volume) is never reused.
    """
    import onnx
    import onnxruntime
    import torch
    built_by = {"recipe": RECIPE, "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                "versions": [onnx.__version__, onnxruntime.__version__, torch.__version__]}
    return hashlib.sha256(json.dumps(built_by, sort_keys=True).encode()).hexdigest()[:8]


@contextlib.contextmanager
def _quiet_exporter():
    """Silences the exporter's own chatter, which is about torch internals and not our call.

    torch 2.13's exporter logs that torchvision ops are skipped, and its pytree code emits a
    FutureWarning about ``LeafSpec`` from inside torch; neither concerns this export.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def export(qa_model, input_names: list[str], target: Path) -> Path:
    """Exports ``qa_model`` to ONNX with dynamic batch and sequence length."""
    import torch
    example = {name: torch.ones((2, 16), dtype=torch.long) for name in input_names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=4096)
    with _quiet_exporter(), torch.inference_mode(False):
        program = torch.onnx.export(
            qa_model, (), kwargs=example, input_names=input_names, output_names=list(_OUTPUTS),
            dynamic_shapes={name: {0: batch, 1: sequence} for name in input_names}, dynamo=True,
            verbose=False)
        program.save(str(target))
    return target


def optimize(source: Path, target: Path, config) -> Path:
    """ONNX Runtime's BERT fusions (attention, GELU, skip layer norm); fp32 stays fp32."""
    from onnxruntime.transformers.optimizer import optimize_model
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden)
    optimized.save_model_to_file(str(target))
    return target


def quantize(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of the MatMul weights, per channel, sensitive layers kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    graph = onnx.load(str(source), load_external_data=False).graph
    keep = [node.name for node in graph.node if any(part in node.name for part in RECIPE["keep_fp32"])]
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=keep)
    return target


def _build_once(directory: Path, target_name: str, build) -> Path:
    """``directory/target_name``, built by ``build(staging_dir)`` in a staging folder once per machine.

    The staging folder is renamed into place, so a process never sees a half-written file and
    two processes racing both end with a complete one.
    """
    target = directory / target_name
    if target.is_file():
        return target
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory.parent))
    build(staging)
    try:
        staging.rename(directory)
    except OSError:  # another process finished first; its file is complete
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fused_file(qa_model, input_names: list[str], revision: str) -> Path:
    """The cached fp32 ONNX file for these weights, built once (export, fuse)."""
    def build(staging: Path) -> None:
        _LOGGER.info("building the fp32 ONNX model for weights %s (once per machine)", revision)
        exported = export(qa_model, input_names, staging / "model.onnx")
        optimize(exported, staging / "model.fused.onnx", qa_model.config)
        for name in ("model.onnx", "model.onnx.data"):
            (staging / name).unlink(missing_ok=True)
    return _build_once(cache_root() / f"{revision}-fp32-{_build_digest()}", "model.fused.onnx", build)


def quantized_file(qa_model, input_names: list[str], revision: str) -> Path:
    """The cached int8 ONNX file for these weights, built once (export, fuse, quantize)."""
    def build(staging: Path) -> None:
        _LOGGER.info("building the int8 ONNX model for weights %s (once per machine)", revision)
        exported = export(qa_model, input_names, staging / "model.onnx")
        fused = optimize(exported, staging / "model.fused.onnx", qa_model.config)
        quantize(fused, staging / "model.int8.onnx")
        for name in ("model.onnx", "model.onnx.data", "model.fused.onnx", "model.fused.onnx.data"):
            (staging / name).unlink(missing_ok=True)
    return _build_once(cache_root() / f"{revision}-{_build_digest()}", "model.int8.onnx", build)


class OnnxQaRunner:
    """Runs an ONNX QA model like a transformers one: ``runner(**inputs).start_logits``."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        # One pool the size torch uses in this process, so int8 and fp32 compete for the
        # same cores in the same way (the worker's thread budget is set by the handler).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No spin-waiting between a call's parallel sections: a spinning thread holds a core that
        # the rest of the pipeline (tokenizing, decoding, Beam, another bundle's call) could use, and
        # on a shared or busy machine it waits for descheduled peers (benchmarks/overhead.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def __call__(self, **inputs):
        import torch
        feed = {name: tensor.cpu().numpy() for name, tensor in inputs.items() if name in self._inputs}
        start, end = self._session.run(list(_OUTPUTS), feed)
        return types.SimpleNamespace(start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end))


def _input_names(tokenizer) -> list[str]:
    return [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]


def quantized_runner(qa_model, tokenizer, revision: str) -> OnnxQaRunner:
    """An int8 runner for ``qa_model`` (built or taken from the cache)."""
    import torch
    return OnnxQaRunner(quantized_file(qa_model, _input_names(tokenizer), revision), torch.get_num_threads())


def fp32_runner(qa_model, tokenizer, revision: str) -> OnnxQaRunner:
    """An fp32 runner for ``qa_model``: the fused graph, same arithmetic (built or taken from the cache)."""
    import torch
    return OnnxQaRunner(fused_file(qa_model, _input_names(tokenizer), revision), torch.get_num_threads())
