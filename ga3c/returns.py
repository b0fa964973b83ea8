"""n-step transitions from a vector of environments (pure numpy, no TensorFlow).

An agent steps `E` environments in lock step. Every `n_step` vector steps (an A3C segment) it
calls `flush()` and receives one transition per valid (step, env) pair:

    state, action, reward_sum R, next_state s_n, steps n, mask

with `R = r_t + gamma r_{t+1} + ... + gamma^{n-1} r_{t+n-1}`, cut at the end of the segment or
at the end of the episode, whichever comes first. The trainer forms the target
`R + gamma^n * V(s_n) * mask`. `mask` is 0 only if the episode *terminated* at the cut; on
*truncation* (a time limit) `s_n` is the final observation and the target bootstraps from it.

Gymnasium vector envs use the NEXT_STEP autoreset mode: the step that ends an episode returns
the final observation; the *next* call to `step()` resets that env, ignores its action and
returns the first observation of the new episode with reward 0. That reset step is not a
transition and is dropped here (`valid` is False for it). Every other step, including the last
step of every episode, becomes a transition: nothing is lost (the original GA3C drops the
last one, its issue #31).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Transitions(NamedTuple):
    """A batch of n-step transitions. Row i: states[i], actions[i], ... and its bootstrap
    state s_n = next_states[next_index[i]]. The rows of one env's segment mostly share s_n
    (the segment's last observation), so each distinct s_n is stored, and evaluated by the
    trainer, once: for Atari frames that is ~1/n_step of the rows."""

    states: np.ndarray
    actions: np.ndarray  # int32 (Discrete), or float32 rows (Box: the unclipped samples)
    rewards: np.ndarray  # float32: discounted n-step reward sum R
    next_states: np.ndarray  # the distinct bootstrap states s_n
    next_index: np.ndarray  # int32: row -> its s_n in next_states
    nsteps: np.ndarray  # int32: n, number of rewards in R
    masks: np.ndarray  # float32: 0 where the episode terminated at s_n, else 1
    versions: np.ndarray  # int64: model version that chose the action (for policy lag)

    def __len__(self) -> int:
        return len(self.actions)

    def bootstrap_states(self) -> np.ndarray:
        """s_n of every row (a copy per row: for tests and small batches)."""
        return self.next_states[self.next_index]

    @staticmethod
    def concatenate(parts: "list[Transitions]") -> "Transitions":
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0] + [len(p.next_states) for p in parts[:-1]])
        columns = {name: np.concatenate([getattr(p, name) for p in parts])
                   for name in Transitions._fields if name != "next_index"}
        columns["next_index"] = np.concatenate(
            [p.next_index + np.int32(o) for p, o in zip(parts, offsets)]).astype(np.int32)
        return Transitions(**columns)


class NStepBuilder:
    """Accumulates vector-env steps and cuts them into n-step transitions.

    Usage, inside an agent's loop (lock step: every env steps every time)::

        builder = NStepBuilder(num_envs, n_step, gamma, obs_space.shape, obs_space.dtype)
        builder.reset(obs)
        while running:
            actions = policy(obs)
            obs, rewards, terminated, truncated, _ = env.step(actions)
            builder.add(actions, rewards, terminated, truncated, obs, version)
            if builder.full:
                training_queue.put(builder.flush(builder.full_envs()))

    With an asynchronous vector env, each step concerns only some envs: pass their indices
    as `ids` to `reset` and `add`. Every env keeps its own segment clock; an env's segment is
    cut after `n_step` of *its* steps (`full_envs()`), so transitions are the same as if it
    had been stepped alone.
    """

    def __init__(self, num_envs: int, n_step: int, gamma: float, obs_shape, obs_dtype,
                 action_shape=(), action_dtype=np.int32) -> None:
        self.num_envs, self.n_step, self.gamma = num_envs, n_step, float(gamma)
        self._obs = np.zeros((n_step + 1, num_envs, *obs_shape), dtype=obs_dtype)
        self._actions = np.zeros((n_step, num_envs, *action_shape), dtype=action_dtype)
        self._rewards = np.zeros((n_step, num_envs), dtype=np.float32)
        self._terminal = np.zeros((n_step, num_envs), dtype=bool)  # mask 0 here
        self._cut = np.zeros((n_step, num_envs), dtype=bool)  # the return stops here
        self._valid = np.zeros((n_step, num_envs), dtype=bool)
        self._versions = np.zeros((n_step, num_envs), dtype=np.int64)
        self._prev_done = np.zeros(num_envs, dtype=bool)
        self._t = np.zeros(num_envs, dtype=np.intp)  # steps recorded per env since its flush
        self._all = np.arange(num_envs)

    @property
    def full(self) -> bool:
        """Some env has a whole segment (flush it before its next step)."""
        return bool((self._t == self.n_step).any())

    def full_envs(self) -> np.ndarray:
        return np.flatnonzero(self._t == self.n_step)

    @property
    def pending(self) -> int:
        """Most steps any env has recorded since its last flush."""
        return int(self._t.max())

    @property
    def held(self) -> int:
        """Transitions recorded and not flushed yet: what `flush()` would return now, and
        what is lost if the envs' process dies before it (a Ray runner's, counted then)."""
        recorded = np.arange(self.n_step)[:, None] < self._t
        return int(np.count_nonzero(self._valid & recorded))

    def reset(self, obs: np.ndarray, ids=None) -> None:
        """Start envs `ids` (default: all) from freshly reset observations."""
        ids = self._all if ids is None else np.asarray(ids)
        self._obs[0, ids] = obs
        self._prev_done[ids] = False
        self._t[ids] = 0

    def add(self, actions, rewards, terminated, truncated, next_obs, version=0,
            life_lost=None, ids=None) -> np.ndarray:
        """Record one step of envs `ids` (default: all); returns the `valid` mask (False for
        autoreset steps). `version` may be one number or one per env.

        `life_lost` (episodic life): where True, the n-step return is cut there with mask 0,
        as at a termination, but the game goes on, so the next step is a transition.
        """
        ids = self._all if ids is None else np.asarray(ids)
        t = self._t[ids]
        if (t >= self.n_step).any():
            raise RuntimeError("NStepBuilder: an env's segment is full: call flush() first")
        valid = ~self._prev_done[ids]
        done = np.logical_or(terminated, truncated) & valid
        terminal = np.asarray(terminated) if life_lost is None else np.logical_or(terminated, life_lost)
        terminal = terminal & valid
        self._actions[t, ids] = actions
        self._rewards[t, ids] = rewards
        self._terminal[t, ids] = terminal
        self._cut[t, ids] = done | terminal
        self._valid[t, ids] = valid
        self._versions[t, ids] = version
        self._obs[t + 1, ids] = next_obs
        self._prev_done[ids] = done
        self._t[ids] = t + 1
        return valid

    def flush(self, ids=None) -> Transitions:
        """Transitions for every valid step envs `ids` (default: all) recorded since their last
        flush; those envs start new segments."""
        ids = self._all if ids is None else np.asarray(ids)
        ts = self._t[ids]
        parts = [self._flush_group(ids[ts == T], T) for T in np.unique(ts) if T > 0]
        return Transitions.concatenate(parts) if parts else self._flush_group(ids[:0], 0)

    def _flush_group(self, cols: np.ndarray, T: int) -> Transitions:
        """Flush envs `cols`, which all recorded `T` steps."""
        E = len(cols)
        R = np.empty((T, E), dtype=np.float32)
        boot = np.empty((T, E), dtype=np.intp)
        nsteps = np.empty((T, E), dtype=np.int32)
        masks = np.empty((T, E), dtype=np.float32)
        ret = np.zeros(E, dtype=np.float32)
        b = np.full(E, T, dtype=np.intp)
        n = np.zeros(E, dtype=np.int32)
        m = np.ones(E, dtype=np.float32)
        gamma = np.float32(self.gamma)
        for t in range(T - 1, -1, -1):
            d = self._cut[t, cols]
            r = self._rewards[t, cols]
            ret = np.where(d, r, r + gamma * ret)
            b = np.where(d, t + 1, b)
            n = np.where(d, 1, n + 1)
            m = np.where(d, np.float32(1.0) - self._terminal[t, cols], m)
            R[t], boot[t], nsteps[t], masks[t] = ret, b, n, m
        ts, js = np.nonzero(self._valid[:T, cols])
        es = cols[js]
        bs = boot[ts, js]
        # Distinct (time, env) bootstrap observations, each stored once.
        keys, next_index = np.unique(bs * E + js, return_inverse=True)
        out = Transitions(
            states=self._obs[ts, es],
            actions=self._actions[ts, es],
            rewards=R[ts, js],
            next_states=self._obs[keys // max(E, 1), cols[keys % max(E, 1)]],
            next_index=next_index.astype(np.int32).reshape(-1),
            nsteps=nsteps[ts, js],
            masks=masks[ts, js],
            versions=self._versions[ts, es],
        )
        self._obs[0, cols] = self._obs[T, cols]
        self._t[cols] = 0
        return out


class EpisodeTracker:
    """Running return and length per env; reports each episode when it ends."""

    def __init__(self, num_envs: int) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    def add(self, rewards, terminated, truncated, valid, ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Record one step of envs `ids` (default: all); returns (returns, lengths) of the
        episodes that just ended."""
        ids = slice(None) if ids is None else np.asarray(ids)
        self._returns[ids] += np.where(valid, rewards, 0.0)
        self._lengths[ids] += valid
        done = np.logical_or(terminated, truncated) & valid
        if not done.any():
            return _EMPTY_F, _EMPTY_I
        ended = np.arange(len(self._returns))[ids][done]
        finished = self._returns[ended].copy(), self._lengths[ended].copy()
        self._returns[ended] = 0.0
        self._lengths[ended] = 0
        return finished


