"""The `--mixed_precision=auto` rule and what it reads off the machine (no TensorFlow)."""

from __future__ import annotations

import pytest

from ga3c.config import Config, RunConfig
from ga3c.hardware import cpu_info, decide_mixed_precision, describe, fp32_peak_gflops

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
ZEN3 = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.424\nflags\t\t: fpu avx2 fma\n"
SPR = "vendor_id\t: GenuineIntel\nmodel name\t: Xeon\ncpu MHz\t\t: 2000\nflags\t\t: avx512f fma amx_bf16 amx_tile\n"


def write(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_cpu_info_reads_the_first_cpu(tmp_path):
    info = cpu_info(write(tmp_path, ZEN4))
    assert info["model"] == "AMD EPYC 9R14" and info["mhz"] == 2600.0
    assert "avx512_bf16" in info["flags"] and "fma" in info["flags"]
    assert cpu_info(str(tmp_path / "missing"))["flags"] == frozenset()


def test_fp32_peak_by_hand(tmp_path):
    # 2 cores x 2.6 GHz x (2 pipes x 8 floats x 2 FLOPs) = 166.4 GFLOP/s (AMD splits AVX-512)
    assert fp32_peak_gflops(cpu_info(write(tmp_path, ZEN4)), 2)[0] == pytest.approx(166.4)
    # an Intel core with AVX-512: 2 pipes x 16 floats x 2 = 64 FLOP/cycle; 4 x 2.0 x 64 = 512
    assert fp32_peak_gflops(cpu_info(write(tmp_path, SPR)), 4)[0] == pytest.approx(512.0)
    assert describe(write(tmp_path, ZEN3))["bf16_flags"] == []


@pytest.mark.parametrize("setting, flags, gpus, on, reason", [
    ("auto", {"avx512_bf16"}, [], True, "avx512_bf16"),
    ("auto", {"amx_bf16", "avx512_bf16"}, [], True, "avx512_bf16, amx_bf16"),
    ("auto", {"avx2", "fma"}, [], False, "no avx512_bf16 or amx_bf16"),
    # On a GPU machine the GPU decides, whatever the host CPU has.
    ("auto", {"avx512_bf16"}, [(7, 5)], False, "compute capability 7.5 < 8.0"),
    ("auto", set(), [(8, 0)], True, "compute capability 8.0"),
    ("auto", set(), [(9, 0), (7, 0)], False, "compute capability 7.0"),  # the weakest counts
    ("on", set(), [], True, "--mixed_precision=on"),
    ("off", {"avx512_bf16"}, [(9, 0)], False, "--mixed_precision=off"),
])
def test_auto_rule(setting, flags, gpus, on, reason):
    got, why = decide_mixed_precision(setting, flags, gpus)
    assert got is on and reason in why, why


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="auto, on, off"):
        decide_mixed_precision("maybe", set(), [])


@pytest.mark.parametrize("given, stored", [
    (True, "on"), (False, "off"), ("true", "on"), ("False", "off"), ("1", "on"), ("no", "off"),
    (" AUTO ", "auto"), ("on", "on")])
def test_mixed_precision_spellings(given, stored):
    assert RunConfig(mixed_precision=given).mixed_precision == stored


def test_an_old_config_json_with_a_bool_still_loads():
    data = Config().to_dict()
    data["run"]["mixed_precision"] = False
    assert Config.from_dict(data).run.mixed_precision == "off"
    bad = Config().replace(run__mixed_precision="sometimes").validate()
    assert any("mixed_precision='sometimes'" in p for p in bad)
