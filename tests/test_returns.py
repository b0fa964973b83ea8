"""n-step transitions: hand-computed tables, then a random comparison with the slow reference.

Observations are numbered so a table can name them: the env's stream is o0 (from reset),
then step k returns o(k+1). With NEXT_STEP autoreset, the step right after an episode ends
is the reset step: it is no transition, and the obs it returns starts the next episode.
"""

import numpy as np
import pytest

from ga3c.returns import EpisodeTracker, NStepBuilder, Transitions, reference_transitions


def run_builder(n_step, gamma, steps, num_flushes=None):
    """Drive a one-env builder through `steps` = [(reward, terminated, truncated[, life_lost]), ...].

    Flushes whenever the builder is full and once at the end; returns the transitions as a
    list of (state, action, R, next_state, n, mask) with states given as obs numbers.
    """
    b = NStepBuilder(1, n_step, gamma, (1,), np.float32)
    b.reset(np.array([[0.0]], np.float32))
    parts = []
    for k, (r, term, trunc, *life) in enumerate(steps):
        b.add(np.array([k]), np.array([r], np.float32), np.array([term]), np.array([trunc]),
              np.array([[k + 1.0]], np.float32), version=k,
              life_lost=np.array(life, bool) if life else None)
        if b.full:
            parts.append(b.flush())
    if b.pending:
        parts.append(b.flush())
    t = Transitions.concatenate(parts)
    return [(int(s[0]), int(a), pytest.approx(float(R)), int(ns[0]), int(n), float(m))
            for s, a, R, ns, n, m in zip(t.states, t.actions, t.rewards, t.bootstrap_states(),
                                         t.nsteps, t.masks)]


# Each row: (state obs, action, R, bootstrap obs s_n, n, mask)
def test_full_segment_no_episode_end():
    # n=3, gamma=0.5, rewards 1, 2, 4
    assert run_builder(3, 0.5, [(1, 0, 0), (2, 0, 0), (4, 0, 0)]) == [
        (0, 0, 1 + 0.5 * 2 + 0.25 * 4, 3, 3, 1.0),
        (1, 1, 2 + 0.5 * 4, 3, 2, 1.0),
        (2, 2, 4, 3, 1, 1.0),
    ]


def test_termination_mid_segment():
    # n=4, gamma=0.5: the episode terminates at step 1 (returns final obs o2); step 2 is the
    # reset step (dropped); step 3 starts the new episode from o3.
    assert run_builder(4, 0.5, [(1, 0, 0), (1, 1, 0), (0, 0, 0), (1, 0, 0)]) == [
        (0, 0, 1.5, 2, 2, 0.0),
        (1, 1, 1.0, 2, 1, 0.0),
        (3, 3, 1.0, 4, 1, 1.0),
    ]


def test_lost_life_cuts_the_return_with_mask_0_and_the_game_goes_on():
    # Episodic life: a life is lost at step 1. The return stops there with mask 0, as at a
    # termination, but there is no reset step: step 2 (from o2) is a transition.
    assert run_builder(4, 0.5, [(1, 0, 0, 0), (1, 0, 0, 1), (2, 0, 0, 0), (1, 0, 0, 0)]) == [
        (0, 0, 1.5, 2, 2, 0.0),
        (1, 1, 1.0, 2, 1, 0.0),
        (2, 2, 2.5, 4, 2, 1.0),
        (3, 3, 1.0, 4, 1, 1.0),
    ]


def test_truncation_bootstraps_from_final_obs():
    # Same stream, but the episode is truncated (time limit): mask 1, bootstrap from o2.
    assert run_builder(4, 0.5, [(1, 0, 0), (1, 0, 1), (0, 0, 0), (1, 0, 0)]) == [
        (0, 0, 1.5, 2, 2, 1.0),
        (1, 1, 1.0, 2, 1, 1.0),
        (3, 3, 1.0, 4, 1, 1.0),
    ]


