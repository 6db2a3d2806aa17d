"""A :class:`._run_store.RunStore` in a process of its own, so a flush's zarr work does not
hold the training process's GIL.

A flush of the writer is ~150 zarr operations for a model of a few dozen tensors: a quarter of a
second of Python on zarr's event loop and thread pool every few seconds. In the training
process every stretch of it holds the GIL that the training thread asks for between two
operations of its forward pass, and training stalled for about as long as the flush ran
(docs/BENCHMARKS.md, "Eighth look"). Here the writer thread only pickles the resolved steps
(their arrays out of band, written to a pipe without a copy) and waits for the reply with the
GIL released; the store process, a fresh interpreter that imports zarr and numpy but not torch,
does the zarr work on the other core.

The protocol is one request, one reply: ``(method, args)`` in, ``("ok", result, counts)`` or
``("error", message)`` out. The writer keeps the retries, the error accounting and the commit
order (data first, then the commit record), exactly as with a store in its own process.

If the training process dies (even ``kill -9``), the store process reads the end of its pipe
and exits without committing anything more: the run reads ``incomplete``, its committed steps
intact. If the store process dies, :class:`StoreProcess` goes on with a ``RunStore`` in the
training process (reopening the run from its last commit) and says so in the run's errors.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from ._compat import lower_thread_priority
from ._run_store import Opened, RunStore

__all__ = ["StoreProcess", "StoreProcessGone", "main"]

log = logging.getLogger("trainaudit.capture")

#: How long a new store process may take to start and import zarr before the writer gives up
#: on it and keeps its store in the training process.
START_TIMEOUT_SECONDS = 60.0


class StoreProcessGone(RuntimeError):
    """The store process ended (or never started); the call did not run there."""


def send(conn: Connection, obj: Any) -> None:
    """Pickle ``obj`` with its large buffers (numpy arrays) out of band: they go to the pipe as
    they are, by ``os.write`` calls that release the GIL, with no copy into the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(struct.pack("<Q", len(buffers)) + head)
    for buf in buffers:
        conn.send_bytes(buf.raw())


def receive(conn: Connection) -> Any:
    first = conn.recv_bytes()
    (n,) = struct.unpack_from("<Q", first)
    # bytearray: arrays rebuilt from it are writable, as the writer's own arrays were.
    buffers = [bytearray(conn.recv_bytes()) for _ in range(n)]
    return pickle.loads(memoryview(first)[8:], buffers=buffers)


