"""The background writer: turns queued step records into a committed run on a store.

The training thread only calls :meth:`RunWriter.submit`, which never blocks for long and never
raises. A writer thread batches records (``flush_steps`` / ``flush_seconds``), resolves their
payloads (computes statistics, copies values to host), writes chunks, and then commits: the
rank's commit record (``_format.RANK_ATTR``) is rewritten last, so readers only see steps whose
data is complete. A write that keeps failing after ``retries`` attempts with backoff is given
up: its steps are recorded as lost in the commit record, and capture goes on.

The zarr side (opening, writing a batch, rewriting the commit record) is a
:class:`._run_store.RunStore`, which for local and ``s3://`` runs lives in a store process of
its own (:mod:`._store_process`), so a flush's zarr Python does not hold this process's GIL.
The writer thread makes its store calls through a :class:`._flusher.Flusher`, so it goes on
resolving steps while a batch is written.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import queue
import socket
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import numpy as np

from . import _format as F
from ._compat import HAS_FAST_STATS, fast_stats_many, lower_thread_priority, yield_gil
from ._config import CaptureConfig
from ._flusher import Flusher
from ._run_store import ResolvedStep, RunStore
from ._store_process import StoreProcess, StoreProcessGone

__all__ = ["Payload", "NumpyPayload", "StepItem", "StepRecord", "RunWriter"]

log = logging.getLogger("trainaudit.capture")

MAX_ERRORS_KEPT = 200
HEARTBEAT_SECONDS = 15.0
#: How often the writer looks for a stop request (``control`` group), flush or not.
STOP_POLL_SECONDS = 2.0
#: Values waiting for a flush beyond this many bytes start one early: memory stays bounded
#: however large the model and however long ``flush_seconds``.
MAX_PENDING_VALUE_BYTES = 64 << 20

#: The writer's per-payload Python on a step (its passes over the tensors that take that path:
#: gathering buffers, resolving) is cut into pieces of this many tensors, with the GIL
#: handed over between them (``_compat.yield_gil``: releasing and retaking it at once would not
#: let a waiting thread in). The training thread takes the GIL at moments of PyTorch's choosing,
#: a backward pass several times (to free saved tensors that have Python objects), and waits
#: for whichever piece the writer is running: pieces of tens of microseconds, not whole steps.
#: (The PyTorch hook's batches, which read most of a step's tensors in bulk, ``ResolvedRows``,
#: hand the GIL over in the same way in their loops: a model of hundreds of modules makes
#: batches of hundreds of tensors.)
GIL_YIELD_ITEMS = 8
GIL_YIELD_SECONDS = 20e-6
#: Steps a writer in hold mode (:meth:`RunWriter.hold_steps`) keeps before handing the oldest
#: over anyway: a loop of optimizer steps without forward passes never waits on a release.
MAX_HELD_STEPS = 2


class Payload(Protocol):
    """What a hook hands the writer for one tensor at one step.

    ``resolve`` runs on the writer thread and returns the statistics (``F.N_STATS`` float64)
    and, when ``want_values``, the values as a numpy array.
    """

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]: ...


class NumpyPayload:
    """A payload that already lives on the host as a numpy array (copied at submission).

    ``record()`` and the XGBoost callback hand the writer a dozen of these a round, mostly
    numbers: a number's statistics are written down directly, and an array's join the step's
    one call of the C pass (``stats_buffer``), instead of numpy's dozen calls of Python each
    (the writer holds the GIL for those; in XGBoost's short rounds they were most of its work).
    """

    __slots__ = ("array", "_stats")

    def __init__(self, value: Any) -> None:
        self.array = np.array(value, copy=True)
        self._stats: np.ndarray | None = None

    def stats_buffer(self) -> np.ndarray | None:
        """The float32/float64 array whose statistics this payload needs, for the writer's
        batched C call; None for a number, an empty array or a dtype that is not numeric."""
        a = self.array
        if self._stats is not None or a.ndim == 0 or a.size == 0 or not HAS_FAST_STATS:
            return None
        kind = a.dtype.kind
        if kind == "f" and a.dtype.itemsize in (4, 8):
            return np.ascontiguousarray(a).reshape(-1)
        if kind in "fiub":  # float16, integers, bools: measured in float64, as numpy_stats does
            return a.reshape(-1).astype(np.float64)
        return None

    def set_stats(self, stats: np.ndarray) -> None:
        self._stats = np.asarray(stats, dtype=np.float64)

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        stats = self._stats
        if stats is None:
            a = self.array
            stats = F.scalar_stats(float(a)) if a.ndim == 0 and a.dtype.kind in "fiub" else F.numpy_stats(a)
        return stats, (self.array if want_values else None)


@dataclass(slots=True)
class StepItem:
    name: str
    collection: str
    payload: Payload | None  # None once resolved: the snapshot is released
    values: bool
    meta: Mapping[str, Any] | None = None


@dataclass(slots=True)
class StepRecord:
    global_step: int
    mode: str
    mode_step: int
    time: float
    items: list[StepItem] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    #: Set by the writer thread as soon as the record arrives: statistics computed, snapshots
    #: released, so steps waiting for the next flush hold numbers, not tensor copies.
    resolved: ResolvedStep | None = None

    def put(self, item: StepItem) -> None:
        """Add ``item``; a tensor recorded twice in one step keeps its last value (gradient
        accumulation: the accumulated gradient, the last micro-batch's outputs)."""
        i = self.index.get(item.name)
        if i is None:
            self.index[item.name] = len(self.items)
            self.items.append(item)
        else:
            self.items[i] = item

    def drop(self, name: str) -> None:
        """Forget ``name``'s item (it is recorded again another way: see ReferenceBatch)."""
        i = self.index.pop(name, None)
        if i is not None:
            self.items[i] = StepItem(name, "other", None, False)


class ResolvedRows(NamedTuple):
    """What a step item that stands for many tensors (the PyTorch hook's batches) resolves to
    by itself, through its ``resolve_rows()``: the statistics of most of them as one array,
    and the rest as items for the writer's per-payload path.

    A payload object and three method calls per tensor cost the writer ~30 us of Python a
    tensor beside training (out of cache), holding the GIL that the training thread's backward
    pass keeps asking for; a batch that reads its tensors' memory in one C call and checks
    their version counters in one loop costs about half of that.
    """

    names: list[str]
    #: ``(collection, meta)`` of each name, for the run's tensor list.
    kinds: list[tuple[str, Mapping[str, Any] | None]]
    #: ``(len(names), F.N_STATS)`` float64.
    stats: np.ndarray
    #: The tensors the batch could not do in bulk (values due, other dtypes, device payloads).
    rest: list[StepItem]
    #: ``(name, message)`` of the tensors left out (changed in place before the read).
    errors: list[tuple[str, str]]


_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def _close_open_writers() -> None:
    for w in list(_OPEN_WRITERS):
        w.close(reason="closed at interpreter exit")


def _register_exit_hook() -> None:
    """Close open writers when the interpreter exits, while they can still write.

    ``atexit`` is too late: before it runs, ``threading`` shuts down the thread pools that
    zarr's local and remote stores write through ("cannot schedule new futures after
    interpreter shutdown"), and the last steps would be lost. ``threading``'s own exit hooks
    run before that, last registered first; registering after ``concurrent.futures.thread``
    (imported here for that reason) puts ours ahead of its pool shutdown.
    """
    import concurrent.futures.thread  # noqa: F401  (its exit hook must be registered before ours)

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - not CPython
        atexit.register(_close_open_writers)
    else:
        register(_close_open_writers)


_register_exit_hook()


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while the writer works on the store (each
    attempt of a write or commit; reference counting goes on).

    A flush makes thousands of short-lived objects in zarr and asyncio. Any collection that
    runs meanwhile finds them alive and promotes them, and once enough objects have been
    promoted CPython runs a full collection over every object of the process, torch's and the
    user's included: measured on the benchmark's MLP, one of ~280 ms every ~1000 steps, holding
    the GIL that training waits for (0.34 ms a step on average; 0.015 ms with the pause). The
    pause is process-wide, so it is kept to the store operations (an attempt against an
    unreachable S3 endpoint can last until its timeout, not through the retries' waits), and a
    collector the program disabled itself stays disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class RunWriter:
    """Owns one rank's group of a run; all store I/O happens on its thread.

    Args:
        uri: the run's URI (local path, ``file://``, ``s3://``, ``memory://``).
        framework: ``pytorch``, ``xgboost`` or ``generic``; stored in the run.
        config: the capture configuration (stored in the run's attributes).
        rank: this process's rank; each rank writes its own group.
        run_id: defaults to the last part of the URI.
        storage_options: passed to s3fs / fsspec.
    """

    def __init__(
        self,
        uri: str,
        *,
        framework: str = "generic",
        config: CaptureConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        run_id: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri = F.normalize_uri(uri)
        self.framework = framework
        self.config = config or CaptureConfig()
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.run_id = run_id or self.uri.rstrip("/").rsplit("/", 1)[-1]
        self.storage_options = dict(storage_options or {})
        self._extra_attrs = dict(extra_attrs or {})
        # A SimpleQueue (C, no condition variables: a put costs the training thread ~0.4 us
        # uncontended, a bounded queue.Queue's ~3 us), bounded by _put's own check.
        self._queue: queue.SimpleQueue[StepRecord | None] = queue.SimpleQueue()
        self._queue_size = self.config.queue_size
        #: Submitted steps not yet handed to the writer thread (see :meth:`hold_steps`).
        self._held: list[StepRecord] = []
        self._holding = False
        self._closed = False
        self._close_lock = threading.Lock()
        self.stop_requested = False
        self.stop_reason: str | None = None
        # Counters the training thread may read; written by the writer thread (or on drops).
        self.errors: list[dict[str, Any]] = []
        self.n_errors = 0
        self._errors_lock = threading.Lock()
        self.lost_steps: list[list[int]] = []
        self.dropped_steps: list[list[int]] = []
        self._drop_lock = threading.Lock()
        self._started = datetime.now(UTC).isoformat()
        #: The collection and metadata of every tensor name resolved so far (its first step's).
        self._seen: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
        #: Names whose kind the store was told.
        self._told: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
        #: The store side: a StoreProcess, or a RunStore in this process (see _make_store).
        self._store: RunStore | StoreProcess | None = None
        self._opened = False
        self._noted_store_exit = False
        self._last_commit = 0.0
        self.commits = 0  # commits made (for tests and benchmarks: a flush that wrote, or a heartbeat)
        #: Set when this rank already held committed steps (resumed training): the next
        #: ``(global_step, {mode: mode_step})`` to use, so step numbers continue.
        self.resume_from: tuple[int, dict[str, int]] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"trainaudit-writer-{self.run_id}-r{self.rank}", daemon=True
        )
        _OPEN_WRITERS.add(self)
        self._thread.start()

    # ------------------------------------------------------------------ training-thread API
    def hold_steps(self) -> None:
        """From now on, keep submitted steps on the training side until :meth:`release`.

        The writer thread needs the GIL for its Python work on each step (~0.5 ms for a few
        dozen tensors), and every stretch it holds the GIL is a stretch the training thread,
        which wants the GIL between every two operations of a forward pass, waits. The
        PyTorch hook therefore holds each step back and releases it when the next backward
        pass begins: the writer then works while autograd runs in C++ without the GIL.
        At most :data:`MAX_HELD_STEPS` wait; :meth:`flush` and :meth:`close` release them.
        """
        self._holding = True

    @property
    def holding_steps(self) -> bool:
        """Whether any submitted step waits for :meth:`release`."""
        return bool(self._held)

    def release(self) -> None:
        """Hand the held steps to the writer thread."""
        held, self._held = self._held, []
        for record in held:
            self._put(record)

    def submit(self, record: StepRecord) -> bool:
        """Queue ``record`` for writing. Never raises; returns False when it was dropped
        (writer closed, or the queue stayed full for 0.1 s), which is recorded in the run."""
        if self._closed:
            return False
        if self._holding:
            self._held.append(record)
            if len(self._held) > MAX_HELD_STEPS:  # no forward pass for a while: don't wait
                return self._put(self._held.pop(0))
            return True
        return self._put(record)

    def _put(self, record: StepRecord) -> bool:
        try:
            if self._queue.qsize() >= self._queue_size and not self._wait_for_room(0.1):
                with self._drop_lock:
                    _add_to_ranges(self.dropped_steps, record.global_step)
                return False
            self._queue.put(record)
            return True
        except Exception:  # pragma: no cover - defensive: capture never crashes training
            return False

    def _wait_for_room(self, timeout: float) -> bool:
        """Whether the queue gets below its size within ``timeout`` seconds (polled: a full
        queue is the rare case of a writer thread that fell behind)."""
        deadline = time.monotonic() + timeout
        while self._queue.qsize() >= self._queue_size:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything submitted so far is written (or given up)."""
        if self._closed:
            return
        self.release()
        done = threading.Event()
        self._submit_marker(done)
        done.wait(timeout)

    def close(self, *, reason: str | None = None, timeout: float = 120.0) -> None:
        """Flush, mark this rank ``complete`` and stop the writer thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close_reason = reason
        self.release()
        self._queue.put(None)
        self._thread.join(timeout)
        _OPEN_WRITERS.discard(self)

    # ------------------------------------------------------------------ writer thread
    def _submit_marker(self, event: threading.Event) -> None:
        marker = StepRecord(global_step=-1, mode="train", mode_step=-1, time=0.0)
        marker.items.append(StepItem(name="", collection="other", payload=_Marker(event), values=False))
        self._queue.put(marker)

    def _run(self) -> None:
        lower_thread_priority()
        try:
            self._with_retries(self._open_store, what="open the run")
        except Exception as exc:  # the store is unusable: keep draining so training goes on
            self._record_error("open", f"could not open the run for writing: {exc}")
        self._ready.set()
        # From here on the store is called on the flusher's thread only (see _flusher).
        flusher = Flusher(f"trainaudit-store-{self.run_id}-r{self.rank}")
        pending: list[StepRecord] = []
        pending_bytes = 0
        last_flush = last_poll = time.monotonic()
        cfg = self.config
        while True:
            now = time.monotonic()
            timeout = max(0.05 if flusher.busy else 0.01,
                          min(cfg.flush_seconds - (now - last_flush), STOP_POLL_SECONDS - (now - last_poll)))
            rec: Any
            try:
                rec = self._queue.get(timeout=timeout)
            except queue.Empty:
                rec = _TIMEOUT
            closing = rec is None
            markers: list[threading.Event] = []
            if isinstance(rec, StepRecord):
                if rec.global_step == -1 and rec.items and isinstance(rec.items[0].payload, _Marker):
                    markers.append(rec.items[0].payload.event)
                else:
                    rec.resolved = self._resolve(rec)
                    rec.items, rec.index = [], {}
                    pending.append(rec)
                    pending_bytes += rec.resolved.value_bytes
            must = closing or markers or pending_bytes >= MAX_PENDING_VALUE_BYTES or len(pending) >= 2 * cfg.flush_steps
            due = must or len(pending) >= cfg.flush_steps or time.monotonic() - last_flush >= cfg.flush_seconds
            if due and (must or not flusher.busy):
                # While the last batch is still being written, steps wait for the next one,
                # unless they must go now: memory stays bounded (at most one batch of values
                # being written and one waiting), and flush() and close() write everything.
                flusher.wait()
                if pending or time.monotonic() - self._last_commit > HEARTBEAT_SECONDS or closing:
                    flusher.start(self._flush, pending, closing)
                pending, pending_bytes = [], 0
                last_flush = last_poll = time.monotonic()
                flusher.start(self._poll_stop)
            elif time.monotonic() - last_poll >= STOP_POLL_SECONDS and not flusher.busy:
                flusher.start(self._poll_stop)
                last_poll = time.monotonic()
            for ev in markers:
                flusher.start(ev.set)  # after the flush above
            if closing:
                flusher.start(self._close_store)
                flusher.stop()
                return

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()

    def _open_store(self) -> None:
        """Start the store (a store process, unless the run is ``memory://`` or the config
        says no), open the run, resume this rank's committed data if it has any, commit."""
        if self._store is None:
            self._store = self._make_store()
        if not self._opened:  # (a retry after a failed first commit does not open twice)
            opened = self._store.open({
                "format_version": F.FORMAT_VERSION,
                "run_id": self.run_id,
                "framework": self.framework,
                "created": self._started,
                "world_size": self.world_size,
                "config": self.config.to_dict(),
                **self._extra_attrs,
            })
            if opened.previous is not None:  # resumed training: its errors and losses go on
                prev = opened.previous
                self.errors = list(prev["errors"]) + self.errors
                self.n_errors += int(prev["n_errors"])
                self.lost_steps = [list(r) for r in prev["lost_steps"]] + self.lost_steps
                with self._drop_lock:
                    self.dropped_steps = [list(r) for r in prev["dropped_steps"]] + self.dropped_steps
                self.resume_from = opened.resume_from
            self._opened = True
        self._commit(status="running")

    def _make_store(self) -> RunStore | StoreProcess:
        if self.config.store_process and not self.uri.startswith("memory://"):
            try:
                return StoreProcess(self.uri, rank=self.rank, storage_options=self.storage_options)
            except StoreProcessGone as exc:
                log.warning("trainaudit: %s; writing %s from the training process", exc, self.uri)
        return RunStore(self.uri, rank=self.rank, storage_options=self.storage_options)

    @property
    def committed_steps(self) -> int:
        """Steps written and published by the last commit (or about to be, mid-flush)."""
        return self._store.committed_steps if self._store is not None else 0

    @property
    def committed_stats(self) -> int:
        return self._store.committed_stats if self._store is not None else 0

    @property
    def store_pid(self) -> int | None:
        """The store process's pid (None when the store is in this process)."""
        store = self._store
        return store.pid if isinstance(store, StoreProcess) and store.fallback is None else None

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the writer thread has opened (or failed to open) the run."""
        return self._ready.wait(timeout)

    def _flush(self, pending: list[StepRecord], final: bool) -> None:
        """Write ``pending`` and commit (on the flusher's thread); ``final`` marks the run
        ``complete``. Never raises: what could not be written is recorded."""
        if not self._opened:
            # The run never opened: try again, else everything pending is lost.
            try:
                self._with_retries(self._open_store, what="open the run")
            except Exception as exc:
                for rec in pending:
                    _add_to_ranges(self.lost_steps, rec.global_step)
                self._record_error("write", f"steps lost, the store is unreachable: {exc}")
                return
        batch = [r.resolved if r.resolved is not None else self._resolve(r) for r in pending]
        status = "complete" if final else "running"
        written = False
        first, last = (pending[0].global_step, pending[-1].global_step) if pending else (None, None)
        try:
            self._with_retries(lambda: self._write_batch(pending, batch), what="write steps")
            written = True
            self._with_retries(lambda: self._commit(status=status), what="commit steps")
        except Exception as exc:
            if written:
                # The chunks are in the store and the counts advanced: the next commit that
                # gets through publishes these steps, so they are not lost.
                self._record_error("write", f"could not commit steps {first}-{last} yet: {exc}")
                if not final:
                    return
                try:
                    self._commit(status=status)
                except Exception:
                    log.warning("trainaudit: could not mark run %s complete", self.uri)
                return
            for rec in pending:
                _add_to_ranges(self.lost_steps, rec.global_step)
            self._record_error("write", f"steps {first}-{last} lost after {self.config.retries} attempts: {exc}")
            if final:  # still try to leave the run marked closed with the loss recorded
                try:
                    self._commit(status=status)
                except Exception:
                    log.warning("trainaudit: could not mark run %s complete", self.uri)

    def _resolve(self, rec: StepRecord) -> ResolvedStep:
        """Compute every payload's statistics / host values; a bad payload is recorded and
        skipped, never raised. The snapshots are released now, not at the flush.

        An item whose payload stands for many tensors (it has a ``resolve_rows()``, like the
        PyTorch hook's batches) resolves most of them itself (:class:`ResolvedRows`); every
        other payload, and what such an item leaves over, goes one by one, their statistics
        computed in one C call first (:meth:`_batch_stats`).
        """
        parts: list[ResolvedRows | StepItem] = []
        singles: list[StepItem] = []
        for item in rec.items:
            payload = item.payload
            if payload is None:
                continue  # dropped (StepRecord.drop)
            resolve_rows = getattr(payload, "resolve_rows", None)
            if resolve_rows is None:
                parts.append(item)
                singles.append(item)
                continue
            item.payload = None
            try:
                rows = resolve_rows()
            except Exception as exc:
                self._record_error("tensor", f"{item.name!r} at step {rec.global_step}: {exc}", tensor=item.name)
                continue
            parts.append(rows)
            singles += rows.rest
        self._batch_stats(singles)
        names: list[str] = []
        blocks: list[np.ndarray] = []
        rows_of_singles: list[np.ndarray] = []
        values: list[tuple[int, str, np.ndarray]] = []  # (position in names, name, values)
        seen = self._seen
        done = 0
        for part in parts:
            for item in part.rest if isinstance(part, ResolvedRows) else (part,):
                done += 1
                if done % GIL_YIELD_ITEMS == 0:
                    yield_gil(GIL_YIELD_SECONDS)
                try:
                    if item.payload is not None:
                        stats, vals = item.payload.resolve(item.values)
                        if item.name not in seen:
                            seen[item.name] = (item.collection, item.meta)
                        names.append(item.name)
                        rows_of_singles.append(stats)
                        if vals is not None:
                            values.append((len(names) - 1, item.name, vals))
                except Exception as exc:
                    self._record_error("tensor", f"{item.name!r} at step {rec.global_step}: {exc}", tensor=item.name)
                item.payload = None
            if isinstance(part, ResolvedRows):
                for name, message in part.errors:
                    self._record_error("tensor", f"{name!r} at step {rec.global_step}: {message}", tensor=name)
                if rows_of_singles:
                    blocks.append(np.array(rows_of_singles, dtype=np.float64))
                    rows_of_singles = []
                for name, kind in zip(part.names, part.kinds, strict=True):
                    if name not in seen:
                        seen[name] = kind
                names += part.names
                blocks.append(part.stats)
        if rows_of_singles:
            blocks.append(np.array(rows_of_singles, dtype=np.float64))
        stats_block = np.concatenate(blocks) if blocks else np.empty((0, F.N_STATS), dtype=np.float64)
        if len(set(names)) < len(names):
            # A name both in a batch and on its own (a number recorded under a name a hook
            # passed by reference): the last one recorded wins, as in StepRecord.put.
            last = {name: i for i, name in enumerate(names)}
            keep = [i for i, name in enumerate(names) if last[name] == i]
            names = [names[i] for i in keep]
            stats_block = stats_block[keep]
            values = [v for v in values if last[v[1]] == v[0]]
        return ResolvedStep(names, stats_block, [(name, v) for _, name, v in values])

    def _batch_stats(self, items: list[StepItem]) -> None:
        """Statistics of every payload of a step that offers a float buffer, in one call to
        the C extension: the GIL changes hands once per step, not once per tensor."""
        bufs: list[np.ndarray] = []
        owners: list[Any] = []
        seen: set[int] = set()
        for i, item in enumerate(items, 1):
            if i % GIL_YIELD_ITEMS == 0:
                yield_gil(GIL_YIELD_SECONDS)
            get = getattr(item.payload, "stats_buffer", None)
            if get is None or id(item.payload) in seen:
                continue
            seen.add(id(item.payload))
            try:
                buf = get()
            except Exception:
                continue  # resolve() reports it
            if buf is not None:
                bufs.append(buf)
                owners.append(item.payload)
        if not bufs:
            return
        try:
            results = fast_stats_many(bufs)
        except Exception:
            return  # each payload computes its own
        for payload, stats in zip(owners, results or [], strict=False):
            payload.set_stats(stats)

    def _write_batch(self, pending: list[StepRecord], batch: list[ResolvedStep]) -> None:
        """Write one batch of steps through the store (:meth:`RunStore.write_batch`)."""
        assert self._store is not None
        if not pending:
            return
        steps = np.array([[r.global_step, F.mode_code(r.mode), r.mode_step] for r in pending], dtype=np.int64)
        times = np.array([r.time for r in pending], dtype=np.float64)
        # The collection and metadata of names the store has not been told about yet.
        # (Consecutive steps mostly hold the same names: each run of equal lists is looked at once.)
        kinds = {}
        told = self._told
        last: list[str] | None = None
        for resolved in batch:
            if resolved.names != last:
                last = resolved.names
                for name in last:
                    if name not in told:
                        kinds[name] = self._seen[name]
        problems = self._store.write_batch(steps, times, batch, kinds)
        told.update(kinds)
        for kind, message, tensor in problems:
            self._record_error(kind, message, tensor=tensor)

    def _commit(self, *, status: str) -> None:
        assert self._store is not None
        with self._drop_lock:
            dropped = [list(r) for r in self.dropped_steps]
        with self._errors_lock:
            n_errors, errors = self.n_errors, self.errors[-MAX_ERRORS_KEPT:]
        part: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self._started,
            "heartbeat": time.time(),
            "n_errors": n_errors,
            "errors": errors,
            "lost_steps": self.lost_steps,
            "dropped_steps": dropped,
        }
        if status == "complete" and getattr(self, "_close_reason", None):
            part["close_reason"] = self._close_reason
        note = getattr(self._store, "exit_note", None)
        if note is not None and not self._noted_store_exit:
            self._noted_store_exit = True
            self._record_error("store", f"the store process ended ({note}); the training process writes the run "
                               "from then on (steps written after its last commit were written again)")
            with self._errors_lock:
                part["n_errors"], part["errors"] = self.n_errors, self.errors[-MAX_ERRORS_KEPT:]
        self._store.commit(status, part)
        self._last_commit = time.monotonic()
        self.commits += 1

    def _poll_stop(self) -> None:
        """Notice a stop request a watcher wrote into the run (``control`` group)."""
        if not self._opened or self.stop_requested or self._store is None:
            return
        try:
            with cyclic_gc_paused():
                reason = self._store.poll_stop()
        except Exception:
            return  # the store is unreachable now: the next poll tries again
        if reason is not None:
            self.stop_reason = reason
            self.stop_requested = True

    def _with_retries(self, fn: Any, *, what: str) -> Any:
        delay = 0.2
        for attempt in range(1, self.config.retries + 1):
            try:
                with cyclic_gc_paused():  # each store operation; not the back-off sleeps
                    return fn()
            except Exception as exc:
                if attempt == self.config.retries:
                    raise
                log.warning("trainaudit: could not %s (attempt %d): %s", what, attempt, exc)
                time.sleep(delay)
                delay *= 2
        return None  # pragma: no cover

    def _record_error(self, kind: str, message: str, **extra: Any) -> None:
        """Record a capture error (from the writer thread or the flusher's)."""
        log.warning("trainaudit capture error (%s): %s", kind, message)
        err = {"time": time.time(), "rank": self.rank, "kind": kind, "message": message, **extra}
        if kind == "internal":
            err["traceback"] = traceback.format_exc(limit=5)
        with self._errors_lock:
            self.n_errors += 1
            self.errors.append(err)


class _Marker:
    """A queue entry that asks the writer thread to flush now and signal ``event``."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:  # pragma: no cover
        raise RuntimeError("markers are never resolved")


_TIMEOUT = object()

def _add_to_ranges(ranges: list[list[int]], step: int) -> None:
    """Add ``step`` to sorted inclusive ``[first, last]`` ranges (steps arrive in order)."""
    if ranges and ranges[-1][1] + 1 >= step >= ranges[-1][0]:
        ranges[-1][1] = max(ranges[-1][1], step)
    else:
        ranges.append([step, step])


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
