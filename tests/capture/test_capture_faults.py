"""Capture under faults: the S3 endpoint going away mid-training, a job killed with SIGKILL,
runs that are missing, foreign, too new or damaged, hook errors, a full queue, and what
``import trainaudit.capture`` loads. Real parts only: a moto server behind a TCP proxy that
the test cuts, a real subprocess killed with -9, real files overwritten with garbage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from _capture_models import classification_data, mlp, train
from torch import nn

from trainaudit.capture import (
    CaptureConfig,
    CorruptRunError,
    FormatVersionError,
    NotARunError,
    Recorder,
    RunNotFoundError,
    TorchHook,
    TrainauditError,
    open_run,
)
from trainaudit.capture import _format as F

# ---------------------------------------------------------------------------------- S3 outage


class CuttableProxy:
    """A TCP proxy on loopback in front of ``target_port``. ``cut()`` drops every open
    connection and refuses new ones (they are accepted and closed at once, as a dead load
    balancer would); ``restore()`` lets traffic through again."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.closed = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.server.close()


@pytest.fixture(scope="module")
def _flaky_server() -> Iterator[tuple[CuttableProxy, dict[str, Any]]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = CuttableProxy(server.get_host_and_port()[1])
    opts = {
        "endpoint_url": f"http://127.0.0.1:{proxy.port}",
        "key": "testing",
        "secret": "testing",
        # keep botocore's retries and timeouts short so that failures are fast
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 2},
    }
    try:
        yield proxy, opts
    finally:
        proxy.close()
        server.stop()


@pytest.fixture()
def flaky_s3(_flaky_server: tuple[CuttableProxy, dict[str, Any]]) -> tuple[CuttableProxy, dict[str, Any], str]:
    """A moto server of its own behind a CuttableProxy; yields (proxy, storage_options,
    bucket URI) with a fresh bucket and the proxy up."""
    import s3fs

    proxy, opts = _flaky_server
    proxy.restore()
    bucket = f"flaky-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(skip_instance_cache=True, **opts).mkdir(bucket)
    return proxy, opts, f"s3://{bucket}"


@pytest.mark.slow  # a moto server of its own; 15-40 s on a busy 2-core machine
def test_s3_outage_mid_training_loses_only_the_outage_steps(flaky_s3: tuple[CuttableProxy, dict[str, Any], str]) -> None:
    proxy, opts, bucket = flaky_s3
    uri = f"{bucket}/runs/outage"
    torch.manual_seed(0)
    model = mlp(nn.ReLU)
    opt, lf = torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss()
    x, y = classification_data(512, (20,), 4)
    # a few tensors only: moto on a busy 2-core machine costs tens of ms per request
    cfg = CaptureConfig(flush_steps=1000, flush_seconds=100.0, retries=2,
                        include=(r"^losses/", r"^gradients/0\.weight$"))
    hook = TorchHook(uri, config=cfg, storage_options=opts)

    tr1 = train(model, hook, x, y, steps=5, optimizer=opt, loss_fn=lf)
    hook.flush()
    proxy.cut()
    t0 = time.monotonic()
    train(model, None, x, y, steps=5, optimizer=opt, loss_fn=lf)  # the hook is still registered
    hook.flush()  # the writer tries, gives up, records the loss: training never sees it
    outage = time.monotonic() - t0
    proxy.restore()
    tr3 = train(model, None, x, y, steps=5, optimizer=opt, loss_fn=lf)
    t0 = time.monotonic()
    hook.close()
    closing = time.monotonic() - t0
    assert outage < 45 and closing < 20, (outage, closing)

    run = open_run(uri, storage_options=opts)
    assert run.status == "complete"
    assert run.steps().global_step.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert run.lost == {0: {"lost_steps": [[5, 9]], "dropped_steps": []}}
    assert any(e["kind"] == "write" and "steps 5-9 lost" in e["message"] for e in run.errors)
    st = run.stats("gradients/0.weight")
    assert st.step.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    # the gradients of the steps after the outage are intact (train() registered the hook
    # once; its trace of the third phase holds steps 10-14)
    np.testing.assert_allclose(st.field("l1")[:5], [np.abs(g["0.weight"]).sum() for g in tr1.grads], rtol=1e-5)
    np.testing.assert_allclose(st.field("l1")[5:], [np.abs(g["0.weight"]).sum() for g in tr3.grads], rtol=1e-5)
    loss = run.stats("losses/loss")  # a scalar's statistics row holds its value
    np.testing.assert_allclose(loss.field("sum")[loss.step == 12], [tr3.losses[2]], rtol=1e-6)


