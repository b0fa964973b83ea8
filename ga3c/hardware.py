"""What the machine can compute fast, and the `--mixed_precision=auto` rule (no TensorFlow).

bfloat16 pays on a CPU that multiplies it natively (the `avx512_bf16` or `amx_bf16` flags in
/proc/cpuinfo: AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids and later): there the
train step runs 1.3-2.4x faster than in float32 (issue 20's measurement on a Zen 4). Without
them, TensorFlow emulates bfloat16 through float32 conversions and it only costs. On a GPU the
GPU decides, never the host CPU's flags: bfloat16 tensor cores from compute capability 8.0
(Ampere) on.
"""

from __future__ import annotations

import os

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIXED_PRECISION_SETTINGS = ("auto", "on", "off")
GPU_BF16_CAPABILITY = (8, 0)


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, object]:
    """The first CPU's model name, flags and MHz as /proc/cpuinfo gives them (empty where the
    file is missing or says nothing, e.g. not Linux)."""
    info: dict[str, object] = {"model": "unknown", "flags": frozenset(), "mhz": 0.0,
                               "vendor": ""}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return info
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":
            info["model"] = value
        elif key == "flags":
            info["flags"] = frozenset(value.split())
        elif key == "cpu MHz":
            info["mhz"] = float(value or 0)
        elif key == "vendor_id":
            info["vendor"] = value
    return info


def fp32_peak_gflops(info: dict[str, object], cores: int) -> tuple[float, str]:
    """An estimate of the fp32 FMA peak (GFLOP/s) and how it was reckoned: 2 FMA pipes per core
    of 8 floats (AVX2, and AMD's AVX-512, which splits into 256-bit halves), or of 16 on an
    Intel core with AVX-512; 2 FLOPs per FMA; at the MHz /proc/cpuinfo reports (not turbo)."""
    flags = info["flags"]
    wide = "avx512f" in flags and info["vendor"] == "GenuineIntel"
    per_cycle = 2 * (16 if wide else 8 if "fma" in flags else 4) * 2
    ghz = float(info["mhz"]) / 1e3
    basis = (f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle "
             f"({'2x512' if wide else '2x256' if 'fma' in flags else '2x128'}-bit FMA)")
    return cores * ghz * per_cycle, basis


def describe(path: str = "/proc/cpuinfo") -> dict[str, object]:
    """The CPU as the benchmarks and the start-up line report it."""
    info = cpu_info(path)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak, basis = fp32_peak_gflops(info, cores or 1)
    return {"model": info["model"], "cores": cores,
            "bf16_flags": [f for f in BF16_FLAGS if f in info["flags"]],
            "fp32_peak_gflops": peak, "peak_basis": basis}


def decide_mixed_precision(setting: str, cpu_flags, gpu_capabilities) -> tuple[bool, str]:
    """Whether the run computes in bfloat16, and why in a few words.

    `setting`: "on", "off" or "auto". `cpu_flags`: the CPU's flags. `gpu_capabilities`: one
    (major, minor) compute capability per GPU TensorFlow sees (empty: CPU only). "auto" is on
    where every GPU has bfloat16 tensor cores, or with no GPU where the CPU has a bf16 flag.
    """
    if setting not in MIXED_PRECISION_SETTINGS:
        raise ValueError(f"mixed_precision={setting!r}: must be one of "
                         f"{', '.join(MIXED_PRECISION_SETTINGS)}")
    if setting != "auto":
        return setting == "on", f"--mixed_precision={setting}"
    if gpu_capabilities:
        low = min(tuple(c) for c in gpu_capabilities)
        cc = f"compute capability {low[0]}.{low[1]}"
        if low >= GPU_BF16_CAPABILITY:
            return True, f"auto: the GPU has bfloat16 tensor cores ({cc})"
        return False, f"auto: the GPU has no bfloat16 tensor cores ({cc} < 8.0)"
    have = [f for f in BF16_FLAGS if f in cpu_flags]
    if have:
        return True, f"auto: the CPU multiplies bfloat16 natively ({', '.join(have)})"
    return False, "auto: the CPU has no avx512_bf16 or amx_bf16 (bfloat16 would be emulated)"
