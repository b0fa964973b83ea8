"""Throughput of the real training pipeline, and its ceilings measured in the same run.

    python benchmarks/throughput.py --flagfile=configs/cartpole.cfg --seconds=30
    python benchmarks/throughput.py --flagfile=configs/cartpole.cfg --seconds=20 \\
        --sweep=num_agents=1,2,4 --sweep=num_trainers=1,2 --json=throughput.json
    python benchmarks/throughput.py --flagfile=configs/pong.cfg --seconds=30 \\
        --sweep=runner=threads,ray

Any ga3c-train flag may follow. For each configuration (the grid of every `--sweep`, or just
the flags given) it runs, one after another in this process:

1. the **pipeline**: the real service (agents, predictors, trainers, the real model) for
   `--warmup` seconds, then measures `--seconds` seconds;
2. the **env-only ceiling**: the same agents (or Ray runners), envs and thread layout with a
   model that costs nothing (uniform random actions, training discarded);
3. the **predict-only** and **train-only ceilings**: the real model's predict and train steps
   alone, at the mean batch sizes the pipeline used, in as many threads as the pipeline had.

`--sweep=runner=threads,ray` measures the Ray runners (`ga3c.ray_runner`) beside the agent
threads with the same envs: a swept `runner=ray` row without a `num_runners` of its own
(swept or given) runs `num_runners` = the row's `num_agents` (its `num_agents` is shown as
`num_runners`), so it steps as many envs as the threads row beside it. One local Ray (or
`--ray_address`'s cluster) serves every configuration of the run and is shut down at its
end. Flags that must move together make one axis:
`--sweep=runner/num_agents/envs_per_agent=threads/2/16,ray/4/8`. A Ray row's env-only ceiling
is its own runners with the free model (so it includes the transport), and its throughput is
also given as a fraction of the best threads row with as many envs (`vs_threads`), with each
runner's env steps/s and the round trip of a group step (actions sent -> observations back,
p50/p95).

`--rounds=N` measures the whole grid N times, one pass after another, and prints each
configuration's medians over its rounds (a Ray row is compared with the threads rows of its own
round): on a machine whose load changes over minutes, side by side means interleaved.
For each Ray configuration it also prints a projection (not a measurement) of how many
runners saturate the central learner: see `project`.

It prints one table row per configuration with every pipeline figure and its ratio to the
matching ceiling (ratios survive a noisy machine; absolute numbers drift by 1.5x here), marks
the best configuration by throughput (min of env steps/s and samples trained/s: while the
bounded training queue fills, envs run ahead of what is trained, which does not last), and
writes one JSON record per configuration.
Rates are over the measured window only, never averages since start.

`--autotune_seconds=S` adds one more run after the sweep: the flags as given (set the poor
starting layout there, e.g. --num_agents=1 --num_trainers=1) with `--autotune`, tuning for S
seconds; the tuner is then frozen and the layout it reached is measured like the others and
compared with the best swept configuration:

    python benchmarks/throughput.py --flagfile=configs/cartpole.cfg --num_agents=1 \
        --num_trainers=1 --sweep=num_agents=1,2,3 --sweep=num_trainers=1,2 \
        --autotune_seconds=180
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ga3c import hardware  # noqa: E402
from ga3c.cli import import_tensorflow_quietly, parse_config  # noqa: E402
from ga3c.errors import UserError  # noqa: E402
from ga3c.config import Config  # noqa: E402
from ga3c.fakes import FakePredict, FakeTrain  # noqa: E402
from ga3c.procs import descendants  # noqa: E402
from ga3c.returns import Transitions  # noqa: E402
from ga3c.stats import Stats, peak_rss_mib  # noqa: E402
from ga3c.threads import POLL_SECONDS, Failure  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Pace:
    """The waits the benchmark adds to `--warmup` and `--seconds`. The defaults are what a
    measurement needs (threads just started or retired must settle; a ceiling shorter than
    2 s is mostly noise), so they are not flags; a smoke test passes shorter ones to `main`."""

    settle_seconds: float = 3.0  # after a layout change (tuner frozen, a switch), before a window
    min_ceiling_seconds: float = 2.0  # each ceiling runs max(this, --seconds / 2)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds so far)} of every living process below this one (Linux /proc;
    empty elsewhere): a local Ray's GCS, raylet and workers, a runner actor's named
    "ray::EnvRunner"."""
    return {pid: (p.name, p.cpu_seconds) for pid, p in descendants(os.getpid()).items()}


