"""Reading a run: ``open_run(uri)`` for audits, notebooks and custom analysis.

Readers see committed data only: the counts in each rank's commit record bound every array
read, whatever the writer has put beyond them. Values come as numpy arrays (one step, or a
block of value rows) or as a lazy dask array across steps (dask is imported only then).
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _format as F
from ._errors import (
    CorruptRunError,
    FormatVersionError,
    NotARunError,
    RunNotFoundError,
    StoreUnavailableError,
)

__all__ = ["open_run", "Run", "TensorInfo", "StepTable", "TensorStats"]

#: A run whose writer has not committed for this long (and whose process is not known to be
#: alive) reads as ``incomplete``.
DEFAULT_STALE_AFTER = 300.0


@dataclass(frozen=True)
class StepTable:
    """The committed steps of one rank, as parallel numpy arrays."""

    global_step: np.ndarray
    mode: np.ndarray
    mode_step: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.global_step)


@dataclass(frozen=True)
class TensorStats:
    """Per-step statistics of one tensor (``values`` columns are ``STAT_FIELDS``)."""

    step: np.ndarray
    mode: np.ndarray
    mode_step: np.ndarray
    values: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.step)

    def field(self, name: str) -> np.ndarray:
        """One statistic across steps, e.g. ``stats.field("l1")``; also the derived
        ``finite``, ``mean``, ``var`` and ``l2``."""
        v = self.values
        col = F.STAT
        if name in col:
            return v[:, col[name]]
        finite = v[:, col["count"]] - v[:, col["nan"]] - v[:, col["posinf"]] - v[:, col["neginf"]]
        if name == "finite":
            return finite
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = v[:, col["sum"]] / finite
            if name == "mean":
                return mean
            if name == "var":
                return np.maximum(v[:, col["sumsq"]] / finite - mean * mean, 0.0)
        if name == "l2":
            return np.sqrt(v[:, col["sumsq"]])
        raise KeyError(f"unknown statistic {name!r}; known: {F.STAT_FIELDS + ('finite', 'mean', 'var', 'l2')}")


@dataclass(frozen=True)
class TensorInfo:
    """What the commit record says about one captured tensor."""

    name: str
    collection: str
    rank: int
    index: int
    key: str
    shape: tuple[int, ...] | None
    dtype: str | None
    meta: Mapping[str, Any]
    n_stats: int
    n_values: int
    chunk_steps: int = 0
    shard_steps: int = 0


class Run:
    """A trainaudit run opened for reading. Use :func:`open_run`."""

    def __init__(self, uri: str, root: Any, attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None, stale_after: float) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self._root = root
        self._attrs = dict(attrs)
        self.format_version: int = attrs["format_version"]
        self.run_id: str = attrs.get("run_id", uri.rsplit("/", 1)[-1])
        self.framework: str = attrs.get("framework", "generic")
        self.created: str = attrs.get("created", "")
        self.config: dict[str, Any] = attrs.get("config", {})
        self.stale_after = stale_after
        self._records: dict[int, dict[str, Any]] = {}
        self._logs: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._steps_cache: dict[int, StepTable] = {}
        self._infos: dict[int, dict[str, TensorInfo]] = {}
        with warnings.catch_warnings():
            # A writer's atomic write leaves a short-lived "zarr.json.<id>.partial" file that
            # zarr warns about while listing; it is not part of the run.
            warnings.simplefilter("ignore")
            rank_keys = sorted(root.group_keys())
        for key in rank_keys:
            r = F.parse_rank_key(key)
            if r is None:
                continue
            rec = root[key].attrs.asdict().get(F.RANK_ATTR)
            if rec is None:
                continue
            self._records[r] = rec
            self._infos[r] = {e["name"]: _info(e, r) for e in rec.get("tensors", [])}

    def __repr__(self) -> str:
        return f"<trainaudit Run {self.uri!r} {self.framework} {self.status} ranks={self.ranks}>"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    # ------------------------------------------------------------------ the run as a whole
    @property
    def ranks(self) -> list[int]:
        return sorted(self._records)

    def rank_record(self, rank: int = 0) -> dict[str, Any]:
        """The raw commit record of ``rank`` (status, heartbeat, errors, counts)."""
        return dict(self._record(rank))

    @property
    def status(self) -> str:
        """``complete`` when every rank closed cleanly; ``running`` while a writer is alive;
        ``incomplete`` when a writer stopped without closing (killed, crashed, or silent for
        longer than ``stale_after`` seconds)."""
        if not self._records:
            return "incomplete"
        states = [self._rank_status(r) for r in self._records.values()]
        if all(s == "complete" for s in states):
            return "complete"
        if any(s == "incomplete" for s in states):
            return "incomplete"
        return "running"

    def _rank_status(self, rec: Mapping[str, Any]) -> str:
        if rec.get("status") == "complete":
            return "complete"
        if rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1))):
            return "incomplete"
        if time.time() - float(rec.get("heartbeat", 0.0)) > self.stale_after:
            return "incomplete"
        return "running"

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Capture errors recorded by the writers (all ranks)."""
        return [e for r in self.ranks for e in self._records[r].get("errors", [])]

    @property
    def lost(self) -> dict[int, dict[str, list[list[int]]]]:
        """Per rank, the step ranges lost on write (store failures) or dropped (queue full)."""
        return {
            r: {"lost_steps": rec.get("lost_steps", []), "dropped_steps": rec.get("dropped_steps", [])}
            for r, rec in self._records.items()
            if rec.get("lost_steps") or rec.get("dropped_steps")
        }

    @property
    def modes(self) -> list[str]:
        seen: set[int] = set()
        for r in self.ranks:
            seen.update(np.unique(self.steps(r).mode).tolist())
        return [F.mode_name(m) for m in sorted(seen)]

    def committed_steps(self, rank: int = 0) -> int:
        return int(self._record(rank).get("committed_steps", 0))

    def steps(self, rank: int = 0) -> StepTable:
        """The committed steps of ``rank`` (read once per Run object: reopen the run to see
        steps committed later)."""
        cached = self._steps_cache.get(rank)
        if cached is not None:
            return cached
        n = self.committed_steps(rank)
        if n == 0:
            e = np.zeros(0, dtype=np.int64)
            return StepTable(e, e, e, np.zeros(0))
        g = self._rank_group(rank)
        rows = self._read(lambda: g["steps"][:n], f"rank {rank} step table")
        t = self._read(lambda: g["step_time"][:n], f"rank {rank} step times")
        table = StepTable(rows[:, 0], rows[:, 1], rows[:, 2], t)
        self._steps_cache[rank] = table
        return table

    # ------------------------------------------------------------------ tensors
    def tensors(self, collection: str | None = None, regex: str | None = None, rank: int = 0) -> list[TensorInfo]:
        """Tensors of ``rank``, filtered by collection and/or a regex on the name, in capture order."""
        pat = re.compile(regex) if regex else None
        return [
            t for t in self._infos.get(rank, {}).values()
            if (collection is None or t.collection == collection) and (pat is None or pat.search(t.name))
        ]

    def tensor(self, name: str, rank: int = 0) -> TensorInfo:
        try:
            return self._infos[rank][name]
        except KeyError:
            raise KeyError(f"run {self.uri!r} has no tensor {name!r} on rank {rank}") from None

    @property
    def collections(self) -> dict[str, int]:
        """Collection -> number of tensors captured (all ranks)."""
        out: dict[str, int] = {}
        for r in self.ranks:
            for t in self._infos[r].values():
                out[t.collection] = out.get(t.collection, 0) + 1
        return out

    def stats(self, name: str, rank: int = 0) -> TensorStats:
        """Per-step statistics of tensor ``name`` at every committed step it was captured."""
        info = self.tensor(name, rank)
        try:
            log = self._stats_log(rank)
        except CorruptRunError as exc:  # the log is shared: say which tensor was asked for
            cause = exc.__cause__
            raise CorruptRunError(self.uri, f"the statistics of tensor {name!r} ({exc.where})",
                                  f"{type(cause).__name__}: {cause}" if cause else str(exc)) from exc
        vals, rows = log.get(info.index, (None, None))
        if vals is None or rows is None:
            return _empty_stats()
        return self._with_steps(rank, rows, vals)

    def _stats_log(self, rank: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The rank's committed statistics log, split by tensor (read once, then cached)."""
        cached = self._logs.get(rank)
        if cached is not None:
            return cached
        n = int(self._record(rank).get("committed_stats", 0))
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if n:
            g = self._rank_group(rank)
            vals = self._read(lambda: g["stats"][:n], f"rank {rank} statistics")
            index = self._read(lambda: g["stats_index"][:n], f"rank {rank} statistics index")
            order = np.argsort(index[:, 0], kind="stable")
            tids, starts = np.unique(index[order, 0], return_index=True)
            bounds = list(starts[1:]) + [len(order)]
            for tid, lo, hi in zip(tids.tolist(), starts.tolist(), bounds, strict=True):
                sel = order[lo:hi]
                out[int(tid)] = (vals[sel], index[sel, 1])
        self._logs[rank] = out
        return out

    def value_steps(self, name: str, rank: int = 0) -> TensorStats:
        """The steps at which full values of ``name`` were saved (``values`` is empty)."""
        info = self.tensor(name, rank)
        if info.n_values == 0:
            return _empty_stats()
        g = self._rank_group(rank)[info.key]
        index = self._read(lambda: g["values_index"][: info.n_values], f"{name!r} value index")
        return self._with_steps(rank, index[:, 0], np.zeros((len(index), 0)))

    def values(self, name: str, step: int, rank: int = 0, mode: str | None = None) -> np.ndarray:
        """Full values of ``name`` at global ``step`` (its real shape)."""
        vs = self.value_steps(name, rank)
        hit = np.nonzero((vs.step == step) & (True if mode is None else vs.mode == F.mode_code(mode)))[0]
        if len(hit) == 0:
            raise KeyError(f"tensor {name!r} has no saved values at step {step}; saved at {vs.step[:20].tolist()}...")
        i = int(hit[0])
        vals, shapes, _, _ = self.values_block(name, i, i + 1, rank)
        return vals[(0, *[slice(0, int(s)) for s in shapes[0]])]  # type: ignore[arg-type]

    def values_block(self, name: str, start: int, stop: int, rank: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Value rows ``[start, stop)`` of ``name``: ``(values, shapes, steps, modes)``.

        ``values`` is padded to the largest shape seen (NaN or 0); ``shapes`` gives each row's
        real shape. Raises :class:`CorruptRunError` naming the tensor and steps when a chunk
        cannot be decoded.
        """
        info = self.tensor(name, rank)
        stop = min(stop, info.n_values)
        g = self._rank_group(rank)[info.key]
        index = self._read(lambda: g["values_index"][start:stop], f"{name!r} value index rows {start}-{stop - 1}")
        rows = index[:, 0]
        steps = self.steps(rank)
        span = f"steps {int(steps.global_step[rows[0]])}-{int(steps.global_step[rows[-1]])}" if len(rows) else "no steps"
        vals = self._read(lambda: g["values"][start:stop], f"tensor {name!r} value rows {start}-{stop - 1} ({span})")
        return vals, index[:, 1:], steps.global_step[rows], steps.mode[rows]

    def values_dask(self, name: str, rank: int = 0) -> Any:
        """A lazy dask array over all saved value rows of ``name`` (padded), chunked by shard."""
        import dask.array as da

        info = self.tensor(name, rank)
        arr = self._rank_group(rank)[info.key]["values"]
        return da.from_zarr(arr)[: info.n_values]

    # ------------------------------------------------------------------ helpers
    def _record(self, rank: int) -> Mapping[str, Any]:
        try:
            return self._records[rank]
        except KeyError:
            raise KeyError(f"run {self.uri!r} has no rank {rank}; ranks: {self.ranks}") from None

    def _rank_group(self, rank: int) -> Any:
        self._record(rank)
        return self._root[F.rank_key(rank)]

    def _with_steps(self, rank: int, rows: np.ndarray, vals: np.ndarray) -> TensorStats:
        st = self.steps(rank)
        ok = (rows >= 0) & (rows < len(st))
        rows, vals = rows[ok], vals[ok]
        return TensorStats(st.global_step[rows], st.mode[rows], st.mode_step[rows], vals)

    def _read(self, fn: Any, where: str) -> Any:
        try:
            return fn()
        except (OSError, ConnectionError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise CorruptRunError(self.uri, where, f"a chunk is missing ({exc})") from exc
            raise StoreUnavailableError(self.uri, str(exc)) from exc
        except Exception as exc:
            raise CorruptRunError(self.uri, where, f"{type(exc).__name__}: {exc}") from exc


def _info(e: Mapping[str, Any], rank: int) -> TensorInfo:
    shape = tuple(e["shape"]) if e.get("shape") is not None else None
    chunk = shard = 0
    if shape is not None and e.get("dtype"):
        chunk, shard = F.values_layout(shape, np.dtype(e["dtype"]).itemsize)
    return TensorInfo(
        name=e["name"], collection=e["collection"], rank=rank, index=int(e["index"]), key=e["key"], shape=shape, dtype=e.get("dtype"),
        meta=e.get("meta") or {}, n_stats=int(e["n_stats"]), n_values=int(e["n_values"]),
        chunk_steps=chunk, shard_steps=shard,
    )


def _empty_stats() -> TensorStats:
    e = np.zeros(0, dtype=np.int64)
    return TensorStats(e, e, e, np.zeros((0, F.N_STATS)))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers signal 0.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def open_run(uri: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None, stale_after: float = DEFAULT_STALE_AFTER) -> Run:
    """Open the trainaudit run at ``uri`` for reading.

    Raises:
        RunNotFoundError: nothing is at ``uri``.
        NotARunError: something is there, but not a trainaudit run.
        FormatVersionError: the run's format is newer than this trainaudit.
        StoreUnavailableError: the store could not be reached.
    """
    u = F.normalize_uri(uri)
    if not F.is_remote(u) and not os.path.exists(u):
        raise RunNotFoundError(u)
    try:
        root = F.open_root(u, mode="r", storage_options=storage_options)
    except Exception as exc:
        name = type(exc).__name__
        if isinstance(exc, FileNotFoundError) or "NotFound" in name:
            # Nothing there at all, or something that is not a Zarr group (a plain folder).
            if _holds_anything(u, storage_options):
                raise NotARunError(u, "there is no zarr.json (Zarr group metadata) there") from exc
            raise RunNotFoundError(u) from exc
        if "NodeTypeValidation" in name or "ContainsArray" in name:
            raise NotARunError(u, f"no Zarr group there ({name})") from exc
        if isinstance(exc, OSError | ConnectionError) or "Endpoint" in str(exc):
            raise StoreUnavailableError(u, str(exc)) from exc
        raise NotARunError(u, f"{name}: {exc}") from exc
    attrs = root.attrs.asdict().get(F.ROOT_ATTR)
    if attrs is None:
        raise NotARunError(u, "its root has no 'trainaudit' attribute")
    if attrs.get("format_version") not in F.SUPPORTED_VERSIONS:
        raise FormatVersionError(u, attrs.get("format_version"), F.SUPPORTED_VERSIONS)
    return Run(u, root, attrs, storage_options, stale_after)


def _holds_anything(uri: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether anything at all exists at ``uri`` (a file, a folder, objects under a prefix)."""
    if not F.is_remote(uri):
        return os.path.exists(uri)
    try:
        from zarr.core.sync import sync

        store = F.make_store(uri, read_only=True, storage_options=storage_options)

        async def first() -> bool:
            async for _ in store.list_dir(""):
                return True
            return False

        return bool(sync(first()))
    except Exception:
        return False
