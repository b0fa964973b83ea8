"""Which of a checkpoint's ReLU units ever fire: per trunk layer, on frames its own policy plays.

    python benchmarks/dead_units.py --logdir=results/stability/base_s1 [--checkpoint=PATH]

Plays `--envs` copies of the run's env for `--steps` steps with the policy sampled, keeps every
`--every`-th batch of observations, and prints for each ReLU (or LeakyReLU) layer of the trunk
how many units are > 0 somewhere (a conv channel: at any position of any kept frame), and for
the first conv layer, per channel, the fraction of frames on which it fires and the sum of its
kernel (a strongly negative sum on Pong's bright background is how a channel goes dead). This
is the training-time `dead_relu/L` instrument, run on a saved network (docs/stability.md).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ga3c.errors import UserError


def unit_activity(logdir: str, checkpoint: str, envs: int, steps: int, every: int,
                  seed: int) -> dict:
    import keras

    import ga3c
    from ga3c.envs import make_vector_env
    from ga3c.network import relu_layers, unit_name
    from ga3c.rundir import RunDir

    policy = ga3c.load_policy(logdir, checkpoint=checkpoint, seed=seed)
    if "conv0" not in [layer.name for layer in policy.model.layers]:
        raise UserError(f"{logdir}'s network has no conv0 (this is for CNN runs)")
    config = RunDir(logdir).read_config()
    vec = make_vector_env(config.env.env_id, envs, config.env)
    try:
        obs, _ = vec.reset(seed=seed)
        kept = []
        for t in range(steps):
            if t % every == 0:
                kept.append(obs.copy())
            obs = vec.step(policy.act(obs, sample=True)[0])[0]
    finally:
        vec.close()
    frames = np.concatenate(kept)
    model = policy.model
    layers = relu_layers(model)
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = [np.asarray(x) for x in probe([frames])]
    report = {"frames": len(frames), "layers": {}}
    for layer, h in zip(layers, outputs):
        fires = (h > 0).reshape(len(h), -1, h.shape[-1]).any(axis=1)  # (frames, units)
        report["layers"][unit_name(layer)] = {"alive": int(fires.any(axis=0).sum()),
                                              "units": int(h.shape[-1]),
                                              "fire_fraction": fires.mean(axis=0)}
    kernel = model.get_layer("conv0").kernel.numpy()
    report["conv0_kernel_sum"] = kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--checkpoint", default="latest", help="a checkpoint path, or latest")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        report = unit_activity(args.logdir, args.checkpoint, args.envs, args.steps, args.every,
                               args.seed)
    except UserError as exc:
        print(f"dead_units: {exc}", file=sys.stderr)
        return 2
    print(f"{args.logdir}: {report['frames']} frames")
    for name, layer in report["layers"].items():
        print(f"  {name}: {layer['alive']} of {layer['units']} units fire "
              f"({1 - layer['alive'] / layer['units']:.0%} dead)")
    fire = report["layers"]["conv0"]["fire_fraction"]
    print("  conv0 channels: fraction of frames firing / kernel sum")
    for i, (f, s) in enumerate(zip(fire, report["conv0_kernel_sum"])):
        print(f"    {i:2d}  {f:5.2f}  {s:+6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
