"""One rank's group of a run on its store: every zarr operation the writer makes.

:class:`RunStore` opens (or resumes) the rank's group, writes batches of resolved steps and
rewrites the commit record. It keeps no queue and starts no thread: the writer
(:mod:`._writer`) decides when to write, retries, and keeps the error accounting, and runs a
``RunStore`` either in its own process (``memory://``, or when asked) or in a store process of
its own (:mod:`._store_process`), through the same four calls. Everything passed in and out is
plain data (numpy arrays, lists, dicts), so the calls can cross a pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _format as F

__all__ = ["RunStore", "ResolvedStep", "Opened"]


class ResolvedStep(NamedTuple):
    """A step's numbers, waiting for the next flush: the names of its tensors, their statistics
    (one row each) and the full values that were due, by name.

    Compact on purpose: a thousand pending steps of a few dozen tensors each, kept as one item
    object per tensor, made CPython's cyclic garbage collector run full collections (hundreds
    of milliseconds with torch loaded, holding the GIL) every few hundred steps. Names are
    strings and the statistics one float64 array, which the collector does not track.
    """

    names: list[str]
    stats: np.ndarray
    values: list[tuple[str, np.ndarray]]

    @property
    def value_bytes(self) -> int:
        return sum(v.nbytes for _, v in self.values)


class Opened(NamedTuple):
    """What :meth:`RunStore.open` found: for a rank that already held committed steps (resumed
    training) the writer's part of its last commit record, and where step numbering goes on."""

    previous: dict[str, Any] | None
    resume_from: tuple[int, dict[str, int]] | None


@dataclass
class _Tensor:
    """The store's view of one tensor's arrays (mirrors its entry in the commit record)."""

    index: int
    name: str
    collection: str
    meta: dict[str, Any]
    n_stats: int = 0
    n_values: int = 0
    shape: list[int] | None = None
    dtype: str | None = None
    group: Any = None
    values: Any = None
    values_index: Any = None
    values_cap: int = 0

    def entry(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": F.tensor_key(self.index),
            "name": self.name,
            "collection": self.collection,
            "meta": self.meta,
            "shape": self.shape,
            "dtype": self.dtype,
            "n_stats": self.n_stats,
            "n_values": self.n_values,
        }


