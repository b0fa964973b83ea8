"""Never lose a run, in-process: divergence stops before anything non-finite is saved, and a
checkpoint or policy.keras that cannot be written stops the run with one line, leaving the
previous checkpoint the latest and restorable. (Signals and kill -9, which need a real
process, are in test_cli.py and test_signals.py.)"""

from __future__ import annotations

import errno
import glob
import os
import threading
import time

import numpy as np
import pytest

from ga3c.errors import write_error_reason
from ga3c.threads import UpdateGate

tf = pytest.importorskip("tensorflow")

from ga3c.cli import parse_config  # noqa: E402
from ga3c.config import AlgoConfig, NetworkConfig  # noqa: E402
from ga3c.envs import inspect_env  # noqa: E402
from ga3c.errors import NonFiniteError  # noqa: E402
from ga3c.learner import Learner  # noqa: E402
from ga3c.returns import Transitions  # noqa: E402
from ga3c.checkpoints import Checkpointer  # noqa: E402
from ga3c.cli import report  # noqa: E402
from ga3c.service import Service, build_service  # noqa: E402
from ga3c.stats import Stats  # noqa: E402
from tests.test_cli import TINY  # noqa: E402

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- the gate that pauses updates during a save (no TensorFlow) ------------------------------
def test_exclusive_waits_for_updates_in_flight_and_holds_new_ones_off():
    gate, events = UpdateGate(), []
    in_update, release = threading.Event(), threading.Event()

    def update(name, hold):
        with gate.shared():
            events.append(f"{name} start")
            if hold:
                in_update.set()
                release.wait(5)
            events.append(f"{name} end")

    first = threading.Thread(target=update, args=("u1", True))
    first.start()
    assert in_update.wait(5)
    saver_in = threading.Event()

    def save():
        with gate.exclusive(timeout=5):
            saver_in.set()
            events.append("save")
            time.sleep(0.2)
            events.append("save done")

    saver = threading.Thread(target=save)
    saver.start()
    time.sleep(0.2)
    assert not saver_in.is_set()  # u1 is still updating
    release.set()
    assert saver_in.wait(5)
    second = threading.Thread(target=update, args=("u2", False))
    second.start()
    for t in (first, saver, second):
        t.join(5)
    assert events == ["u1 start", "u1 end", "save", "save done", "u2 start", "u2 end"]


def test_exclusive_gives_up_after_its_timeout_and_updates_go_on():
    gate = UpdateGate()
    with gate.shared():
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            with gate.exclusive(timeout=0.2):
                pass
        assert time.monotonic() - t0 < 2
    with gate.shared():  # not left closed
        pass
    with gate.exclusive(timeout=1):
        pass


def test_write_error_reason_is_a_few_words():
    assert write_error_reason(ENOSPC) == "No space left on device"
    tf_style = RuntimeError("{{function_node __wrapped__SaveV2_dtypes_22_device_/job:localhost"
                            "/replica:0/task:0/device:CPU:0}} /r/checkpoints/ckpt-9_temp; "
                            "Read-only file system [Op:SaveV2]")
    assert write_error_reason(tf_style) == "Read-only file system"
    assert write_error_reason(ValueError("odd\nmore")) == "odd"


# -- the learner's checks --------------------------------------------------------------------
def tiny_learner(**algo) -> Learner:
    return Learner((4,), np.float32, 2, NetworkConfig(hidden=(8,)), AlgoConfig(**algo))


def batch(rewards) -> Transitions:
    n = len(rewards)
    rng = np.random.default_rng(0)
    return Transitions(rng.normal(size=(n, 4)).astype(np.float32), np.zeros(n, np.int32),
                       np.asarray(rewards, np.float32), rng.normal(size=(1, 4)).astype(np.float32),
                       np.zeros(n, np.int32), np.ones(n, np.int32), np.ones(n, np.float32),
                       np.zeros(n, np.int64))


