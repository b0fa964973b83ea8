"""RMSProp with an optional bound on each weight tensor's step, and what each step was.

Plain RMSProp moves weight w by lr * u, u = g / sqrt(v + eps), v the running mean of g^2
(already updated with this g). u is ~1 per weight while gradients are steady, but a weight
whose gradients were ~0 for a while has a decayed v, and when a real gradient comes its u is
up to 1 / sqrt(1 - rho) = 10 (rho 0.99): every such weight of a layer steps 10x lr at once.

`update_clip = d > 0` scales each weight tensor's u down to a root-mean-square of at most d
(Adafactor's "update clipping", Shazeer & Stern 2018, section 5, for the same out-of-date
second moments): steady steps (RMS ~1) pass unchanged, a burst is cut back to d's size.
`update_clip = 0` is Keras' RMSprop unchanged: its update, op for op (a test compares them
bit for bit).

Under `recording()` each step also leaves each tensor's largest |u|, its clip factor and its
sum of u^2, from the u it used: the training step's instruments (`ga3c.learner`) read them.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops


class ClippedRMSprop(keras.optimizers.RMSprop):
    """keras.optimizers.RMSprop (no momentum, not centred) with Adafactor's update clipping."""

    def __init__(self, update_clip: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.momentum or self.centered:
            raise ValueError("ClippedRMSprop has no momentum and is not centred")
        self.update_clip = float(update_clip)

    def direction(self, gradient, velocity):
        """u = g / sqrt(v + eps): plain RMSProp's step in units of the learning rate."""
        return ops.divide(gradient, ops.sqrt(ops.add(velocity, self.epsilon)))

    def clip_factor(self, direction):
        """What `update_clip` multiplies a tensor's u by: min(1, d / RMS(u)) (1: no clip)."""
        if self.update_clip <= 0:
            return ops.ones((), direction.dtype)
        rms = ops.sqrt(ops.mean(ops.square(direction)))
        return ops.minimum(1.0, self.update_clip / ops.maximum(rms, 1e-30))

    def variable_index(self, variable) -> int:
        """The optimizer's index of one of the variables it was built for."""
        return self._get_variable_index(variable)

    def velocity(self, variable):
        """The mean-square accumulator v of `variable`."""
        return self._velocities[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        # Keras' RMSprop.update_step (no momentum, not centred), op for op, and the clip.
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self.velocity(variable)
        self.assign(velocity, ops.add(ops.multiply(self.rho, velocity),
                                      ops.multiply(1 - self.rho, ops.square(gradient))))
        u = self.direction(gradient, velocity)
        factor = self.clip_factor(u)
        if self.update_clip <= 0:
            self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient),
                                                 ops.sqrt(ops.add(velocity, self.epsilon))))
        else:
            self.assign_sub(variable, ops.multiply(lr * factor, u))
        if self.record_steps:
            self.steps[self._get_variable_index(variable)] = (
                ops.max(ops.abs(u)), factor, ops.sum(ops.square(u)))

    # -- instruments ----------------------------------------------------------------------
    record_steps = False
    steps: dict = {}

    @contextlib.contextmanager
    def recording(self):
        """Context for tracing a training step: while it is open, each `update_step` traced
        leaves `steps[variable_index(v)] = (max |u|, factor, sum u^2)`: tensors of the graph
        being traced (the caller's, so it can return them), from the u the step used."""
        self.steps, self.record_steps = {}, True
        try:
            yield self.steps
        finally:
            self.record_steps = False

    def get_config(self):
        config = super().get_config()
        config["update_clip"] = self.update_clip
        return config
