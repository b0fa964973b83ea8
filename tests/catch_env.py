"""Catch, rendered as Atari-like frames: a learning check for the CNN path that needs pixels.

A ball appears in a random column of the top row of a 7x7 grid and falls one row per step;
the agent moves a one-cell paddle along the bottom row (0: left, 1: stay, 2: right). When the
ball reaches the bottom row the episode ends: +1 if the paddle is under it, -1 if not. Each
cell is drawn as a 12x12 block, so observations are 4 stacked 84x84 uint8 frames, stack
first, exactly like ale-py's (ga3c moves the stack last). The ball's column is visible only
in the pixels, so a policy that ignores the frames scores about -0.6 (a uniform one: -0.64 on
average, see `uniform_policy_score`), while one that follows the ball scores +1.

Registered as `tests.catch_env:Catch84-v0` (ga3c's `module:EnvId` form imports this module).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

SIZE, CELL = 7, 12
PIXELS = SIZE * CELL  # 84


class Catch84(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, rows: int = SIZE) -> None:
        if PIXELS % rows:
            raise ValueError(f"rows must divide {PIXELS}")
        self.rows, self._cell_h = rows, PIXELS // rows
        self.observation_space = gym.spaces.Box(0, 255, (4, PIXELS, PIXELS), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self._frames = np.zeros((4, PIXELS, PIXELS), np.uint8)

    def _draw(self) -> np.ndarray:
        frame = np.zeros((PIXELS, PIXELS), np.uint8)
        h = self._cell_h
        frame[self._row * h:(self._row + 1) * h, self._col * CELL:(self._col + 1) * CELL] = 255
        frame[(self.rows - 1) * h:, self._paddle * CELL:(self._paddle + 1) * CELL] = 128
        self._frames = np.roll(self._frames, -1, axis=0)
        self._frames[-1] = frame
        return self._frames.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._row, self._col = 0, int(self.np_random.integers(SIZE))
        self._paddle = SIZE // 2
        self._frames[:] = 0
        obs = self._draw()
        self._frames[:] = obs[-1]  # the stack starts as four copies of the first frame
        return self._frames.copy(), {}

    def step(self, action):
        self._paddle = int(np.clip(self._paddle + int(action) - 1, 0, SIZE - 1))
        self._row += 1
        done = self._row == self.rows - 1
        reward = (1.0 if self._paddle == self._col else -1.0) if done else 0.0
        return self._draw(), reward, done, False, {}


def uniform_policy_score(episodes: int = 20_000, seed: int = 0, rows: int = SIZE) -> float:
    """Mean return of uniformly random actions (for the tests' bar)."""
    rng = np.random.default_rng(seed)
    env = Catch84(rows)
    total = 0.0
    for i in range(episodes):
        env.reset(seed=int(rng.integers(2**31)))
        done = False
        while not done:
            _, reward, done, _, _ = env.step(int(rng.integers(3)))
            total += reward
    return total / episodes


gym.register("Catch84-v0", entry_point=Catch84)
