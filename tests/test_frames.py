"""`ga3c.frames`: stacked frames sent once between a Ray runner actor and the learner.

The coding must be exact whatever the envs do (a reset, an env whose stack does not shift,
envs showing up in any order), and small for Atari: one frame per env per step. Checked on
made-up stacks, and on real Pong through the runner actor's own code (`EnvRunner`, no Ray).
"""

import functools

import numpy as np
import pytest

from ga3c.config import EnvConfig
from ga3c.envs import make_agent_envs
from ga3c.frames import StackDecoder, StackEncoder, is_stack
from ga3c.ray_runner import EnvRunner


def shift_in(stack: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return np.concatenate([stack[..., 1:], frame[..., None]], axis=-1)


@pytest.mark.parametrize("K", [4, 3])  # 4: the uint32 fast path; any other depth: generic
def test_shifted_stacks_travel_as_one_frame_and_others_whole(K):
    rng = np.random.default_rng(0)
    E, H, W = 5, 6, 7
    enc, dec = StackEncoder(E), StackDecoder(E)
    ids = np.arange(E)
    obs = rng.integers(0, 255, (E, H, W, K), dtype=np.uint8)
    packed = enc.encode(ids, obs, whole=True)
    assert len(packed.whole_rows) == E  # a reset: every row whole
    np.testing.assert_array_equal(dec.decode(ids, packed), obs)
    for step in range(20):
        new = shift_in(obs, rng.integers(0, 255, (E, H, W), dtype=np.uint8))
        reset = step % 3 == 0  # env 2 resets every third step: its stack starts afresh
        if reset:
            new[2] = rng.integers(0, 255, (H, W, K), dtype=np.uint8)
        packed = enc.encode(ids, new)
        assert list(packed.whole_rows) == ([2] if reset else [])
        assert packed.nbytes <= E * H * W + (H * W * K if reset else 0) + 8
        got = dec.decode(ids, packed)
        np.testing.assert_array_equal(got, new)
        obs = new


@pytest.mark.parametrize("K", [4, 2])
def test_envs_in_any_order_and_subsets_are_exact(K):
    """ale-py's async batches: each step brings some envs, in any order; an env not seen for
    a while, or seen for the first time, is still rebuilt exactly."""
    rng = np.random.default_rng(1)
    E, shape = 6, (3, 3, K)
    enc, dec = StackEncoder(E), StackDecoder(E)
    current = rng.integers(0, 4, (E, *shape), dtype=np.uint8)  # few values: chance shifts
    for _ in range(60):
        ids = rng.permutation(E)[:rng.integers(1, E + 1)]
        for e in ids:
            if rng.random() < 0.8:
                current[e] = shift_in(current[e], rng.integers(0, 4, shape[:2], dtype=np.uint8))
            else:
                current[e] = rng.integers(0, 4, shape, dtype=np.uint8)
        got = dec.decode(ids, enc.encode(ids, current[ids]))
        np.testing.assert_array_equal(got, current[ids])


def test_observations_that_are_not_stacked_frames_travel_as_they_are():
    obs = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    assert not is_stack(obs) and not is_stack(np.zeros((4, 84, 84, 1), np.uint8))
    packed = StackEncoder(4).encode(np.arange(4), obs)
    assert packed.newest is None and packed.whole is obs
    assert StackDecoder(4).decode(np.arange(4), packed) is obs


def test_pong_through_the_runner_s_code_is_exact_and_one_frame_a_step():
    """Real Pong (ale-py's vector env, stack of 4): what the actor returns decodes to the
    envs' very observations, and after the reset nearly every row is one 84x84 frame."""
    env = EnvConfig(env_id="ALE/Pong-v5", env_backend="ale_vector")
    make = functools.partial(make_agent_envs, "ALE/Pong-v5", 4, env)
    actor = EnvRunner([make])
    raw = actor.groups[0]
    received, sent = [], []
    raw_recv = raw.recv
    raw.recv = lambda: sent.append(raw_recv()) or sent[-1]  # the envs' own results
    dec = StackDecoder(4)
    rng = np.random.default_rng(0)
    try:
        first = actor.reset(0, seed=0)
        assert first.obs.whole.shape == (4, 84, 84, 4)
        dec.decode(first.ids, first.obs)
        whole_rows = 0
        for _ in range(300):
            reply = actor.step(0, rng.integers(0, 6, 4))
            received.append(dec.decode(reply.ids, reply.obs))
            whole_rows += len(reply.obs.whole_rows)
            assert reply.obs.newest.shape == (4, 84, 84)
    finally:
        actor.close()
    for got, (_, obs, *_rest) in zip(received, sent):
        np.testing.assert_array_equal(got, obs)
    assert whole_rows <= 0.02 * 4 * 300, whole_rows  # resets only (Pong games are long)
