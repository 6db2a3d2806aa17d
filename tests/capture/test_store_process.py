"""The store process: the writer's zarr work in a process of its own (``_store_process``).

Real processes throughout: the store process is started by the writer as it is in training,
killed with SIGKILL mid-training, sent SIGINT, or left behind by a training process killed
with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import Pipe

import numpy as np
import pytest
import torch
from _capture_models import classification_data, mlp, train

from trainaudit.capture import CaptureConfig, Recorder, TorchHook, open_run
from trainaudit.capture import _format as F
from trainaudit.capture._run_store import ResolvedStep
from trainaudit.capture._store_process import StoreProcess, StoreProcessGone, receive, send


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a container's init to reap does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_protocol_round_trips_arrays_out_of_band() -> None:
    a, b = Pipe()
    big = np.arange(3_000_000, dtype=np.float32).reshape(1000, 3000)
    msg = ("write_batch", ([1, 2], big, big[:, ::7], np.empty((0, 4)), np.arange(5, dtype=np.int64), {"k": ("weights", None)}))
    sender = threading.Thread(target=send, args=(a, msg))  # (more than a pipe holds)
    sender.start()
    method, args = receive(b)
    sender.join()
    assert method == "write_batch" and args[0] == [1, 2] and args[5] == {"k": ("weights", None)}
    arrays: list[np.ndarray] = [big, big[:, ::7], np.empty((0, 4)), np.arange(5, dtype=np.int64)]
    for sent, got in zip(arrays, args[1:5], strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    assert args[1].flags.writeable


def test_local_runs_are_written_by_a_store_process_and_memory_runs_in_process(local_dir: str) -> None:
    uri = os.path.join(local_dir, "proc")
    with Recorder(uri) as rec:
        assert rec.writer.wait_ready(60)
        pid = rec.writer.store_pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        for s in range(5):
            rec.record("weights/w", np.full((3, 4), s, dtype=np.float32), collection="weights", step=s)
    assert _wait_gone(pid, 10), "the store process outlived close()"
    run = open_run(uri)
    assert run.status == "complete" and run.committed_steps() == 5 and not run.errors
    np.testing.assert_array_equal(run.values("weights/w", 1), np.full((3, 4), 1, dtype=np.float32))

    with Recorder("memory://trainaudit-test/in-process") as rec:
        assert rec.writer.wait_ready(60)
        assert rec.writer.store_pid is None
    with Recorder(os.path.join(local_dir, "off"), config=CaptureConfig(store_process=False)) as rec:
        assert rec.writer.wait_ready(60)
        assert rec.writer.store_pid is None


def test_a_store_process_that_cannot_start_leaves_the_writing_in_process(local_dir: str, monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", os.path.join(local_dir, "no-such-python"))
    uri = os.path.join(local_dir, "no-proc")
    with Recorder(uri) as rec:
        assert rec.writer.wait_ready(60)
        assert rec.writer.store_pid is None
        for s in range(3):
            rec.record("losses/train", float(s), collection="losses", step=s)
    assert "could not start a store process" in caplog.text
    run = open_run(uri)
    assert run.status == "complete" and run.committed_steps() == 3


def test_training_goes_on_when_the_store_process_is_killed(local_dir: str) -> None:
    """Every step is committed: the batch in flight when it died is written again from the
    training process, and the run says what happened."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = classification_data(256, (20,), 4)
    uri = os.path.join(local_dir, "store-killed")
    hook = TorchHook(uri, config=CaptureConfig(flush_steps=4, flush_seconds=0.05))
    train(model, hook, x, y, steps=10, optimizer=opt, loss_fn=loss_fn)
    assert hook.recorder.writer.wait_ready(60)
    pid = hook.recorder.writer.store_pid
    assert pid is not None
    hook.flush()
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid, 10)
    train(model, None, x, y, steps=20, optimizer=opt, loss_fn=loss_fn)
    hook.flush()
    assert hook.recorder.writer.store_pid is None
    hook.close()

    run = open_run(uri)
    assert run.status == "complete"
    assert run.committed_steps() == 30 and run.steps().global_step.tolist() == list(range(30))
    assert not run.lost
    assert any(e["kind"] == "store" and "store process ended" in e["message"] for e in run.errors)
    w = run.stats("losses/loss")  # every step's loss, across the switch
    assert w.step.tolist() == list(range(30))
    for info in run.tensors(collection="weights"):
        assert run.stats(info.name).step.tolist() == list(range(30)), info.name