def test_nan_reward_stops_the_step_naming_the_quantities_and_the_update():
    learner = tiny_learner()
    learner.train(batch([1.0] * 8))
    learner.train(batch([1.0] * 8))
    learner.check_finite()  # all good so far
    with pytest.raises(NonFiniteError) as info:
        learner.train(batch([1.0] * 7 + [float("nan")]))
    message = str(info.value)
    assert "non-finite" in message and "value_loss" in message and "at update 3" in message
    assert "value_loss=nan" in message
    assert learner.nonfinite == message
    with pytest.raises(NonFiniteError, match="at update 3"):  # and nothing may be saved now
        learner.check_finite()


def test_finite_steps_leave_the_learner_unflagged():
    learner = tiny_learner()
    metrics = learner.train(batch(np.linspace(-1, 1, 8)))
    assert all(np.isfinite(metrics[:-1])) and all(np.isfinite(list(metrics.probes.values())))
    assert learner.nonfinite is None and learner.nonfinite_weights() is None


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_a_non_finite_weight_is_found_before_saving(where):
    learner = tiny_learner()
    learner.train(batch([1.0] * 8))
    if where == "model":
        var = learner.model.trainable_variables[0]
    else:
        var = next(v for v in learner.optimizer.variables if "velocity" in v.path)
    values = var.numpy()
    values.flat[3] = np.inf
    var.assign(values)
    with pytest.raises(NonFiniteError) as info:
        learner.check_finite()
    assert "non-finite weights after update 1" in str(info.value)
    assert "1 of" in str(info.value) and var.path in str(info.value)