@pytest.mark.slow  # a moto server of its own; 15-40 s on a busy 2-core machine
def test_s3_down_at_close_returns_in_bounded_time(flaky_s3: tuple[CuttableProxy, dict[str, Any], str]) -> None:
    proxy, opts, bucket = flaky_s3
    uri = f"{bucket}/runs/down-at-close"
    with Recorder(uri, config=CaptureConfig(retries=2), storage_options=opts) as rec:
        for s in range(3):
            rec.record("losses/loss", float(s), collection="losses", step=s)
        rec.flush()
        proxy.cut()
        for s in range(3, 6):
            rec.record("losses/loss", float(s), collection="losses", step=s)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 30
    proxy.restore()
    run = open_run(uri, storage_options=opts, stale_after=0)
    # The final commit never got through: the run still reads as it was before the outage,
    # and as incomplete once its heartbeat is stale.
    assert run.steps().global_step.tolist() == [0, 1, 2]
    assert run.status == "incomplete"


# ---------------------------------------------------------------------------------- no close()

_FORGETFUL = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from trainaudit.capture import TorchHook
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    lf = nn.CrossEntropyLoss()
    hook = TorchHook(sys.argv[1]).register(model, opt, lf)
    for step in range(250):  # more than one flush's worth, the last ones still queued at exit
        x, y = torch.randn(32, 20), torch.randint(0, 4, (32,))
        opt.zero_grad(); lf(model(x), y).backward(); opt.step()
    # no hook.close(): the interpreter exits with steps still in the writer's queue
    """
)


def test_interpreter_exit_without_close_commits_every_step(local_dir: str) -> None:
    uri = os.path.join(local_dir, "forgetful")
    script = os.path.join(local_dir, "forgetful.py")
    with open(script, "w") as f:
        f.write(_FORGETFUL)
    out = subprocess.run([sys.executable, script, uri], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "could not" not in out.stderr, out.stderr
    run = open_run(uri)
    assert run.status == "complete"
    assert run.committed_steps() == 250
    assert not run.errors and not run.lost


# ---------------------------------------------------------------------------------- kill -9

_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from trainaudit.capture import CaptureConfig, TorchHook
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lf = nn.CrossEntropyLoss()
    cfg = CaptureConfig.full(flush_steps=3, flush_seconds=0.05)
    hook = TorchHook(sys.argv[1], config=cfg).register(model, opt, lf)
    step = 0
    while True:
        x = torch.randn(32 + step % 5, 20)  # shapes vary: padded value rows
        y = torch.randint(0, 4, (len(x),))
        opt.zero_grad(); lf(model(x), y).backward(); opt.step()
        step += 1
        time.sleep(0.005)
    """
)