_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I = np.zeros(0, dtype=np.int64)


def reference_transitions(raw_steps, n_step: int, gamma: float) -> list[dict]:
    """Slow, obvious reference for ONE env of a vector env, for tests.

    `raw_steps` is the env's stream exactly as a NEXT_STEP-autoreset vector env produces it:
    a list of (state, action, reward, terminated, truncated, next_state[, life_lost]), where
    the step after an episode's end is the reset step. A lost life (episodic life) ends the
    return with mask 0 like a termination, but the game goes on (no reset step follows).
    Segments are the vector clock cut every `n_step` steps (step i belongs to segment
    i // n_step). Returns one dict per transition, in time order.
    """
    def done(k):
        return raw_steps[k][3] or raw_steps[k][4]

    def terminal(k):
        return raw_steps[k][3] or (len(raw_steps[k]) > 6 and raw_steps[k][6])

    out = []
    for i, (s, a, *_rest) in enumerate(raw_steps):
        if i > 0 and done(i - 1):
            continue  # the autoreset step: its action is ignored, it is no transition
        total, discount, j = 0.0, 1.0, i
        while True:
            total += discount * raw_steps[j][2]
            discount *= gamma
            last_in_segment = (j + 1) % n_step == 0 or j + 1 == len(raw_steps)
            if done(j) or terminal(j) or last_in_segment:
                break
            j += 1
        out.append(dict(state=s, action=a, reward=total, next_state=raw_steps[j][5],
                        n=j - i + 1, mask=0.0 if terminal(j) else 1.0))
    return out