def test_failed_policy_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    learner = tiny_learner()
    path = str(tmp_path / "policy.keras")
    learner.save_policy(path)
    before = open(path, "rb").read()
    real_save = learner.model.save

    def half_written(target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise ENOSPC

    monkeypatch.setattr(learner.model, "save", half_written)
    with pytest.raises(OSError):
        learner.save_policy(path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["policy.keras"]
    monkeypatch.setattr(learner.model, "save", real_save)


# -- the service: saves that are refused or fail ---------------------------------------------
def make_service(logdir, *flags) -> Service:
    config = parse_config([*TINY, f"--logdir={logdir}", "--max_seconds=60",
                           "--log_every_seconds=60", *flags])
    return build_service(config, inspect_env(config.env.env_id, config.env))


def files(directory) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def assert_restorable(logdir, latest):
    """The latest checkpoint is `latest` and restores into a fresh model (as a resume would),
    with every value finite."""
    service = make_service(logdir)  # --resume is on by default: setup() restores the latest
    assert service.checkpointer.latest == latest
    assert service.resumed is not None and service.resumed["env_steps"] == int(latest.split("-")[-1])
    assert service.learner.nonfinite_weights() is None


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ga3c: error: ") and "Traceback" not in err
    return lines[0]


def saved_once(tmp_path):
    """A service over a new logdir that has saved once at 1,000 env steps: (service, logdir,
    that checkpoint's path)."""
    logdir = str(tmp_path / "run")
    service = make_service(logdir)
    os.makedirs(logdir)
    service.stats = Stats(None, 1000, 10)
    return service, logdir, service._save()


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    service, logdir, first = saved_once(tmp_path)
    assert os.path.exists(service.run_dir.policy)
    before = files(logdir)
    service.stats = Stats(None, 2000, 20)
    kernel = service.learner.model.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        service._save()
    assert files(logdir) == before
    assert service.checkpointer.on_disk_latest() == first


def test_weights_going_non_finite_while_policy_keras_is_written_keep_the_old_one(tmp_path,
                                                                                  monkeypatch):
    """policy.keras is written while updates run again: if they made the weights NaN
    meanwhile, the new file is not renamed into place (the checkpoint before it was checked
    under the pause, and stays)."""
    import keras

    service, logdir, _ = saved_once(tmp_path)
    old_policy = files(logdir)["policy.keras"]
    real_save = keras.Model.save

    def save_while_diverging(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        kernel = service.learner.model.trainable_variables[0]
        kernel.assign(tf.fill(kernel.shape, float("inf")))  # a trainer's update meanwhile

    monkeypatch.setattr(keras.Model, "save", save_while_diverging)
    service.stats = Stats(None, 2000, 20)
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        service._save()
    after = files(logdir)
    assert after["policy.keras"] == old_policy
    assert not [name for name in after if ".tmp" in name]
    latest = service.checkpointer.on_disk_latest()
    assert latest.endswith("ckpt-2000")  # written before the weights went bad: finite
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        assert value.dtype.kind != "f" or np.isfinite(value).all(), name


def test_save_with_nothing_new_rewrites_nothing(tmp_path):
    service, logdir, first = saved_once(tmp_path)
    before = {p: os.stat(os.path.join(logdir, p)).st_mtime_ns for p in files(logdir)}
    time.sleep(0.05)
    assert service._save() == first
    assert {p: os.stat(os.path.join(logdir, p)).st_mtime_ns for p in files(logdir)} == before


def run_until_saves_fail(tmp_path, monkeypatch, capsys, fail):
    """A real tiny run checkpointing every 0.1 s whose `fail(call_number)` hook may raise on
    some save; returns (exit code, the one stderr line, logdir, checkpoints written before)."""
    logdir = str(tmp_path / "run")
    service = make_service(logdir, "--checkpoint_every_seconds=0.1")
    written = []
    real_save = tf.train.CheckpointManager.save

    def save(manager, *args, **kwargs):
        fail(manager, len(written) + 1, kwargs["checkpoint_number"])
        path = real_save(manager, *args, **kwargs)
        written.append(path)
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    t0 = time.monotonic()
    code = report(service.run())
    assert time.monotonic() - t0 < 50, "the failed save did not stop the run"
    return code, one_error_line(capsys), logdir, written


def test_checkpoint_data_write_failure_exits_1_and_keeps_the_previous(tmp_path, monkeypatch,
                                                                      capsys):
    def fail(manager, call, number):
        if call == 3:  # half-written files, as a write cut short by a full disk leaves them
            prefix = os.path.join(manager.directory, f"ckpt-{number}")
            os.makedirs(prefix + "_temp")
            with open(prefix + "_temp/part-00000-of-00001.data-00000-of-00001", "wb") as f:
                f.write(b"\0" * 100)
            with open(prefix + ".index", "wb") as f:
                f.write(b"\0" * 10)
            raise ENOSPC

    code, line, logdir, written = run_until_saves_fail(tmp_path, monkeypatch, capsys, fail)
    assert code == 1
    assert len(written) == 2
    assert "cannot write checkpoint" in line and "No space left on device" in line
    assert f"the latest checkpoint is {written[-1]}" in line
    ckdir = os.path.join(logdir, "checkpoints")
    names = {n.split(".")[0].split("_")[0] for n in os.listdir(ckdir) if n != "checkpoint"}
    assert names == {os.path.basename(p) for p in written}  # nothing of the failed one left
    assert os.path.exists(os.path.join(logdir, "policy.keras"))
    assert not glob.glob(os.path.join(logdir, "*.tmp*"))
    assert_restorable(logdir, written[-1])


def test_checkpoint_state_write_failure_exits_1_and_keeps_the_previous(tmp_path, monkeypatch,
                                                                       capsys):
    """The data of the new checkpoint are written, then the state file naming it is not:
    the previous one stays the latest, and the orphaned files are removed."""
    from tensorflow.python.checkpoint import checkpoint_management

    real_update = checkpoint_management.update_checkpoint_state_internal
    state = {"fail": False}

    def update(*args, **kwargs):
        if state["fail"]:
            raise ENOSPC
        return real_update(*args, **kwargs)

    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", update)

    def fail(manager, call, number):
        state["fail"] = call == 3

    code, line, logdir, written = run_until_saves_fail(tmp_path, monkeypatch, capsys, fail)
    assert code == 1
    assert "cannot write checkpoint" in line and "No space left on device" in line
    assert f"the latest checkpoint is {written[-1]}" in line
    ckdir = os.path.join(logdir, "checkpoints")
    names = {n.split(".")[0] for n in os.listdir(ckdir) if n != "checkpoint"}
    assert names == {os.path.basename(p) for p in written}
    assert_restorable(logdir, written[-1])


def test_checkpoint_files_that_cannot_be_removed_are_named(tmp_path, monkeypatch, capsys):
    """The state file fails and the orphaned data files cannot be removed either (the
    directory turned read-only between them): the one line names what was left."""
    from tensorflow.python.checkpoint import checkpoint_management

    EROFS = OSError(errno.EROFS, os.strerror(errno.EROFS))
    real_update, real_remove = checkpoint_management.update_checkpoint_state_internal, os.remove
    state = {"fail": False}

    def update(*args, **kwargs):
        if state["fail"]:
            raise EROFS
        return real_update(*args, **kwargs)

    def remove(path, *args, **kwargs):
        if state["fail"]:
            raise EROFS
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", update)
    monkeypatch.setattr(os, "remove", remove)

    def fail(manager, call, number):
        state["fail"] = call == 3

    code, line, logdir, written = run_until_saves_fail(tmp_path, monkeypatch, capsys, fail)
    state["fail"] = False
    assert code == 1
    failed = line.split("cannot write checkpoint ", 1)[1].split(":", 1)[0]
    left = sorted(n for n in os.listdir(os.path.join(logdir, "checkpoints"))
                  if n.startswith(os.path.basename(failed) + "."))
    assert left and f"its files {', '.join(left)} could not be removed" in line, line
    assert line.endswith(f"the latest checkpoint is {written[-1]}")
    assert_restorable(logdir, written[-1])  # the orphaned files are ignored


def test_tensorboard_write_failure_is_one_line(tmp_path, monkeypatch, capsys):
    """The summary writer hits a full disk (TensorFlow raises ResourceExhaustedError when it
    flushes): one line naming tb/ and the latest checkpoint, no traceback."""
    logdir = str(tmp_path / "run")
    service = make_service(logdir, "--log_every_seconds=0.2", "--checkpoint_every_seconds=0.1")
    from ga3c.summaries import ScalarWriter

    real_write, calls = ScalarWriter.write, []

    def write(writer, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # as TensorBoard's writer thread raises a failed flush's error
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{logdir}/tb/events.out.tfevents.1; No space left on device\n"
                "\tFailed to flush 11 events")
        return real_write(writer, *args, **kwargs)

    monkeypatch.setattr(ScalarWriter, "write", write)
    t0 = time.monotonic()
    code = report(service.run())
    assert time.monotonic() - t0 < 50
    line = one_error_line(capsys)
    assert code == 1
    assert f"cannot write {logdir}/tb: No space left on device; the latest checkpoint is " in line


def test_policy_write_failure_exits_1_with_the_previous_policy_intact(tmp_path, monkeypatch,
                                                                      capsys):
    import keras

    real_save = keras.Model.save
    calls, previous = [], {}

    def save(model, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            final = path.removesuffix(".tmp.keras")
            previous["bytes"] = open(final, "rb").read()
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise ENOSPC
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    code, line, logdir, written = run_until_saves_fail(tmp_path, monkeypatch, capsys,
                                                       lambda *a: None)
    assert code == 1
    assert "policy.keras: No space left on device" in line
    assert f"the latest checkpoint is {written[-1]}" in line  # complete, written before it
    with open(os.path.join(logdir, "policy.keras"), "rb") as f:
        assert f.read() == previous["bytes"]
    assert not glob.glob(os.path.join(logdir, "*.tmp*"))
    keras.models.load_model(os.path.join(logdir, "policy.keras"))
    assert_restorable(logdir, written[-1])


def test_checkpointer_counts_survive_a_restore(tmp_path):
    """Resuming and stopping before any step writes nothing new: the restored counts are
    those of the latest checkpoint."""
    learner = tiny_learner()
    ckdir = str(tmp_path / "ck")
    first = Checkpointer(learner, ckdir, 3)
    path = first.save(Stats(None, 500, 5), learner)
    before = files(ckdir)
    again = Checkpointer(learner, ckdir, 3)
    again.restore_latest()
    assert again.save(Stats(None, 500, 5), learner) == path
    assert files(ckdir) == before
    learner.train(batch([1.0] * 8))  # one more update, same env steps: saved again
    assert again.save(Stats(None, 500, 5), learner) == path
    assert files(ckdir) != before