def test_kill_9_leaves_a_readable_incomplete_run(local_dir: str) -> None:
    uri = os.path.join(local_dir, "killed")
    script = os.path.join(local_dir, "child.py")
    with open(script, "w") as f:
        f.write(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, script, uri], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if open_run(uri).committed_steps() >= 12:
                    break
            except (TrainauditError, KeyError):  # not created yet, or rank 0 not committed yet
                pass
        else:
            pytest.fail("the training child never committed 12 steps")
        time.sleep(0.13)  # land somewhere inside a later flush
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    run = open_run(uri)
    assert run.status == "incomplete"
    n = run.committed_steps()
    assert n >= 12
    st = run.steps()
    assert st.global_step.tolist() == list(range(n)) and (st.mode == 0).all()
    assert len(run.tensors()) >= 15
    for info in run.tensors():
        stats = run.stats(info.name)
        assert len(stats) == info.n_stats and np.isin(stats.step, st.global_step).all()
        by_step = {int(s): stats.values[i] for i, s in enumerate(stats.step)}
        vals, shapes, steps, _ = run.values_block(info.name, 0, info.n_values)
        assert len(vals) == info.n_values > 0
        for v, shape, step in zip(vals, shapes, steps, strict=True):
            real = v[tuple(slice(0, d) for d in shape)]
            # every committed value row is whole: its statistics are the committed ones
            np.testing.assert_allclose(by_step[int(step)], F.numpy_stats(real), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{info.name} step {step}")


# ---------------------------------------------------------------------------------- bad runs


def _small_run(uri: str) -> None:
    with Recorder(uri, config=CaptureConfig.full()) as rec:
        for s in range(4):
            rec.record("weights/w", np.arange(12, dtype=np.float32).reshape(3, 4) * s, collection="weights", step=s)


def test_missing_run(local_dir: str, s3_bucket: str) -> None:
    for uri in (os.path.join(local_dir, "nope"), f"{s3_bucket}/runs/nope", "memory://nothing-here"):
        with pytest.raises(RunNotFoundError, match="No trainaudit run at") as ei:
            open_run(uri)
        assert isinstance(ei.value, FileNotFoundError)
        assert "Check the URI" in str(ei.value)


def test_not_a_run(local_dir: str, s3_bucket: str) -> None:
    import s3fs
    import zarr

    plain = os.path.join(local_dir, "plain")
    os.makedirs(plain)
    with open(os.path.join(plain, "notes.txt"), "w") as f:
        f.write("hello")
    group = os.path.join(local_dir, "group")
    zarr.open_group(group, mode="w", zarr_format=3).attrs["something"] = 1
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/plain/notes.txt", b"hello")
    for uri in (plain, os.path.join(plain, "notes.txt"), group, f"{s3_bucket}/plain"):
        with pytest.raises(NotARunError, match="is not a trainaudit run") as ei:
            open_run(uri)
        assert isinstance(ei.value, ValueError) and "Point trainaudit at the folder" in str(ei.value)


def test_unknown_format_version(local_dir: str) -> None:
    import zarr

    uri = os.path.join(local_dir, "future")
    _small_run(uri)
    root = zarr.open_group(uri, mode="a", zarr_format=3)
    attrs = dict(root.attrs[F.ROOT_ATTR])  # type: ignore[arg-type]
    attrs["format_version"] = 99
    root.attrs[F.ROOT_ATTR] = attrs
    with pytest.raises(FormatVersionError, match=r"format_version=99; this trainaudit reads version 1\. Upgrade"):
        open_run(uri)
    # and a writer refuses to append to it (recorded, never raised)
    with Recorder(uri) as rec:
        rec.record("losses/loss", 1.0, collection="losses", step=0)
    assert zarr.open_group(uri, mode="r").attrs[F.ROOT_ATTR]["format_version"] == 99  # type: ignore[index]


def _chunk_files(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f != "zarr.json")


def test_corrupt_chunks_name_the_run_and_tensor(local_dir: str) -> None:
    uri = os.path.join(local_dir, "damaged")
    _small_run(uri)
    run = open_run(uri)
    key = run.tensor("weights/w").key
    values_chunks = _chunk_files(os.path.join(uri, "rank_0", key, "values"))
    stats_chunks = _chunk_files(os.path.join(uri, "rank_0", "stats"))
    assert values_chunks and stats_chunks
    for path in values_chunks + stats_chunks:
        with open(path, "wb") as f:
            f.write(os.urandom(64))
    run = open_run(uri)  # the metadata is fine: the run opens
    with pytest.raises(CorruptRunError) as ei:
        run.values("weights/w", 2)
    msg = str(ei.value)
    assert repr(uri) in msg and "'weights/w'" in msg and "recapture" in msg
    with pytest.raises(CorruptRunError) as ei:
        run.stats("weights/w")
    assert repr(uri) in str(ei.value) and "'weights/w'" in str(ei.value)
    assert isinstance(ei.value, ValueError) and ei.value.uri == uri


def test_errors_pickle() -> None:
    import pickle

    for err in (RunNotFoundError("s3://b/r"), NotARunError("s3://b/r", "x"), FormatVersionError("u", 3, (1, 2)),
                CorruptRunError("u", "tensor 'w'", "bad")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)


# ---------------------------------------------------------------------------------- hooks


class _Opaque(torch.Tensor):
    """A tensor subclass that refuses to be detached or copied: what a custom module may
    hand around. Training itself only needs it as a plain tensor."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in (torch.Tensor.detach, torch.Tensor.clone):
            raise RuntimeError("opaque tensors cannot be copied")
        return super().__torch_function__(func, types, args, kwargs or {})


class WeirdModule(nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        return (x * 1).as_subclass(_Opaque)  # a tensor of its own (not fc1's output again)


class SparseOut(nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        self.last = x.detach().to_sparse()
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.weird, self.sparse, self.fc2 = nn.Linear(20, 16), WeirdModule(), SparseOut(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.weird(self.fc1(x)).as_subclass(torch.Tensor)
        return self.fc2(self.sparse(h))


def test_hook_errors_never_reach_training_and_are_recorded(local_dir: str) -> None:
    torch.manual_seed(0)
    model = Net()
    x, y = classification_data(128, (20,), 4)
    uri = os.path.join(local_dir, "weird")
    hook = TorchHook(uri, config=CaptureConfig.full())
    hook.record("other/sparse", torch.eye(3).to_sparse())  # fails on the writer thread
    tr = train(model, hook, x, y, steps=4)
    hook.close()
    assert len(tr.losses) == 4
    run = open_run(uri)
    assert run.status == "complete" and run.committed_steps() == 4
    kinds = {e["kind"] for e in run.errors}
    assert "hook" in kinds or "tensor" in kinds
    assert any("outputs/weird" in e["message"] and "opaque" in e["message"] for e in run.errors)
    assert any("other/sparse" in e["message"] for e in run.errors)
    names = {t.name for t in run.tensors()}
    assert {"weights/fc1.weight", "gradients/fc2.weight", "outputs/fc1", "losses/loss"} <= names
    assert "outputs/weird" not in names


class _BlockingPayload:
    """A payload whose statistics take as long as the test wants: a store that stalls."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self.started.set()
        self.release.wait(30)
        return F.numpy_stats(np.zeros(1)), None


def test_full_queue_drops_steps_and_records_them(local_dir: str) -> None:
    uri = os.path.join(local_dir, "dropped")
    rec = Recorder(uri, config=CaptureConfig(queue_size=1, flush_steps=1))
    started, release = threading.Event(), threading.Event()
    rec.add("other/slow", "other", _BlockingPayload(started, release), values=False)
    rec.end_step()  # step 0: the writer thread takes it and stalls
    assert started.wait(10)
    t0 = time.monotonic()
    for s in range(1, 6):  # step 1 waits in the queue; steps 2-5 find it full
        rec.record("losses/loss", float(s), collection="losses", step=s)
    rec.end_step()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0  # a full queue costs a step at most 0.1 s
    release.set()
    rec.close()
    run = open_run(uri)
    assert run.steps().global_step.tolist() == [0, 1]
    assert run.lost == {0: {"lost_steps": [], "dropped_steps": [[2, 5]]}}


@pytest.mark.parametrize("store_process", [False, True], ids=["in-process store", "store process"])
def test_a_slow_store_write_holds_up_neither_the_writer_nor_training(local_dir: str, store_process: bool) -> None:
    """While a batch is being written (here a write held for a while, as a slow S3 request or
    a long flush would), the writer goes on resolving the steps that follow: the queue does
    not fill, and no step is dropped."""
    uri = os.path.join(local_dir, f"slow-store-{store_process}")
    rec = Recorder(uri, config=CaptureConfig(queue_size=2, flush_seconds=0.05, store_process=store_process))
    writer = rec.writer
    assert writer.wait_ready(60)
    store = writer._store
    assert store is not None
    entered, release = threading.Event(), threading.Event()
    write_batch = store.write_batch

    def held_write_batch(*args: Any) -> Any:
        entered.set()
        release.wait(30)
        return write_batch(*args)

    store.write_batch = held_write_batch  # type: ignore[method-assign]
    rec.record("losses/loss", 0.0, collection="losses", step=0)
    rec.end_step()
    assert entered.wait(10)  # the first batch's write is held from here on
    for s in range(1, 41):
        rec.record("losses/loss", float(s), collection="losses", step=s)
        rec.end_step()
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while writer._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer._queue.qsize() == 0 and not writer.dropped_steps  # resolved while the write waits
    release.set()
    rec.close()
    run = open_run(uri)
    assert run.steps().global_step.tolist() == list(range(41))
    assert run.lost == {} and run.errors == []
    np.testing.assert_array_equal(run.stats("losses/loss").field("max"), np.arange(41.0))


# ---------------------------------------------------------------------------------- imports


def test_import_capture_stays_light() -> None:
    code = "import json, sys, trainaudit.capture; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    mods = json.loads(out.stdout)
    heavy = ("prefect", "dask", "distributed", "torch", "xgboost", "trainaudit.reports", "trainaudit.flows",
             "trainaudit.tasks", "pandas")
    loaded = [m for m in mods if any(m == h or m.startswith(h + ".") for h in heavy)]
    assert loaded == []
    assert "trainaudit.capture" in mods