def test_episode_shorter_than_n():
    # n=5, gamma=0.9: a 2-step episode, reset, then a 1-step episode, reset, then one step.
    steps = [(1, 0, 0), (2, 1, 0), (0, 0, 0), (3, 1, 0), (0, 0, 0)]
    assert run_builder(5, 0.9, steps) == [
        (0, 0, 1 + 0.9 * 2, 2, 2, 0.0),
        (1, 1, 2.0, 2, 1, 0.0),
        (3, 3, 3.0, 4, 1, 0.0),
    ]


def test_n_equals_one():
    steps = [(1, 0, 0), (2, 1, 0), (0, 0, 0), (3, 0, 1), (0, 0, 0), (5, 0, 0)]
    assert run_builder(1, 0.99, steps) == [
        (0, 0, 1.0, 1, 1, 1.0),
        (1, 1, 2.0, 2, 1, 0.0),
        (3, 3, 3.0, 4, 1, 1.0),
        (5, 5, 5.0, 6, 1, 1.0),
    ]


def test_episode_end_on_last_row_of_segment_carries_reset_into_next_segment():
    # n=2: the episode terminates at step 1 (last row of the first segment); step 2, the first
    # row of the second segment, is the reset step and must be dropped there.
    assert run_builder(2, 0.5, [(1, 0, 0), (1, 1, 0), (0, 0, 0), (1, 0, 0)]) == [
        (0, 0, 1.5, 2, 2, 0.0),
        (1, 1, 1.0, 2, 1, 0.0),
        (3, 3, 1.0, 4, 1, 1.0),
    ]


def test_partial_segment_flush_bootstraps_from_last_obs():
    # n=4 but only 2 steps recorded before flush (an agent retired mid-segment).
    assert run_builder(4, 0.5, [(1, 0, 0), (2, 0, 0)]) == [
        (0, 0, 2.0, 2, 2, 1.0),
        (1, 1, 2.0, 2, 1, 1.0),
    ]


def test_versions_travel_with_their_step():
    b = NStepBuilder(2, 2, 0.9, (1,), np.float32)
    b.reset(np.zeros((2, 1), np.float32))
    for v in (7, 8):
        b.add(np.zeros(2, int), np.ones(2), np.zeros(2, bool), np.zeros(2, bool),
              np.zeros((2, 1), np.float32), version=v)
    t = b.flush()
    assert sorted(t.versions.tolist()) == [7, 7, 8, 8]


def test_add_to_full_builder_raises():
    b = NStepBuilder(1, 1, 0.9, (1,), np.float32)
    b.reset(np.zeros((1, 1), np.float32))
    b.add([0], [0.0], [False], [False], np.zeros((1, 1), np.float32))
    with pytest.raises(RuntimeError):
        b.add([0], [0.0], [False], [False], np.zeros((1, 1), np.float32))


