"""--precision: CPU features are read, not assumed; auto never picks a precision beyond the quality bound."""

from __future__ import annotations

import pytest

from beam_qa.options import QaOptions
from beam_qa.qa import precision as precisions

AVX2_ONLY = ("avx2",)
ZEN4 = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16")
SAPPHIRE_RAPIDS = ZEN4 + ("amx_tile", "amx_bf16", "amx_int8")


def test_cpu_features_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 sha_ni\n")
    assert precisions.parse_cpu_flags(fake.read_text()) == ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    assert precisions.parse_cpu_flags("processor\t: 0\n") is None


def test_this_machines_features_come_from_the_machine():
    from pathlib import Path
    features = precisions.cpu_features()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
        assert set(features) == {f for f in precisions.CPU_FLAGS if f in flags}


@pytest.mark.parametrize("features, bf16, int8", [
    (AVX2_ONLY, False, True),
    (ZEN4, True, True),
    (SAPPHIRE_RAPIDS, True, True),
    ((), False, False),
])
def test_fast_paths_follow_the_cpu_features(features, bf16, int8):
    assert precisions.supported("fp32", "cpu", features)
    assert precisions.supported("bf16", "cpu", features) is bf16
    assert precisions.supported("int8", "cpu", features) is int8
    assert not precisions.supported("fp16", "cpu", features)


@pytest.mark.parametrize("losses, features, expected", [
    ({"fp32": 0, "bf16": 0.2, "int8": 0.5}, ZEN4, "int8"),
    ({"fp32": 0, "bf16": 0.2, "int8": 3.4}, ZEN4, "bf16"),
    ({"fp32": 0, "bf16": 0.2, "int8": 3.4}, AVX2_ONLY, "fp32"),
    ({"fp32": 0, "bf16": 1.5, "int8": 3.4}, SAPPHIRE_RAPIDS, "fp32"),
    ({"fp32": 0, "bf16": 0.2, "int8": 1.0}, AVX2_ONLY, "int8"),
    # With AMX, bf16 outruns int8 (README "Throughput"); without it, int8 comes first.
    ({"fp32": 0, "bf16": 0.2, "int8": 0.5}, SAPPHIRE_RAPIDS, "bf16"),
    ({"fp32": 0, "bf16": 1.5, "int8": 0.5}, SAPPHIRE_RAPIDS, "int8"),
])
def test_auto_takes_the_fastest_supported_precision_within_the_bound(losses, features, expected, monkeypatch):
    monkeypatch.setattr(precisions, "MEASURED_F1_LOSS", losses)
    assert precisions.choose("cpu", features) == expected


@pytest.mark.parametrize("features", [AVX2_ONLY, ZEN4, SAPPHIRE_RAPIDS, ()])
def test_auto_never_picks_a_precision_that_loses_more_than_the_bound(features):
    """Against the table that ships (make quality keeps it true to the measurement)."""
    chosen = precisions.choose("cpu", features)
    assert precisions.MEASURED_F1_LOSS[chosen] <= precisions.QUALITY_BOUND_F1


@pytest.mark.parametrize("features, expected", [
    (AVX2_ONLY, "fp32"), (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (("avx2", "avx512f", "avx512_vnni"), "fp32"),
])
def test_auto_never_chooses_int8_on_a_cpu_with_the_shipped_table(features, expected):
    """The quick demo model lost 2.13 (AVX2 only) and 2.64 (AMX and VNNI) F1 points in int8."""
    assert precisions.MEASURED_F1_LOSS["int8"] > precisions.QUALITY_BOUND_F1
    assert precisions.choose("cpu", features) == expected


def test_int8_on_cuda_is_refused_with_what_to_pass():
    with pytest.raises(ValueError, match="CPU-only.*fp16, bf16 or auto"):
        precisions.resolve("int8", "cuda")


def test_precision_flag_replaces_quantize():
    import argparse
    parser = argparse.ArgumentParser()
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    args = parser.parse_args([])
    assert args.precision == "fp32" and not hasattr(args, "quantize")
    for value in precisions.CHOICES:
        assert parser.parse_args([f"--precision={value}"]).precision == value
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision=int4"])


@pytest.mark.parametrize("features, expected", [
    # The distinctive features; AVX2 and AVX-512F say nothing once VNNI or BF16 are named.
    (SAPPHIRE_RAPIDS, "cpu(avx512_vnni,avx_vnni,avx512_bf16,amx_tile,amx_bf16,amx_int8)"),
    (ZEN4, "cpu(avx512_vnni,avx_vnni,avx512_bf16)"),
    (("avx2", "avx512f"), "cpu(avx2,avx512f)"),
    (AVX2_ONLY, "cpu(avx2)"),
])
def test_describe_device_names_the_cpu_features(features, expected, monkeypatch):
    monkeypatch.setattr(precisions, "cpu_features", lambda: features)
    assert precisions.describe_device("cpu") == expected


def test_describe_device_without_features_names_the_architecture(monkeypatch):
    import platform
    monkeypatch.setattr(precisions, "cpu_features", lambda: ())
    assert precisions.describe_device("cpu") == f"cpu({platform.machine()})"

