"""float32 against mixed bfloat16, step by step, side by side in one process.

    python benchmarks/precision.py --flagfile=configs/pong.cfg
    python benchmarks/precision.py --flagfile=configs/pong.cfg --rounds=5 --predict_batch=16,32

Builds the run's model twice (float32, and Keras' `mixed_bfloat16`: bfloat16 compute, float32
variables, heads, loss and optimizer state) and times, interleaved round by round, each part a
training run calls:

- `predict`: the predictor's inference at each `--predict_batch`;
- `next_values`: the V(s_n) pass alone (inference at the train batch's distinct next states:
  one per env per n_step rows);
- `train`: the whole train step at `--train_batch` rows (V(s_n) pass, taped forward, backward,
  RMSProp update, instruments).

Per part it prints each precision's median milliseconds over the rounds and the ratio
float32 / bfloat16 (> 1: bfloat16 is faster), and the achieved GFLOP/s of the train step,
counted from the model's own layers (2 FLOPs per multiply-add; backward = 2x forward), against
the CPU's fp32 FMA peak as estimated from /proc/cpuinfo. It also prints the CPU's model name
and its bf16 flags (`avx512_bf16`, `amx_bf16`), which `--mixed_precision=auto` reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from ga3c import hardware
from ga3c.cli import parse_config


def multiply_adds(model) -> int:
    """Multiply-adds of one row's forward pass through the model's Conv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def train_flops(model, rows: int, next_rows: int) -> float:
    """FLOPs of one train step: forward + backward (2x) over `rows`, forward over
    `next_rows` (the V(s_n) pass)."""
    per_row = 2 * multiply_adds(model)
    return per_row * (3 * rows + next_rows)


def time_calls(step, calls: int) -> float:
    """Median seconds of `calls` calls of `step` (after one untimed call)."""
    step()
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def parts(learner, config, env_spec, predict_batches, train_batch):
    """name -> (rows, a function that runs that part once) for one learner."""
    from ga3c.returns import Transitions

    rng = np.random.default_rng(0)
    n = config.algo.n_step

    def states(k):
        return rng.normal(size=(k, *env_spec.obs_shape)).astype(env_spec.obs_dtype)

    out = {}
    for b in predict_batches:
        s = states(b)
        out[f"predict@{b}"] = (b, lambda s=s: learner.predict(s))
    next_rows = max(1, train_batch // n)
    s_next = states(next_rows)
    out[f"next_values@{next_rows}"] = (next_rows, lambda: learner.predict(s_next))
    s = states(train_batch)
    next_index = np.minimum(np.arange(train_batch) // n, next_rows - 1).astype(np.int32)
    data = Transitions(s, rng.integers(0, env_spec.num_actions, train_batch).astype(np.int32),
                       np.ones(train_batch, np.float32), s_next, next_index,
                       np.full(train_batch, n, np.int32), np.ones(train_batch, np.float32),
                       np.zeros(train_batch, np.int64))
    out[f"train@{train_batch}"] = (train_batch, lambda: learner.train(data))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per part per round")
    parser.add_argument("--predict_batch", default="16", help="comma list of predict batches")
    parser.add_argument("--train_batch", type=int, default=80)
    parser.add_argument("--json", default="", help="write the medians here")
    args, ga3c_flags = parser.parse_known_args(argv)
    config = parse_config(ga3c_flags)
    from ga3c.envs import inspect_env
    from ga3c.learner import Learner
    from ga3c.startup import import_tensorflow_quietly

    import_tensorflow_quietly(config.run.tf_threads)
    env_spec = inspect_env(config.env.env_id, config.env)
    batches = [int(b) for b in args.predict_batch.split(",")]
    learners = {name: Learner.for_run(config.replace(run__mixed_precision=mp), env_spec)
                for name, mp in (("float32", "off"), ("bfloat16", "on"))}
    runs = {name: parts(lr, config, env_spec, batches, args.train_batch)
            for name, lr in learners.items()}
    info = hardware.describe()
    print(f"cpu: {info['model']}; {info['cores']} cores; bf16 flags: "
          f"{', '.join(info['bf16_flags']) or 'none'}; fp32 FMA peak ~{info['fp32_peak_gflops']:.0f} "
          f"GFLOP/s ({info['peak_basis']})")
    times = {name: {part: [] for part in runs[name]} for name in runs}
    for r in range(args.rounds):
        for name in runs:  # interleaved: each round times both precisions
            for part, (_, step) in runs[name].items():
                times[name][part].append(time_calls(step, args.calls))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{part} {times['float32'][part][-1] * 1e3:.1f}/{times['bfloat16'][part][-1] * 1e3:.1f} ms"
            for part in runs["float32"]), flush=True)
    model = learners["float32"].model
    next_rows = max(1, args.train_batch // config.algo.n_step)
    flops = train_flops(model, args.train_batch, next_rows)
    print(f"\n{'part':<16}{'fp32 ms':>10}{'bf16 ms':>10}{'fp32/bf16':>11}")
    record = {"cpu": info, "multiply_adds_per_row": multiply_adds(model), "parts": {}}
    for part in runs["float32"]:
        a = statistics.median(times["float32"][part])
        b = statistics.median(times["bfloat16"][part])
        print(f"{part:<16}{a * 1e3:>10.2f}{b * 1e3:>10.2f}{a / b:>11.2f}")
        record["parts"][part] = {"float32_ms": a * 1e3, "bfloat16_ms": b * 1e3, "ratio": a / b}
    for name in runs:
        t = statistics.median(times[name][f"train@{args.train_batch}"])
        gflops = flops / t / 1e9
        record[f"train_gflops_{name}"] = gflops
        print(f"train step, {name}: {flops / 1e9:.2f} GFLOP in {t * 1e3:.1f} ms = "
              f"{gflops:.0f} GFLOP/s ({gflops / info['fp32_peak_gflops']:.0%} of the fp32 peak)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