class StoreProcess:
    """The four calls of :class:`RunStore`, run in a store process.

    Args: as :class:`RunStore`.

    Raises:
        StoreProcessGone: the process could not be started (the caller keeps its store
            in-process instead).
    """

    def __init__(self, uri: str, *, rank: int, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.rank = int(rank)
        self.storage_options = dict(storage_options or {})
        self.committed_steps = 0
        self.committed_stats = 0
        #: Set when the store process died and the calls went back in-process.
        self.fallback: RunStore | None = None
        self.exit_note: str | None = None
        self._root_record: Mapping[str, Any] | None = None
        #: The batches written since the last commit: if the process dies before the next
        #: commit, the in-process store writes them again (its counts start from that commit).
        self._unpublished: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from trainaudit.capture._store_process import main; main()",
                 str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as exc:
            for fd in (to_child_r, from_child_w, self._to_child_w, self._from_child_r):
                os.close(fd)
            raise StoreProcessGone(f"could not start a store process: {exc}") from exc
        os.close(to_child_r)
        os.close(from_child_w)
        self._out = Connection(self._to_child_w, readable=False)
        self._in = Connection(self._from_child_r, writable=False)
        try:
            ready = self._in.poll(START_TIMEOUT_SECONDS) and self._in.recv_bytes() == b"ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop()
            raise StoreProcessGone("the store process did not start (could it import trainaudit?)")
        self._call("init", uri, self.rank, self.storage_options)

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    # ------------------------------------------------------------------ RunStore's calls
    def open(self, root_record: Mapping[str, Any]) -> Opened:
        self._root_record = dict(root_record)
        previous, resume_from = self._call("open", self._root_record)
        return Opened(previous, resume_from)

    def write_batch(self, steps: Any, times: Any, batch: list[Any], kinds: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        return self._call("write_batch", steps, times, batch, dict(kinds))  # type: ignore[no-any-return]

    def commit(self, status: str, writer_part: Mapping[str, Any]) -> None:
        self._call("commit", status, dict(writer_part))

    def poll_stop(self) -> str | None:
        return self._call("poll_stop")  # type: ignore[no-any-return]

    def close(self) -> None:
        """End the store process (after the writer's last commit)."""
        if self.fallback is None:
            self._stop()

    # ------------------------------------------------------------------ internals
    def _call(self, method: str, *args: Any) -> Any:
        if self.fallback is not None:
            return self._local(method, *args)
        with self._lock:
            try:
                send(self._out, (method, args))
                reply = receive(self._in)
            except (EOFError, OSError) as exc:
                self._gone(exc)
                raise StoreProcessGone(f"the store process ended ({self.exit_note}) during {method}") from exc
        if reply[0] == "error":
            raise RuntimeError(reply[1])
        _, result, (self.committed_steps, self.committed_stats) = reply
        if method == "write_batch":
            self._unpublished.append(args)
        elif method == "commit":
            self._unpublished = []
        return result

    def _gone(self, exc: BaseException) -> None:
        """The store process died: go on with a store in this process, reopened from the
        run's last commit (what a dead process wrote after it is written again)."""
        self._stop()
        code = self._proc.returncode
        self.exit_note = f"exit code {code}" if code is not None else f"{type(exc).__name__}"
        log.warning("trainaudit: the store process of %s ended (%s); writing from the training process",
                    self.uri, self.exit_note)
        # Opened at its first call (and again at the next one, if that fails).
        self.fallback = RunStore(self.uri, rank=self.rank, storage_options=self.storage_options)

    def _local(self, method: str, *args: Any) -> Any:
        local = self.fallback
        assert local is not None
        if not local.opened and method != "open" and self._root_record is not None:
            local.open(self._root_record)
        if self._unpublished and local.opened:
            for batch in self._unpublished:
                local.write_batch(*batch)
            self._unpublished = []
        result = getattr(local, method)(*args)
        self.committed_steps, self.committed_stats = local.committed_steps, local.committed_stats
        return result

    def _stop(self) -> None:
        for conn in ("_out", "_in"):
            c = getattr(self, conn, None)
            if c is not None:
                try:
                    c.close()
                except OSError:
                    pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    """The store process: serve one writer's calls until its pipe closes."""
    # Ctrl-C in a terminal reaches the whole process group: the store process goes on until
    # the writer, which may still be flushing the last steps, closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As the writer's threads: when the CPUs are busy, training (and the capture threads it
    # waits for) run first. Threads zarr starts later inherit this.
    lower_thread_priority()
    read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    conn_in = Connection(read_fd, writable=False)
    conn_out = Connection(write_fd, readable=False)
    conn_out.send_bytes(b"ready")
    store: RunStore | None = None
    while True:
        try:
            method, args = receive(conn_in)
        except (EOFError, OSError):
            return  # the writer closed (or its process died): commit nothing more
        try:
            if method == "init":
                store = RunStore(args[0], rank=args[1], storage_options=args[2])
                result: Any = None
            else:
                assert store is not None, "init first"
                result = getattr(store, method)(*args)
            reply: Any = ("ok", tuple(result) if isinstance(result, Opened) else result,
                          (store.committed_steps, store.committed_stats) if store is not None else (0, 0))
        except Exception as exc:
            reply = ("error", str(exc) or type(exc).__name__)
        try:
            send(conn_out, reply)
        except (EOFError, OSError):
            return
