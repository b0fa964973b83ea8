"""Checkpoints of a run: model, optimizer and counters (tf.train.CheckpointManager), and
restoring the network alone (for evaluation and `ga3c.load_policy`).

A failed write never replaces a good checkpoint: TensorFlow writes a checkpoint's files
first and the `checkpoint` state file that names the latest one last, atomically; what a
failed write left is removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil

import numpy as np
import tensorflow as tf

from ga3c.errors import UserError, WriteError, first_line, write_error_reason


class Checkpointer:
    """tf.train.Checkpoint + CheckpointManager holding the model, optimizer and counters, and
    with `return_stats` (--normalize_reward's `ga3c.normalize.ReturnStats`) their state."""

    def __init__(self, learner, directory: str, keep: int, return_stats=None) -> None:
        self.counters = tf.Variable(np.zeros(3, np.int64), name="counters")  # steps, eps, updates
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, name="train_seconds")
        self._parts = dict(model=learner.model, optimizer=learner.optimizer,
                           counters=self.counters, train_seconds=self.train_seconds)
        self.return_stats = return_stats
        if return_stats is not None:  # [mean, var, count]
            self._parts["return_stats"] = tf.Variable(return_stats.state(), name="return_stats")
        self.checkpoint = tf.train.Checkpoint(**self._parts)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep)
        self._saved_counts: tuple[int, int] | None = None  # (env steps, updates) of the latest

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore_latest(self) -> dict:
        path = self.manager.latest_checkpoint
        checkpoint, note = self.checkpoint, None
        if self.return_stats is not None and not self._holds(path, "return_stats"):
            # a run from before they were saved (or without --normalize_reward)
            checkpoint = tf.train.Checkpoint(**{k: v for k, v in self._parts.items()
                                                if k != "return_stats"})
            note = "reward scaling's return statistics are not in it: they start afresh"
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot resume from it"
            raise UserError(f"cannot restore checkpoint {path}: {first_line(exc)} "
                             "(use a new --logdir, or move that checkpoint away)") from None
        if self.return_stats is not None and note is None:
            self.return_stats.set_state(self._parts["return_stats"].numpy())
        steps, episodes, updates = (int(x) for x in self.counters.numpy())
        self._saved_counts = (steps, updates)
        return dict(env_steps=steps, episodes=episodes, updates=updates,
                    train_seconds=float(self.train_seconds.numpy()), note=note)

    @staticmethod
    def _holds(path: str, name: str) -> bool:
        try:
            return any(key.split("/")[0] == name for key, _ in tf.train.list_variables(path))
        except Exception:  # noqa: BLE001 - unreadable: the restore says why
            return True

    def save(self, stats, learner) -> str:
        """Write a checkpoint numbered by the env-step count; its path. Nothing is written
        when the latest checkpoint already holds these counts (e.g. a stop before any
        training). A failed write raises WriteError after removing what it left."""
        number, updates = stats.env_steps, learner.version
        if self.latest and self._saved_counts == (number, updates):
            return self.latest
        self.counters.assign([number, stats.episodes, updates])
        if self.return_stats is not None:
            self._parts["return_stats"].assign(self.return_stats.state())
        self.train_seconds.assign(stats.train_seconds())
        try:
            path = self.manager.save(checkpoint_number=number)
        except Exception as exc:  # noqa: BLE001 - OSError, tf.errors.*: the disk said no
            prefix = os.path.join(self.manager.directory, f"ckpt-{number}")
            kept = self._remove_unfinished(prefix)
            left = (f"; its files {', '.join(kept)} could not be removed (nothing names them: "
                    "a resume ignores them)" if kept else "")
            raise WriteError(f"cannot write checkpoint {prefix}: {write_error_reason(exc)}"
                             f"{left}; {self.latest_note()}") from exc
        self._saved_counts = (number, updates)
        return path

    def on_disk_latest(self) -> str | None:
        """The latest checkpoint as the state file names it (what a resume would restore)."""
        try:
            state = tf.train.get_checkpoint_state(self.manager.directory)
        except Exception:  # noqa: BLE001
            return None
        return state.model_checkpoint_path if state else None

    def latest_note(self) -> str:
        latest = self.on_disk_latest()
        return f"the latest checkpoint is {latest}" if latest else "no checkpoint was written"

    def _remove_unfinished(self, prefix: str) -> list[str]:
        """Remove the files of a checkpoint whose write failed, unless the state file already
        names it (the data were complete; only the tidy-up after it failed). The names of
        those that could not be removed (a directory turned read-only after the data were
        written and before the state file was), sorted."""
        if self.on_disk_latest() == prefix:
            return []
        left = [glob.escape(prefix) + ".*", glob.escape(prefix) + "_temp*",
                os.path.join(glob.escape(self.manager.directory), "checkpoint.tmp*")]
        kept = []
        for path in [p for pattern in left for p in glob.glob(pattern)]:
            try:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            except OSError:
                kept.append(os.path.basename(path))
        return sorted(kept)


def find_checkpoint(directory: str, checkpoint: str | None = None) -> str:
    """`checkpoint` if it exists, else the latest in `directory`; UserError if none."""
    if checkpoint:
        if not os.path.exists(checkpoint + ".index"):
            raise UserError(f"checkpoint {checkpoint!r} not found (expected {checkpoint}.index)")
        return checkpoint
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        raise UserError(f"no checkpoint in {directory}")
    return latest


def restore_network(model, path: str) -> None:
    """The network's weights from a training checkpoint (optimizer and counters ignored)."""
    try:
        tf.train.Checkpoint(model=model).restore(path).expect_partial() \
            .assert_existing_objects_matched()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot use it"
        raise UserError(f"cannot restore checkpoint {path}: {first_line(exc)}") from None
