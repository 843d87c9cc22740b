"""Numeric precision of the model's forward pass: what a device supports and what ``auto`` picks.

A precision is judged by the answer quality it keeps, measured as SQuAD F1 of the demo
model on its held-out articles (``make quality``, ``benchmarks/quality.py``), not by its
agreement with fp32 on a random-weight model. ``auto`` takes the fastest precision the
device supports whose measured loss is within ``QUALITY_BOUND_F1``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import platform
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
CHOICES = ("auto", *PRECISIONS)

# What runs the forward pass. ONNX Runtime runs fp32 and int8 on a CPU (beam_qa/qa/onnx_runtime.py);
# torch runs everything else (CUDA, and bf16/fp16 on a CPU).
RUNTIMES = ("auto", "torch", "onnxruntime")

# The most F1 points a precision may lose against fp32 and still be chosen by ``auto``.
QUALITY_BOUND_F1 = 1.0

# F1 points lost against fp32 by the demo model on its held-out articles, measured with
# ``make quality`` (docs/benchmarks.md "Precision"): per precision, the largest loss measured on
# any machine with either demo recipe, since ``auto`` must keep quality wherever it runs. int8
# lost 0.12 with the full recipe on an AMD EPYC with AVX-512 VNNI, but 2.13 (AVX2-only EPYC) and
# 2.64 (Intel Xeon with AMX and VNNI) with the quick one, so ``auto`` does not choose it on a CPU.
# ``make quality`` exits 1 when a precision this table puts within the bound measures beyond it.
MEASURED_F1_LOSS: dict[str, float] = {
    "fp32": 0.0,
    "bf16": 0.32,
    "fp16": 0.11,
    "int8": 2.64,
}

# Flags of /proc/cpuinfo that decide which precisions are fast on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# Fastest first, per device kind. On a CPU bf16 is only fast with native bf16 instructions
# (emulated bf16 is slower than fp32); int8 needs at least AVX2 (VNNI makes it faster).
# With AMX, torch's bf16 matrix multiplications outrun ONNX Runtime's int8 (README
# "Throughput": bf16 above int8 on the Xeon with AMX, int8 above bf16 on the EPYC without it).
_SPEED_ORDER = {"cpu": ("int8", "bf16", "fp32"), "cuda": ("fp16", "bf16", "fp32")}
_SPEED_ORDER_CPU_AMX = ("bf16", "int8", "fp32")


def speed_order(device: str, features: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The precisions of ``device``, fastest first, for this CPU's features."""
    if device_kind(device) == "cpu":
        features = cpu_features() if features is None else features
        if "amx_bf16" in features:
            return _SPEED_ORDER_CPU_AMX
    return _SPEED_ORDER[device_kind(device)]


def parse_cpu_flags(cpuinfo: str) -> tuple[str, ...] | None:
    """The ``CPU_FLAGS`` present on the first ``flags`` line of ``/proc/cpuinfo`` text, or None."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(flag for flag in CPU_FLAGS if flag in flags)
    return None


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The CPU's precision-relevant instruction-set flags, read from the machine, never assumed.

    Linux lists them in ``/proc/cpuinfo``; reading that file is all py-cpuinfo would do here.
    Elsewhere, torch's own dispatch level (``AVX512``, ``AVX2``) is the best available hint.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = parse_cpu_flags(cpuinfo.read_text(errors="replace"))
        if flags is not None:
            return flags
    import torch
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return {"avx512": ("avx2", "avx512f"), "avx2": ("avx2",)}.get(capability, ())


def device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def supported(precision: str, device: str, features: tuple[str, ...] | None = None) -> bool:
    """Whether ``precision`` runs *fast* on ``device`` (slow emulation counts as unsupported).

    Args:
        precision: one of ``PRECISIONS``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        features: CPU flags (default: this machine's ``cpu_features()``).
    """
    if precision == "fp32":
        return True
    if device_kind(device) == "cuda":
        if precision == "fp16":
            return True
        if precision == "bf16":
            import torch
            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return False
    features = cpu_features() if features is None else features
    if precision == "bf16":
        return "avx512_bf16" in features or "amx_bf16" in features
    if precision == "int8":
        return "avx2" in features and importlib.util.find_spec("onnxruntime") is not None
    return False


def runnable(precision: str, device: str) -> bool:
    """Whether ``precision`` can run at all on ``device`` (perhaps slowly, for quality checks)."""
    if device_kind(device) == "cuda":
        return precision != "int8"
    return True


def within_quality_bound(precision: str) -> bool:
    loss = MEASURED_F1_LOSS.get(precision)
    return loss is not None and loss <= QUALITY_BOUND_F1


def choose(device: str, features: tuple[str, ...] | None = None) -> str:
    """``auto``: the fastest precision ``device`` supports whose measured F1 loss is within bound."""
    for precision in speed_order(device, features):
        if supported(precision, device, features) and within_quality_bound(precision):
            return precision
    return "fp32"


def resolve(requested: str, device: str) -> str:
    """The precision to run: ``requested`` itself, or ``choose(device)`` for ``auto``.

    Raises:
        ValueError: when ``requested`` cannot run on ``device`` (int8 on CUDA), with what to pass.
    """
    if requested not in CHOICES:
        raise ValueError(f"--precision {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "auto":
        return choose(device)
    if not runnable(requested, device):
        raise ValueError(f"--precision {requested} cannot run on {device}: int8 is CPU-only; "
                         "on CUDA use fp16, bf16 or auto.")
    if not supported(requested, device):
        _LOGGER.warning("--precision %s has no fast path on this %s (features: %s); it will run, "
                        "but probably slower than fp32", requested, device, ",".join(cpu_features()) or "none")
    return requested


def resolve_runtime(requested: str, precision: str, device: str) -> str:
    """What runs a resolved ``precision`` on ``device``: ``torch`` or ``onnxruntime``.

    ``auto`` takes ONNX Runtime for fp32 and int8 on a CPU, where its fused graph is the fast
    path (README "Throughput"), and torch elsewhere.

    Raises:
        ValueError: for a combination that cannot run, with what to pass instead.
    """
    if requested not in RUNTIMES:
        raise ValueError(f"--runtime {requested!r} is not one of {', '.join(RUNTIMES)}")
    on_cpu = device_kind(device) == "cpu"
    if precision == "int8":
        if requested == "torch":
            raise ValueError("--precision int8 runs on ONNX Runtime only; pass --runtime auto or onnxruntime.")
        return "onnxruntime"
    if requested == "auto":
        return "onnxruntime" if on_cpu and precision == "fp32" else "torch"
    if requested == "onnxruntime" and not (on_cpu and precision == "fp32"):
        raise ValueError(f"--runtime onnxruntime runs fp32 and int8 on a CPU only, not {precision} on {device}; "
                         "pass --runtime auto or torch.")
    return requested


def describe_device(device: str) -> str:
    """``cpu(avx512_bf16,avx512_vnni)`` or ``cuda(NVIDIA H100 80GB HBM3)``: what the model runs on."""
    if device_kind(device) == "cuda":
        import torch
        return f"cuda({torch.cuda.get_device_name(torch.device(device))})"
    interesting = [f for f in cpu_features() if f not in ("avx2", "avx512f")] or list(cpu_features())
    return f"cpu({','.join(interesting) or platform.machine()})"