def child_cpu_percent(before: dict, after: dict, wall: float) -> dict:
    """CPU use (% of one core) of this process's children between two `child_cpu_seconds`:
    all of them (`ray_cpu_percent`: a local Ray's processes) and the runner actors'
    (`runner_cpu_percent`); None without any."""
    used = {pid: (name, sec - before.get(pid, (name, 0.0))[1])
            for pid, (name, sec) in after.items()}
    runners = [sec for name, sec in used.values() if name.startswith("ray::EnvRunner")]
    return dict(
        ray_cpu_percent=100.0 * sum(sec for _, sec in used.values()) / wall if used else None,
        runner_cpu_percent=100.0 * sum(runners) / wall if runners else None)


def gpu_utilisation() -> float | None:
    """Mean utilisation (%) of the visible NVIDIA GPUs, or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10).stdout
        values = [float(v) for v in out.split()]
        return sum(values) / len(values) if values else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def measure_window(stats: Stats, warmup: float, seconds: float, failure: Failure,
                   on_start=lambda: None, after_warmup=lambda: None) -> dict:
    """Rates of the pipeline over `seconds` after `warmup`, plus CPU use and lag."""
    time.sleep(warmup)
    after_warmup()
    before = stats.snapshot()  # the warm-up does not count
    on_start()
    cpu0, children0 = cpu_seconds(), child_cpu_seconds()
    t0 = time.monotonic()
    gpu = []
    while time.monotonic() - t0 < seconds and not failure:
        time.sleep(max(0.0, min(1.0, seconds - (time.monotonic() - t0))))
        util = gpu_utilisation()
        if util is not None:
            gpu.append(util)
    w = stats.window(before)
    wall = time.monotonic() - t0
    return dict(
        env_steps_per_s=w.env_steps_per_s, predictions_per_s=w.predictions_per_s,
        trainings_per_s=w.trainings_per_s, samples_per_s=w.samples_per_s,
        mean_predict_batch=w.mean_predict_batch, mean_train_batch=w.mean_train_batch,
        policy_lag_mean=w.policy_lag_mean, policy_lag_p95=w.policy_lag_p95,
        throughput=w.throughput,
        cpu_percent=100.0 * (cpu_seconds() - cpu0) / wall,  # this process's (not Ray's actors')
        gpu_percent=float(np.mean(gpu)) if gpu else None,
        **child_cpu_percent(children0, child_cpu_seconds(), wall),
        **runner_figures(w),
    )


RUNNER_FIGURES = ("runner_env_steps_per_s", "runner_env_steps_per_s_stats", "round_trip_p50_ms",
                  "round_trip_p95_ms")


def runner_figures(w) -> dict:
    """A window's Ray runner figures (empty / None under --runner=threads): each runner's env
    steps/s, their min/median/max, and the round trip of a group step in ms."""
    rates = w.source_env_steps_per_s
    spread = (dict(zip(("min", "median", "max"),
                       np.percentile(list(rates.values()), [0, 50, 100]).tolist()))
              if rates else None)
    ms = {q: None if v is None else v * 1e3
          for q, v in (("p50", w.round_trip_p50), ("p95", w.round_trip_p95))}
    return dict(zip(RUNNER_FIGURES, (dict(rates), spread, ms["p50"], ms["p95"])))


def wait_for_runners(config: Config, stats: Stats, failure: Failure,
                     seconds: float = 300.0) -> None:
    """With --runner=ray, until every runner has stepped its envs (bounded): an actor's start
    (a process, its imports, its envs) takes seconds, which must not count against it."""
    if config.pipeline.runner != "ray":
        return
    deadline = time.monotonic() + seconds
    while (len(stats.snapshot().source_steps) < config.pipeline.num_runners and not failure
           and time.monotonic() < deadline):
        time.sleep(POLL_SECONDS)


def set_layout(pipeline, layout: dict[str, int]) -> None:
    for knob, count in layout.items():
        while pipeline.counts()[knob] != count:
            pipeline.resize(knob, 1 if pipeline.counts()[knob] < count else -1)


def run_pipeline(config: Config, env_spec, warmup: float, seconds: float,
                 compare_layout: dict[str, int] | None = None, pace: Pace = Pace()) -> dict:
    """The real service for warmup + seconds; returns the measured window. With autotune on,
    the warm-up is the tuning time: the tuner is then frozen, and the layout it reached is
    measured (`layout`, `decisions` in the result). `compare_layout`: then switch the same
    running service to that layout and measure it too (`compare_throughput`), so the
    two are compared side by side, with the same model and episodes."""
    from ga3c.service import build_service

    service = build_service(config, env_spec)
    result: dict = {}
    depths: list[dict] = []
    measuring = threading.Event()
    sampler_stop = threading.Event()

    def sample_depths():  # queue depths over the measured window only
        while not measuring.wait(POLL_SECONDS):
            if sampler_stop.is_set():
                return
        while not sampler_stop.wait(0.2):
            depths.append(service.pipeline.queue_depths())

    def freeze_tuner():
        if service.autotuner is not None:
            service.autotuner.freeze()
            time.sleep(pace.settle_seconds)  # threads it started or retired settle

    sampler = threading.Thread(target=sample_depths, daemon=True)
    service.start()
    try:
        sampler.start()
        wait_for_runners(config, service.stats, service.failure)
        result.update(measure_window(service.stats, warmup, seconds, service.failure,
                                     on_start=measuring.set, after_warmup=freeze_tuner))
        result["layout"] = service.pipeline.counts()
        if service.autotuner is not None:
            result["decisions"] = [dataclasses.asdict(d) for d in service.autotuner.decisions]
        sampler_stop.set()
        if compare_layout is not None and not service.failure:
            # Windows tuned (above), best, best, tuned: A-B-B-A, so a steady drift of the
            # machine weighs both layouts alike.
            tuned_layout, rates = service.pipeline.counts(), {"best": [], "tuned": []}
            for name, layout in (("best", compare_layout), ("best", compare_layout),
                                 ("tuned", tuned_layout)):
                set_layout(service.pipeline, layout)
                window = measure_window(service.stats, pace.settle_seconds, seconds,
                                        service.failure)
                rates[name].append(window["throughput"])
            result["compare_layout"] = dict(compare_layout)
            result["compare_throughput"] = float(np.mean(rates["best"]))
            result["tuned_throughput_again"] = rates["tuned"][0]
    finally:
        sampler_stop.set()
        service.request_stop("benchmark window over")
        ended = service.stop()
    if not ended.ok:
        raise RuntimeError(f"pipeline run failed: {ended.error or ended.traceback}")
    for key in ("predict", "train"):
        result[f"mean_{key}_queue"] = float(np.mean([d[key] for d in depths])) if depths else 0.0
    return result


def env_only_ceiling(config: Config, warmup: float, seconds: float) -> dict:
    """The window (`measure_window`'s) of the same agents (or Ray runners) and thread layout
    when the model costs nothing."""
    from ga3c.pipeline import Pipeline

    stop, failure = threading.Event(), Failure()
    stats = Stats(None)
    # Uniform random actions (zero logits), training discarded: the model costs nothing.
    free_predict = FakePredict(num_actions=_num_actions(config), record=False)
    pipeline = Pipeline(config, free_predict, FakeTrain(record=False), lambda: 0, stats, stop,
                        failure, seed=config.run.seed)
    pipeline.start()
    try:
        # The warm-up starts once the envs are up (their first action is asked for):
        # creating many gymnasium Atari envs (the threads backend) takes seconds, which must
        # not count against the envs.
        deadline = time.monotonic() + 120
        while not free_predict.entered.wait(POLL_SECONDS):
            if failure or time.monotonic() > deadline:
                break
        wait_for_runners(config, stats, failure)
        window = measure_window(stats, warmup, seconds, failure)
    finally:
        stop.set()
        pipeline.join()
    if failure:
        raise RuntimeError(f"env-only run failed: {failure.traceback}")
    return window


def _num_actions(config: Config) -> int:
    from ga3c.envs import inspect_env

    return inspect_env(config.env.env_id, config.env).num_actions


def model_ceiling(learner, config: Config, env_spec, batch: int, threads: int, seconds: float,
                  train: bool) -> float:
    """Samples/s of the real model's predict (or train) step alone at `batch` rows
    (`learner`: `Learner.for_run(config, env_spec)`)."""
    rng = np.random.default_rng(0)
    batch = max(1, int(round(batch)))
    states = rng.normal(size=(batch, *env_spec.obs_shape)).astype(env_spec.obs_dtype)
    # Rows share bootstrap states as an agent's segments do: one per env per n_step rows.
    next_index = (np.arange(batch) // config.algo.n_step).astype(np.int32)
    data = Transitions(states, rng.integers(0, env_spec.num_actions, batch).astype(np.int32),
                       np.ones(batch, np.float32), states[:next_index[-1] + 1].copy(), next_index,
                       np.full(batch, config.algo.n_step, np.int32), np.ones(batch, np.float32),
                       np.zeros(batch, np.int64))
    step = (lambda: learner.train(data)) if train else (lambda: learner.predict(states))
    step()
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def loop(i):
        while time.monotonic() < deadline:
            step()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 30)
    return sum(counts) * batch / (time.monotonic() - t0)


def measure(config: Config, env_spec, warmup: float, seconds: float,
            compare_layout: dict[str, int] | None = None, pace: Pace = Pace()) -> dict:
    from ga3c.learner import Learner

    rec = run_pipeline(config, env_spec, warmup, seconds, compare_layout, pace)
    rec["peak_rss_mib"] = peak_rss_mib()
    # Ceilings for the layout measured (with autotune: the one it reached).
    layout = rec["layout"]
    config = config.replace(pipeline__num_agents=layout["agents"],
                            pipeline__num_predictors=layout["predictors"],
                            pipeline__num_trainers=layout["trainers"], pipeline__autotune=False)
    p = config.pipeline
    ceil_seconds = max(pace.min_ceiling_seconds, seconds / 2)
    free = env_only_ceiling(config, min(warmup, 2.0), ceil_seconds)
    for key in ("env_steps_per_s", "cpu_percent", "ray_cpu_percent", "runner_cpu_percent",
                *RUNNER_FIGURES):  # a Ray row's: its transport's cost on both sides
        rec[f"ceiling_{key}"] = free[key]
    rec["runner"], rec["num_envs"] = p.runner, num_envs(config)
    # One fresh model for both (building one takes seconds): predicting changes no weight.
    learner = Learner.for_run(config, env_spec)
    rec["ceiling_predictions_per_s"] = model_ceiling(
        learner, config, env_spec, rec["mean_predict_batch"], p.num_predictors, ceil_seconds,
        train=False)
    rec["ceiling_samples_per_s"] = model_ceiling(
        learner, config, env_spec, rec["mean_train_batch"], p.num_trainers, ceil_seconds,
        train=True)
    # Every env step needs one prediction and one training sample: the model's combined rate.
    model = 1.0 / (1.0 / rec["ceiling_predictions_per_s"] + 1.0 / rec["ceiling_samples_per_s"])
    rec["ceiling_model_steps_per_s"] = model
    rec["ratio_env"] = rec["env_steps_per_s"] / rec["ceiling_env_steps_per_s"]
    rec["ratio_predict"] = rec["predictions_per_s"] / rec["ceiling_predictions_per_s"]
    rec["ratio_train"] = rec["samples_per_s"] / rec["ceiling_samples_per_s"]
    rec["ratio_overall"] = rec["env_steps_per_s"] / min(rec["ceiling_env_steps_per_s"], model)
    return rec


def num_envs(config: Config) -> int:
    p = config.pipeline
    return (p.num_runners if p.runner == "ray" else p.num_agents) * config.env.envs_per_agent


def project(rec: dict) -> dict | None:
    """A Ray row's projection (not a measurement) of how many runners saturate the central
    learner, from its env-only ceiling (the free model: the transport's cost on both sides)
    and the model's ceilings; None for a threads row or where the runners' CPU use is not
    seen (a remote cluster's).

    A runner on a core of its own steps `per_runner_cpu` env steps/s (its env steps per CPU
    second); one as fast as here, `per_runner` (this machine's cores shared, and round trips
    waited for). The learner takes at most `bound`: the model's combined predict + train rate
    (`model`, measured on this machine's cores) or its Python side's (`learner_python`: env
    steps per CPU second of this process with the free model; the GIL holds it to about one
    core), whichever is lower. `runners_busy` (runners at `per_runner_cpu`) to `runners_here`
    (at `per_runner`) runners saturate it."""
    runner_cpu, learner_cpu = rec["ceiling_runner_cpu_percent"], rec["ceiling_cpu_percent"]
    spread = rec["ceiling_runner_env_steps_per_s_stats"]
    if rec["runner"] != "ray" or not runner_cpu or not learner_cpu or spread is None:
        return None
    env, model = rec["ceiling_env_steps_per_s"], rec["ceiling_model_steps_per_s"]
    per_runner_cpu, learner_python = env / (runner_cpu / 100), env / (learner_cpu / 100)
    bound = min(model, learner_python)
    return dict(per_runner_cpu=per_runner_cpu, per_runner=spread["median"], model=model,
                learner_python=learner_python, bound=bound, runners_busy=bound / per_runner_cpu,
                runners_here=bound / spread["median"])


def summarise(records: list[dict], rounds: int) -> None:
    """Per swept configuration, medians over its rounds (`over_rounds` in its records) of
    the throughput, a Ray row's ratio to threads and its projection; printed."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if not rec["autotuned"]:
            groups.setdefault(json.dumps(rec["sweep"]), []).append(rec)
    if rounds > 1:
        print(f"medians over {rounds} rounds (each round's in brackets):")
    for recs in groups.values():
        label = recs[0]["label"].rsplit(" #", 1)[0]
        series = {k: [r[k] for r in recs if r.get(k) is not None]
                  for k in ("throughput", "vs_threads")}
        projections = [r["projection"] for r in recs if r["projection"] is not None]
        over = {k: float(np.median(v)) if v else None for k, v in series.items()}
        over["projection"] = ({k: float(np.median([q[k] for q in projections]))
                               for k in projections[0]} if projections else None)
        for rec in recs:
            rec["over_rounds"] = over
        if rounds > 1:
            print(f"  {label}: " + "; ".join(
                f"{k.replace('_', ' ')} {over[k]:{fmt}} (" + ", ".join(
                    f"{v:{fmt}}" for v in series[k]) + ")"
                for k, fmt in (("throughput", ",.0f"), ("vs_threads", ".2f")) if series[k]))
        if projections:
            q = over["projection"]
            print(f"  projection, not a measurement ({label}): a runner steps "
                  f"{q['per_runner_cpu']:,.0f} env/s on a core of its own ({q['per_runner']:,.0f} "
                  f"here); the learner takes at most {q['bound']:,.0f} (model ceiling "
                  f"{q['model']:,.0f}, its Python side {q['learner_python']:,.0f}): "
                  f"{q['runners_busy']:.1f}-{q['runners_here']:.1f} runners saturate it")


def parse_sweeps(sweeps: list[str]) -> list[dict[str, str]]:
    """The grid of every `--sweep`; one sweep is name=v1,v2,... or, for flags that move
    together, a/b=a1/b1,a2/b2,..."""
    grid = []
    for item in sweeps:
        name, _, values = item.partition("=")
        names = name.split("/")
        points = [v.split("/") if len(names) > 1 else [v] for v in values.split(",")]
        if not all(names) or not values or any(len(p) != len(names) for p in points):
            raise UserError(f"--sweep={item!r}: expected name=v1,v2,... or "
                            "name1/name2=a1/a2,b1/b2,...")
        grid.append([list(zip(names, p)) for p in points])
    return ([dict(kv for point in combo for kv in point) for combo in itertools.product(*grid)]
            if grid else [{}])


def same_envs(combo: dict[str, str], ga3c_flags: list[str]) -> dict[str, str]:
    """A swept `runner=ray` without a `num_runners` of its own (swept or on the command line)
    gets the row's agent count as its runner count (its `num_agents` shown as `num_runners`):
    the same envs as the threads row beside it."""
    given = any(f.split("=")[0] == "--num_runners" for f in ga3c_flags)
    if combo.get("runner") != "ray" or "num_runners" in combo or given:
        return combo
    if "num_agents" in combo:
        return {("num_runners" if k == "num_agents" else k): v for k, v in combo.items()}
    agents = parse_config([*ga3c_flags, *flags_of(combo)]).pipeline.num_agents
    return {**combo, "num_runners": str(agents)}


def flags_of(combo: dict[str, str]) -> list[str]:
    return [f"--{k}={v}" for k, v in combo.items()]


def compare_with_threads(records: list[dict]) -> None:
    """Each Ray row's throughput, and its env-only ceiling, as fractions of those of the best
    threads row (by throughput) with as many envs in the same round (`vs_threads...`); none
    if the round has no such row."""
    threads = [r for r in records if r["runner"] == "threads" and not r["autotuned"]]
    for rec in records:
        same = [t for t in threads if t["num_envs"] == rec["num_envs"]
                and t["round"] == rec["round"]]
        if rec["runner"] != "ray" or not same:
            continue
        base = max(same, key=lambda t: t["throughput"])
        rec["vs_threads"] = ratio(rec["throughput"], base["throughput"])
        rec["vs_threads_env_ceiling"] = ratio(rec["ceiling_env_steps_per_s"],
                                              base["ceiling_env_steps_per_s"])
        rec["vs_threads_label"] = base["label"]


COLUMNS = [("config", "{}"), ("thru/s", "{:,.0f}"), ("env/s", "{:,.0f}"), ("ratio", "{:.2f}"),
           ("pred/s", "{:,.0f}"), ("pbatch", "{:.1f}"), ("ratio", "{:.2f}"),
           ("train/s", "{:,.0f}"), ("tbatch", "{:.1f}"), ("samples/s", "{:,.0f}"),
           ("ratio", "{:.2f}"), ("overall", "{:.2f}"), ("lag", "{}"), ("q p/t", "{}"),
           ("cpu%", "{}"), ("gpu%", "{}"), ("rss MiB", "{:,.0f}"), ("vs thr", "{}"),
           ("rtt ms p50/p95", "{}"), ("runner env/s min/med/max", "{}")]


def optional(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def row(label: str, r: dict) -> list[str]:
    lag = ("n/a" if r["policy_lag_mean"] is None
           else f"{r['policy_lag_mean']:.1f}/{r['policy_lag_p95']:.0f}")
    cpu = f"{r['cpu_percent']:.0f}" + (  # this process's + its children's (a local Ray's)
        "" if r["ray_cpu_percent"] is None else f"+{r['ray_cpu_percent']:.0f}")
    rtt = ("n/a" if r["round_trip_p50_ms"] is None
           else f"{r['round_trip_p50_ms']:.1f}/{r['round_trip_p95_ms']:.1f}")
    spread = r["runner_env_steps_per_s_stats"]
    runners = "n/a" if spread is None else "/".join(f"{v:,.0f}" for v in spread.values())
    values = [label, r["throughput"], r["env_steps_per_s"], r["ratio_env"], r["predictions_per_s"],
              r["mean_predict_batch"], r["ratio_predict"], r["trainings_per_s"],
              r["mean_train_batch"], r["samples_per_s"], r["ratio_train"], r["ratio_overall"],
              lag, f"{r['mean_predict_queue']:.1f}/{r['mean_train_queue']:.1f}", cpu,
              optional(r["gpu_percent"], "{:.0f}"), r["peak_rss_mib"],
              optional(r.get("vs_threads"), "{:.2f}"), rtt, runners]
    return [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values)]


def print_table(rows: list[list[str]]) -> None:
    header = [name for name, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(x.rjust(w) for x, w in zip(r, widths)), flush=True)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def main(argv: list[str], pace: Pace = Pace()) -> int:
    """The benchmark; its exit code. Callable more than once in a process (a test's): it
    keeps no state between calls, and TensorFlow is set up by the first call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--sweep", action="append", default=[],
                        help="name=v1,v2,... or, flags that move together, a/b=a1/b1,a2/b2,... "
                             "(repeat)")
    parser.add_argument("--json", default="throughput.json", help="records, one per config")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the whole grid this many times, one pass after another, "
                             "so a drift of the machine weighs every configuration alike")
    parser.add_argument("--autotune_seconds", type=float, default=0.0,
                        help="after the sweep, run the flags as given with --autotune for this "
                             "long, then measure the layout it reached against the best one")
    args, ga3c_flags = parser.parse_known_args(argv)
    try:
        combos = parse_sweeps(args.sweep)
        fixed = {"env", "tf_threads", "ray_address"} & {k for combo in combos for k in combo}
        if fixed:
            raise UserError(f"--sweep over {sorted(fixed)} is not supported: they are fixed per "
                           "process (run the script once per value)")
        if args.rounds < 1:
            raise UserError(f"--rounds={args.rounds}: must be >= 1")
        if args.autotune_seconds < 0:
            raise UserError(f"--autotune_seconds={args.autotune_seconds:g}: must be >= 0")
        configs = []
        if any(f.split("=")[0] in ("--autotune", "--noautotune") for f in ga3c_flags):
            raise UserError("use --autotune_seconds=S to measure autotune (it runs after the "
                           "sweep and is compared with it), not --autotune")
        plan = [(r, combo) for r in range(1, args.rounds + 1) for combo in combos]
        if args.autotune_seconds > 0:
            plan.append((args.rounds, {"autotune": "true"}))  # once, after the last round
        for round_, combo in plan:
            combo = same_envs(combo, ga3c_flags)
            configs.append((round_, combo, parse_config([*ga3c_flags, *flags_of(combo),
                                                         "--resume=false"])))
        runners = [c.pipeline.num_runners for _, _, c in configs if c.pipeline.runner == "ray"]
        if runners:
            from ga3c.ray_runner import require_ray

            require_ray()  # before TensorFlow's import: a missing package is told at once
    except UserError as exc:
        print(f"throughput.py: error: {exc}", file=sys.stderr)
        return 2
    tf_threads = configs[0][2].run.tf_threads
    try:  # a later call in the same process can keep TensorFlow's threads, not change them
        import_tensorflow_quietly(tf_threads)
    except RuntimeError as exc:
        print(f"throughput.py: error: --tf_threads={tf_threads}: {exc}", file=sys.stderr)
        return 2
    from ga3c.envs import EnvError, inspect_env
    from ga3c.learner import mixed_precision_decision

    try:
        env_spec = inspect_env(configs[0][2].env.env_id, configs[0][2].env)
        with open(args.json, "a"):
            pass  # an unwritable --json fails now, not after the whole sweep
    except (EnvError, OSError) as exc:
        print(f"throughput.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{configs[0][2].env.env_id}: {len(configs)} configuration(s), warm-up "
          f"{args.warmup:g} s, window {args.seconds:g} s; ratio = pipeline / ceiling measured "
          "in this run", flush=True)
    cpu = hardware.describe()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, bf16 flags: "
          f"{', '.join(cpu['bf16_flags']) or 'none'} (--mixed_precision=auto: "
          f"{mixed_precision_decision('auto')[1]})", flush=True)
    records = []
    with contextlib.ExitStack() as stack:
        if runners:  # one Ray for every configuration, shut down (if it started it) at the end
            from ga3c.ray_runner import ray_session

            address = configs[0][2].pipeline.ray_address
            try:
                stack.enter_context(ray_session(address, max(runners)))
            except UserError as exc:
                print(f"throughput.py: error: {exc}", file=sys.stderr)
                return 2
            print(f"Ray: {address or 'a local Ray'} for {len(runners)} configuration(s) of "
                  f"{max(runners)} runner(s) at most", flush=True)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ga3c-throughput-"))
        for i, (round_, combo, config) in enumerate(configs):
            # The window decides when to stop, not the config's stop conditions (and so a
            # learning rate that decays towards them stays constant).
            config = config.replace(run__logdir=os.path.join(tmp, f"config{i}"),
                                    run__target_score=None, run__max_env_steps=0,
                                    run__max_seconds=0.0, algo__lr_schedule="constant")
            tuning = combo.get("autotune") == "true"
            label = " ".join(f"{k}={v}" for k, v in combo.items()) or "as given"
            if args.rounds > 1:
                label += f" #{round_}"
            threads = [r for r in records if r["runner"] == "threads"]  # autotune's runner
            best_layout = (max(threads, key=lambda r: r["throughput"])["layout"]
                           if tuning and threads else None)
            rec = measure(config, env_spec, args.autotune_seconds if tuning else args.warmup,
                          args.seconds, compare_layout=best_layout, pace=pace)
            if tuning:
                p = config.pipeline
                label = (f"autotune {args.autotune_seconds:g}s: {p.num_agents}/{p.num_predictors}"
                         f"/{p.num_trainers} -> " + "/".join(str(v) for v in rec["layout"].values())
                         + " (agents/predictors/trainers)")
            rec.update(label=label, sweep=combo, config=config.to_dict(), autotuned=tuning,
                       round=round_,
                       measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            records.append(rec)
    compare_with_threads(records)
    for rec in records:
        rec["projection"] = project(rec)
    rows = [row(rec["label"], rec) for rec in records]
    swept = [k for k, rec in enumerate(records) if not rec["autotuned"]]
    best = max(swept, key=lambda k: records[k]["throughput"])
    for k, rec in enumerate(records):
        rec["best"] = k == best
    if len(swept) > 1:
        rows[best][0] += " *best*"
    print_table(rows)
    for rec in records:
        if rec["autotuned"]:
            # A ratio to nothing is no ratio (a window that trained nothing measures 0).
            rec["vs_best"] = ratio(rec["throughput"], records[best]["throughput"])
            print(f"autotune reached {rec['throughput']:,.0f}/s throughput = "
                  f"{rec['vs_best']:.2f} of the best configuration ({records[best]['label']}) "
                  f"after {args.autotune_seconds:g} s of tuning")
            if "compare_throughput" in rec:
                tuned = (rec["throughput"] + rec["tuned_throughput_again"]) / 2
                rec["vs_best_side_by_side"] = ratio(tuned, rec["compare_throughput"])
                print(f"  side by side in the same service (windows tuned, best, best, tuned): "
                      f"the tuned layout {rec['layout']} ran {tuned:,.0f}/s, the best "
                      f"one {rec['compare_layout']} {rec['compare_throughput']:,.0f}/s: "
                      f"{rec['vs_best_side_by_side']:.2f} of it")
            print("decisions:")
            for d in rec["decisions"]:
                print(f"  {d['at_seconds']:6.0f}s  {d['knob']} {d['before']} -> {d['after']}: "
                      f"{d['base_rate']:,.0f} -> {d['trial_rate']:,.0f} "
                      f"{'kept' if d['kept'] else 'undone'}")
    summarise(records, args.rounds)
    with open(args.json, "w") as f:
        json.dump(records, f, indent=2)
    print(f"wrote {args.json}; env/s ratio: pipeline / env-only ceiling; pred/s and samples/s "
          "ratios: / model-only ceilings at the same batch; overall: env/s / min(env ceiling, "
          "model ceiling for predict + train); lag: mean/p95 updates; vs thr: throughput / "
          "the best threads row's with as many envs; rtt: a Ray runner's group step, actions "
          "sent -> observations back")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