class RunStore:
    """The zarr side of one rank of a run.

    Args:
        uri: the run's URI, normalized (:func:`._format.normalize_uri`).
        rank: the rank whose group this store writes.
        storage_options: passed to s3fs / fsspec.
    """

    def __init__(self, uri: str, *, rank: int, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.rank = int(rank)
        self.storage_options = dict(storage_options or {})
        self.committed_steps = 0
        self.committed_stats = 0
        self.opened = False
        self._tensors: dict[str, _Tensor] = {}
        #: ``(collection, meta)`` of every tensor name the writer has told this store about.
        self._kinds: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
        self._root: Any = None
        self._rank_group: Any = None
        self._steps_arr: Any = None
        self._time_arr: Any = None
        self._stats_arr: Any = None
        self._stats_index: Any = None
        self._steps_cap = 0
        self._stats_cap = 0

    # ------------------------------------------------------------------ the four calls
    def open(self, root_record: Mapping[str, Any]) -> Opened:
        """Open the run for writing; write ``root_record`` as the run's root attributes when
        this is rank 0 or the run is new (keeping the first ``created``); resume this rank's
        committed data if it has any. Raises when the run holds an unknown format version."""
        root = F.open_root(self.uri, mode="a", storage_options=self.storage_options)
        existing = root.attrs.asdict().get(F.ROOT_ATTR)
        if existing is not None and existing.get("format_version") not in F.SUPPORTED_VERSIONS:
            raise RuntimeError(f"the run holds format_version={existing.get('format_version')!r}")
        if existing is None or self.rank == 0:
            record = dict(root_record)
            record["created"] = (existing or {}).get("created", record.get("created"))
            root.attrs[F.ROOT_ATTR] = record
        self._root = root
        g = root.require_group(F.rank_key(self.rank))
        self._rank_group = g
        prev = g.attrs.asdict().get(F.RANK_ATTR)
        self.opened = True
        if prev:  # resumed training: continue the committed data of this rank
            return self._resume(prev)
        self._steps_cap = 1024
        steps_arr = g.create_array(
            "steps", shape=(self._steps_cap, 3), chunks=(F.ROW_CHUNK // 4, 3), dtype="int64",
            fill_value=-1, overwrite=True,
        )
        time_arr = g.create_array(
            "step_time", shape=(self._steps_cap,), chunks=(F.ROW_CHUNK // 4,), dtype="float64",
            fill_value=np.nan, overwrite=True,
        )
        stats_arr = g.create_array(
            "stats", shape=(F.STATS_CHUNK_ROWS, F.N_STATS), chunks=(F.STATS_CHUNK_ROWS, F.N_STATS),
            dtype="float64", fill_value=np.nan, overwrite=True,
        )
        index_arr = g.create_array(
            "stats_index", shape=(F.STATS_CHUNK_ROWS, 2), chunks=(F.STATS_CHUNK_ROWS, 2),
            dtype="int64", fill_value=-1, overwrite=True,
        )
        self._steps_arr, self._time_arr = steps_arr._async_array, time_arr._async_array
        self._stats_arr, self._stats_index = stats_arr._async_array, index_arr._async_array
        self._stats_cap = F.STATS_CHUNK_ROWS
        return Opened(None, None)

    def write_batch(
        self,
        steps: np.ndarray,
        times: np.ndarray,
        batch: list[ResolvedStep],
        kinds: Mapping[str, tuple[str, Mapping[str, Any] | None]],
    ) -> list[tuple[str, str, str]]:
        """Write one batch of steps: ``steps`` (``(k, 3)`` int64: global step, mode code, mode
        step), ``times`` (``(k,)``) and each step's :class:`ResolvedStep`. ``kinds`` holds
        ``(collection, meta)`` of names this store has not been told about yet.

        The statistics of every tensor go into the rank's one statistics log (two writes per
        batch, whatever the model's size); values go to their tensor's array. Every store
        operation of a phase runs concurrently on zarr's event loop: zarr costs milliseconds
        per operation locally and tens of milliseconds on S3. The counts the next commit
        publishes advance only once every chunk is written. Returns ``(kind, message,
        tensor)`` of what was left out (values of a rank other than the tensor's).
        """
        self._kinds.update(kinds)
        n0, m0 = self.committed_steps, self.committed_stats
        k = len(steps)
        if k == 0:
            return []
        self._sync_capacities()
        problems: list[tuple[str, str, str]] = []
        stat_blocks: list[np.ndarray] = []
        index_blocks: list[np.ndarray] = []
        per_tensor_values: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        counted: dict[str, int] = {}
        # Consecutive steps mostly hold the same tensors: their indices are looked up once per
        # run of equal name lists, not once per tensor and step (a flush of a thousand steps of
        # forty tensors would otherwise spend tens of milliseconds here).
        runs: list[tuple[list[str], int]] = []  # (names, steps in a row holding them)
        indices_of_run = np.empty(0, dtype=np.int64)
        for i, resolved in enumerate(batch):
            stat_blocks.append(resolved.stats)
            names = resolved.names
            if runs and names == runs[-1][0]:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((names, 1))
                indices_of_run = np.array([self._tensor(name).index for name in names], dtype=np.int64)
            block = np.empty((len(names), 2), dtype=np.int64)
            block[:, 0] = indices_of_run
            block[:, 1] = n0 + i
            index_blocks.append(block)
            for name, values in resolved.values:
                acc = per_tensor_values.setdefault(name, ([], []))
                acc[0].append(n0 + i)
                acc[1].append(values)
        values_in = {name: self._valid_values(self._tensors[name], *acc, problems)
                     for name, acc in per_tensor_values.items()}
        values_in = {name: v for name, v in values_in.items() if v[0]}
        for names, count in runs:
            for name in names:
                counted[name] = counted.get(name, 0) + count
        stat_index = np.concatenate(index_blocks) if index_blocks else np.empty((0, 2), dtype=np.int64)
        m = len(stat_index)
        # Phase 1: create the value arrays of tensors whose values appear for the first time.
        _gather([self._create_values(self._tensors[name], vals) for name, (_, vals) in values_in.items()
                 if self._tensors[name].values is None])
        # Phase 2: grow what is too small.
        resizes = self._log_resizes(n0 + k, m0 + m)
        for name, (vrows, vals) in values_in.items():
            t = self._tensors[name]
            resizes += self._values_resizes(t, t.n_values + len(vrows), vals)
        _gather(resizes)
        # Phase 3: write every slice.
        writes = [
            self._steps_arr.setitem(slice(n0, n0 + k), np.asarray(steps, dtype=np.int64)),
            self._time_arr.setitem(slice(n0, n0 + k), np.asarray(times, dtype=np.float64)),
        ]
        if m:
            writes.append(self._stats_arr.setitem(slice(m0, m0 + m), np.concatenate(stat_blocks)))
            writes.append(self._stats_index.setitem(slice(m0, m0 + m), stat_index))
        for name, (vrows, vals) in values_in.items():
            writes += self._value_writes(self._tensors[name], vrows, vals)
        _gather(writes)
        # Only now, with every chunk written, advance the counts the commit will publish.
        for name, c in counted.items():
            self._tensors[name].n_stats += c
        for name, (vrows, _) in values_in.items():
            self._tensors[name].n_values += len(vrows)
        self.committed_steps = n0 + k
        self.committed_stats = m0 + m
        return problems

    def commit(self, status: str, writer_part: Mapping[str, Any]) -> None:
        """Rewrite the rank's commit record: the store's counts and tensor list, with the
        writer's part (status, process, heartbeat, errors, lost and dropped steps)."""
        record = {
            "rank": self.rank,
            "status": status,
            **writer_part,
            "committed_steps": self.committed_steps,
            "committed_stats": self.committed_stats,
            "tensors": [t.entry() for t in sorted(self._tensors.values(), key=lambda t: t.index) if t.n_stats or t.n_values],
        }
        self._rank_group.attrs[F.RANK_ATTR] = record

    def poll_stop(self) -> str | None:
        """The reason of a stop request a watcher wrote into the run (``control`` group), or
        None when there is none (or the group cannot be read yet)."""
        if self._root is None:
            return None
        try:
            import zarr

            ctrl = zarr.open_group(store=self._root.store, path=F.CONTROL_GROUP, mode="r", zarr_format=3)
            control: Any = ctrl.attrs.asdict().get(F.CONTROL_ATTR) or {}
            stop = control.get("stop")
        except Exception:
            return None  # no control group yet
        return str(stop.get("reason", "stop requested")) if stop else None

    def close(self) -> None:
        """Nothing to release in-process (the store process ends on its own)."""

    # ------------------------------------------------------------------ internals
    def _resume(self, prev: Mapping[str, Any]) -> Opened:
        g = self._rank_group
        self._steps_arr = g["steps"]._async_array
        self._time_arr = g["step_time"]._async_array
        self._stats_arr = g["stats"]._async_array
        self._stats_index = g["stats_index"]._async_array
        self._steps_cap = int(self._steps_arr.shape[0])
        self._stats_cap = int(self._stats_arr.shape[0])
        self.committed_steps = int(prev.get("committed_steps", 0))
        self.committed_stats = int(prev.get("committed_stats", 0))
        self._tensors = {}
        for i, e in enumerate(prev.get("tensors", [])):
            i = int(e.get("index", i))
            t = _Tensor(index=i, name=e["name"], collection=e["collection"], meta=dict(e.get("meta") or {}),
                        n_stats=int(e["n_stats"]), n_values=int(e["n_values"]), shape=e.get("shape"), dtype=e.get("dtype"))
            if t.n_values:
                tg = g[F.tensor_key(i)]
                t.group = tg._async_group
                t.values, t.values_index = tg["values"]._async_array, tg["values_index"]._async_array
                t.values_cap = int(t.values.shape[0])
            self._tensors[t.name] = t
        lost = [list(r) for r in prev.get("lost_steps", [])]
        dropped = [list(r) for r in prev.get("dropped_steps", [])]
        previous = {
            "errors": list(prev.get("errors", [])),
            "n_errors": int(prev.get("n_errors", len(prev.get("errors", [])))),
            "lost_steps": lost,
            "dropped_steps": dropped,
        }
        last = max([int(r[1]) for r in lost + dropped], default=-1)
        return Opened(previous, self._next_steps(g, self.committed_steps, last))

    @staticmethod
    def _next_steps(g: Any, n: int, last: int) -> tuple[int, dict[str, int]] | None:
        """Where step numbering continues after ``n`` committed steps (and ``last``, the last
        step lost or dropped)."""
        modes: dict[str, int] = {}
        if n:
            rows = np.asarray(g["steps"][:n])
            last = max(last, int(rows[:, 0].max()))
            for code in np.unique(rows[:, 1]).tolist():
                modes[F.mode_name(code)] = int(rows[rows[:, 1] == code, 2].max()) + 1
        return (last + 1, modes) if last >= 0 else None

    def _sync_capacities(self) -> None:
        """Take capacities and shapes from the arrays' metadata (no I/O). A resize that failed
        (store outage) left the arrays as they were; bookkeeping ahead of them would make the
        next write land out of bounds."""
        self._steps_cap = int(self._steps_arr.shape[0])
        self._stats_cap = int(self._stats_arr.shape[0])
        for t in self._tensors.values():
            if t.values is not None:
                t.values_cap = int(t.values.shape[0])
                t.shape = [int(d) for d in t.values.shape[1:]]

    def _tensor(self, name: str) -> _Tensor:
        t = self._tensors.get(name)
        if t is None:
            collection, meta = self._kinds.get(name, ("other", None))
            index = max((x.index for x in self._tensors.values()), default=-1) + 1
            t = _Tensor(index=index, name=name, collection=collection, meta=dict(meta or {}))
            self._tensors[name] = t
        return t

    @staticmethod
    def _valid_values(t: _Tensor, rows: list[int], values: list[np.ndarray], problems: list[tuple[str, str, str]]
                      ) -> tuple[list[int], list[np.ndarray]]:
        """Drop (and report) values whose rank differs from the tensor's stored rank."""
        ndim = len(t.shape) if t.shape is not None else values[0].ndim
        keep = [(r, v) for r, v in zip(rows, values, strict=True) if v.ndim == ndim]
        if len(keep) < len(rows):
            problems.append(("tensor", f"{t.name!r}: values of a rank other than {ndim} are not stored "
                             f"({len(rows) - len(keep)} steps)", t.name))
        return [r for r, _ in keep], [v for _, v in keep]

    async def _create_values(self, t: _Tensor, values: list[np.ndarray]) -> None:
        first = values[0]
        dtype = F.storage_dtype(first.dtype)
        shape = [max(v.shape[d] for v in values) for d in range(first.ndim)]
        chunk, shard = F.values_layout(tuple(shape), dtype.itemsize)
        t.values_cap = -(-max(shard, len(values)) // shard) * shard
        fill = np.nan if dtype.kind == "f" else 0
        g = await self._rank_group._async_group.require_group(F.tensor_key(t.index))
        t.values, t.values_index = await asyncio.gather(
            g.create_array("values", shape=(t.values_cap, *shape), chunks=(chunk, *shape),
                           shards=(shard, *shape) if shard > chunk else None,
                           dtype=dtype, fill_value=fill, overwrite=True, compressors=F.values_compressors(t.collection),
                           config=_WRITE_CONFIG),
            g.create_array("values_index", shape=(t.values_cap, 1 + len(shape)), chunks=(F.ROW_CHUNK, 1 + len(shape)),
                           dtype="int64", fill_value=-1, overwrite=True),
        )
        t.group, t.shape, t.dtype = g, shape, str(dtype)

    def _log_resizes(self, n_steps: int, n_stats: int) -> list[Any]:
        out = []
        if n_steps > self._steps_cap:
            self._steps_cap = max(n_steps, 2 * self._steps_cap)
            out += [self._steps_arr.resize((self._steps_cap, 3)), self._time_arr.resize((self._steps_cap,))]
        if n_stats > self._stats_cap:
            self._stats_cap = max(n_stats, 2 * self._stats_cap)
            out += [self._stats_arr.resize((self._stats_cap, F.N_STATS)), self._stats_index.resize((self._stats_cap, 2))]
        return out

    @staticmethod
    def _values_resizes(t: _Tensor, n_values: int, values: list[np.ndarray]) -> list[Any]:
        assert t.shape is not None
        bigger = [max([t.shape[d]] + [v.shape[d] for v in values]) for d in range(len(t.shape))]
        if n_values <= t.values_cap and bigger == t.shape:
            return []
        cap = max(n_values, 2 * t.values_cap) if n_values > t.values_cap else t.values_cap
        t.values_cap, t.shape = cap, bigger
        return [t.values.resize((cap, *bigger)), t.values_index.resize((cap, 1 + len(bigger)))]

    @staticmethod
    def _value_writes(t: _Tensor, rows: list[int], values: list[np.ndarray]) -> list[Any]:
        assert t.shape is not None and t.dtype is not None
        dtype = np.dtype(t.dtype)
        if all(tuple(v.shape) == tuple(t.shape) for v in values):
            block = np.stack([np.asarray(v, dtype=dtype) for v in values])
        else:  # pad to the largest shape seen; values_index keeps each row's real shape
            block = np.full((len(values), *t.shape), np.nan if dtype.kind == "f" else 0, dtype=dtype)
            for i, v in enumerate(values):
                block[(i, *[slice(0, s) for s in v.shape])] = v  # type: ignore[index]
        index = np.array([[r, *v.shape] for r, v in zip(rows, values, strict=True)], dtype=np.int64)
        lo, hi = t.n_values, t.n_values + len(rows)
        return [t.values.setitem(slice(lo, hi), block), t.values_index.setitem(slice(lo, hi), index)]


#: Every chunk the writer writes holds captured rows: skip zarr's check for all-fill chunks (a
#: pass over every chunk written).
_WRITE_CONFIG = {"write_empty_chunks": True}


def _gather(coros: list[Any]) -> list[Any]:
    """Run coroutines concurrently on zarr's event loop (and wait for all of them)."""
    if not coros:
        return []
    from zarr.core.sync import sync

    async def run() -> list[Any]:
        # Wait for every operation, failed or not, before raising: a write still in flight
        # after a failed attempt could land after the retry and overwrite newer rows.
        results = await asyncio.gather(*coros, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)

    return sync(run())