def test_a_batch_written_but_not_committed_when_the_process_dies_is_written_again(local_dir: str) -> None:
    uri = os.path.join(local_dir, "uncommitted")
    store = StoreProcess(uri, rank=0)
    store.open({"format_version": F.FORMAT_VERSION, "run_id": "uncommitted", "framework": "generic", "created": "now"})
    part = {"host": "h", "pid": os.getpid(), "errors": [], "n_errors": 0, "lost_steps": [], "dropped_steps": []}
    store.commit("running", part)
    kinds = {"weights/w": ("weights", None)}

    def batch(first: int, n: int) -> tuple[np.ndarray, np.ndarray, list[ResolvedStep]]:
        steps = np.array([[s, 0, s] for s in range(first, first + n)], dtype=np.int64)
        stats = [ResolvedStep(["weights/w"], F.numpy_stats(np.full(3, s, dtype=np.float32))[None, :], [])
                 for s in range(first, first + n)]
        return steps, np.zeros(n), stats

    store.write_batch(*batch(0, 3), kinds)
    store.commit("running", part)
    store.write_batch(*batch(3, 1), {})  # (a commit that failed here: two batches wait)
    store.write_batch(*batch(4, 1), {})
    os.kill(store.pid, signal.SIGKILL)
    assert _wait_gone(store.pid, 10)
    with pytest.raises(StoreProcessGone):
        store.commit("running", part)
    store.commit("complete", part)  # in-process now: steps 3-4 are written again first
    assert store.fallback is not None and store.committed_steps == 5
    run = open_run(uri)
    assert run.committed_steps() == 5 and run.steps().global_step.tolist() == [0, 1, 2, 3, 4]
    assert run.stats("weights/w").values[:, F.STAT_FIELDS.index("max")].tolist() == [0, 1, 2, 3, 4]


def test_ctrl_c_does_not_stop_the_store_process(local_dir: str) -> None:
    """SIGINT reaches a terminal's whole process group; the writer may still be flushing."""
    uri = os.path.join(local_dir, "sigint")
    with Recorder(uri) as rec:
        assert rec.writer.wait_ready(60)
        pid = rec.writer.store_pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        assert _alive(pid)
        for s in range(3):
            rec.record("losses/train", float(s), collection="losses", step=s)
    run = open_run(uri)
    assert run.status == "complete" and run.committed_steps() == 3 and not run.errors


_KILLED_TRAINING = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from trainaudit.capture import CaptureConfig, Recorder
    rec = Recorder(sys.argv[1], config=CaptureConfig.full(flush_steps=2, flush_seconds=0.05))
    rec.writer.wait_ready(60)
    print(rec.writer.store_pid, flush=True)
    step = 0
    while True:
        rec.record("weights/w", np.full((64, 64), step, dtype=np.float32), collection="weights", step=step)
        step += 1
        time.sleep(0.002)
    """
)


def test_the_store_process_ends_with_a_killed_training_process(local_dir: str) -> None:
    uri = os.path.join(local_dir, "orphan")
    script = os.path.join(local_dir, "train.py")
    with open(script, "w") as f:
        f.write(_KILLED_TRAINING)
    proc = subprocess.Popen([sys.executable, script, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None
        store_pid = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (os.path.exists(os.path.join(uri, F.rank_key(0)))
                                                   and open_run(uri).committed_steps() >= 10):
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _wait_gone(store_pid, 15), "the store process outlived its training process"
    run = open_run(uri)
    assert run.status == "incomplete"
    n = run.committed_steps()
    assert n >= 10 and run.steps().global_step.tolist() == list(range(n))
    for s in (0, n - 1):
        np.testing.assert_array_equal(run.values("weights/w", s), np.full((64, 64), s, dtype=np.float32))