@pytest.mark.parametrize("n_step", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lives", [False, True])
def test_matches_slow_reference_on_random_vector_streams(n_step, seed, lives):
    """Many envs, random rewards, episode ends (and lost lives), many segments: equal to the
    reference."""
    rng = np.random.default_rng(seed)
    num_envs, clock = 4, 41
    gamma = 0.95
    b = NStepBuilder(num_envs, n_step, gamma, (2,), np.float32)
    obs = rng.normal(size=(num_envs, 2)).astype(np.float32)
    b.reset(obs)
    raw = [[] for _ in range(num_envs)]
    got = []
    prev_done = np.zeros(num_envs, bool)
    for k in range(clock):
        actions = rng.integers(0, 3, num_envs)
        rewards = rng.normal(size=num_envs).astype(np.float32)
        term = rng.random(num_envs) < 0.15
        trunc = ~term & (rng.random(num_envs) < 0.1)
        # NEXT_STEP semantics: the reset step has reward 0 and no episode end
        rewards[prev_done], term[prev_done], trunc[prev_done] = 0.0, False, False
        lost = (rng.random(num_envs) < 0.15) & ~prev_done if lives else np.zeros(num_envs, bool)
        nxt = rng.normal(size=(num_envs, 2)).astype(np.float32)
        for e in range(num_envs):
            raw[e].append((obs[e], actions[e], rewards[e], term[e], trunc[e], nxt[e], lost[e]))
        b.add(actions, rewards, term, trunc, nxt, life_lost=lost if lives else None)
        prev_done = term | trunc
        obs = nxt
        if b.full:
            got.append(b.flush())
    if b.pending:
        got.append(b.flush())
    t = Transitions.concatenate(got)
    for e in range(num_envs):
        expected = reference_transitions(raw[e], n_step, gamma)
        # the builder's rows for env e, in time order, are those whose state is one of env e's
        mine = [i for i in range(len(t)) if any(np.array_equal(t.states[i], s[0]) for s in raw[e])]
        assert len(mine) == len(expected)
        for i, ref in zip(mine, expected):
            np.testing.assert_array_equal(t.states[i], ref["state"])
            assert t.actions[i] == ref["action"]
            assert t.rewards[i] == pytest.approx(ref["reward"], rel=1e-5, abs=1e-5)
            np.testing.assert_array_equal(t.bootstrap_states()[i], ref["next_state"])
            assert t.nsteps[i] == ref["n"]
            assert t.masks[i] == ref["mask"]
    # nothing lost: one transition per step that is not a reset step
    assert len(t) == sum(len(reference_transitions(raw[e], n_step, gamma)) for e in range(num_envs))


def test_reference_drops_only_reset_steps():
    steps = [(np.zeros(1), 0, 1.0, True, False, np.ones(1)),
             (np.ones(1), 1, 0.0, False, False, np.full(1, 2.0)),
             (np.full(1, 2.0), 0, 1.0, False, False, np.full(1, 3.0))]
    out = reference_transitions(steps, 3, 0.9)
    assert [o["action"] for o in out] == [0, 0]
    assert out[0]["mask"] == 0.0 and out[1]["mask"] == 1.0


def test_episode_tracker_reports_real_returns_and_lengths_once():
    tr = EpisodeTracker(2)
    valid = np.array([True, True])
    assert len(tr.add(np.array([1.0, 2.0]), [False, False], [False, False], valid)[0]) == 0
    rets, lens = tr.add(np.array([1.0, 2.0]), [True, False], [False, False], valid)
    assert rets.tolist() == [2.0] and lens.tolist() == [2]
    # env 0's reset step (invalid) adds nothing; env 1 truncates after 3 steps
    rets, lens = tr.add(np.array([0.0, 2.0]), [False, False], [False, True],
                        np.array([False, True]))
    assert rets.tolist() == [6.0] and lens.tolist() == [3]
    rets, lens = tr.add(np.array([5.0, 0.0]), [True, False], [False, False],
                        np.array([True, False]))
    assert rets.tolist() == [5.0] and lens.tolist() == [1]


def test_each_distinct_bootstrap_state_is_stored_once_and_concatenation_keeps_the_links():
    # 3 envs, n=4, env 1 terminates at step 1: env 0 and env 2 bootstrap all rows from their
    # o4; env 1 from its o2 (rows 0-1), and from o4 (row 3; step 2 is its reset step).
    b = NStepBuilder(3, 4, 0.5, (1,), np.float32)
    b.reset(np.array([[0.0], [10.0], [20.0]], np.float32))
    for k in range(4):
        b.add(np.zeros(3), np.ones(3, np.float32), np.array([False, k == 1, False]),
              np.zeros(3, bool), np.array([[k + 1.0], [k + 11.0], [k + 21.0]], np.float32))
    first = b.flush()
    assert len(first) == 11 and len(first.next_states) == 4
    assert sorted(first.next_states[:, 0]) == [4.0, 12.0, 14.0, 24.0]
    for k in range(4):
        b.add(np.zeros(3), np.ones(3, np.float32), np.zeros(3, bool), np.zeros(3, bool),
              np.array([[k + 5.0], [k + 15.0], [k + 25.0]], np.float32))
    second = b.flush()
    both = Transitions.concatenate([first, second])
    assert len(both.next_states) == 4 + 3
    np.testing.assert_array_equal(both.bootstrap_states(),
                                  np.concatenate([first.bootstrap_states(),
                                                  second.bootstrap_states()]))
    # each row's s_n is its env's: env e's observations are 10 e + t
    np.testing.assert_array_equal(both.bootstrap_states()[:, 0] // 10, both.states[:, 0] // 10)
