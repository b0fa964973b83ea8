"""TensorBoard scalars as plain event protos: what TensorBoard reads back."""

from __future__ import annotations

import contextlib
import os

import pytest

from ga3c.summaries import ScalarWriter

pytest.importorskip("tensorboard")


def test_scalars_read_back_as_tensorboard_reads_them(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = ScalarWriter(str(tmp_path / "tb"))
    writer.write(100, {"loss/policy": 0.5, "rates/env_steps_per_s": 1234.0})
    writer.write(250, {"loss/policy": -0.25, "diagnostics/dead_relu/dense_0": 0.125})
    writer.close()
    assert [f for f in os.listdir(tmp_path / "tb") if f.startswith("events.out.tfevents.")]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["diagnostics/dead_relu/dense_0", "loss/policy",
                                             "rates/env_steps_per_s"]
    assert [(e.step, e.value) for e in acc.Scalars("loss/policy")] == [(100, 0.5), (250, -0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("diagnostics/dead_relu/dense_0")] == [(250, 0.125)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point
def test_a_failed_write_raises_at_a_later_call(tmp_path, monkeypatch):
    """The writer thread's error (a full disk) comes back from write/flush/close."""
    writer = ScalarWriter(str(tmp_path / "tb"))
    full = open("/dev/full", "wb", buffering=0)
    monkeypatch.setattr(writer._writer._general_file_writer, "write", full.write)
    monkeypatch.setattr(writer._writer._general_file_writer, "flush", full.flush)
    with pytest.raises(Exception, match="No space left on device"):
        for i in range(200):
            writer.write(i, {"a": 1.0})
        writer.flush()
    with contextlib.suppress(OSError):
        writer.close()
    full.close()
