"""The scan: one pass over the run, as a Dask graph of fat tasks.

One task per (tensor, block of value rows) reads the block once and runs every kernel the plan
put on that tensor; the block states of a tensor are then merged in a tree on the workers, so
only compact states travel back to the client. Per-step statistics are read in a few tasks
of many tensors each (they are tiny). A worker reopens the run through the plan's picklable
``opener``; nothing big is shipped with a task.

A block that cannot be read is retried row by row, so a corrupt chunk costs only its own rows:
they are recorded as :class:`ScanError` (tensor, rank, steps, cause) and the rules that need
that tensor report ``error``; the rest of the audit completes.

``scan(plan, client=None)`` runs the same tasks serially in this process (tests, tiny runs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._kernels import Block, Kernel
from ._plan import Plan, TensorKey, TensorPlan

__all__ = ["ScanError", "StatsArrays", "ScanResult", "scan", "merge_scans"]

#: how many states one merge task combines
MERGE_FANIN = 8


@dataclass(frozen=True, kw_only=True)
class ScanError:
    """A part of the run the scan could not read."""

    tensor: str
    rank: int
    source: str  # "stats" | "values"
    steps: tuple[int, int] | None
    message: str

    def where(self) -> str:
        rank = f" (rank {self.rank})" if self.rank else ""
        if self.steps is None:
            return f"tensor {self.tensor!r}{rank}, {self.source}"
        a, b = self.steps
        span = f"step {a}" if a == b else f"steps {a}-{b}"
        return f"tensor {self.tensor!r}{rank} at {span} ({self.source})"


@dataclass(frozen=True, kw_only=True)
class StatsArrays:
    """The per-step statistics of one tensor: ``values[i]`` holds STAT_FIELDS of ``steps[i]``."""

    steps: np.ndarray
    modes: np.ndarray
    values: np.ndarray

    def field(self, name: str) -> np.ndarray:
        from trainaudit.capture._format import STAT

        return self.values[:, STAT[name]] if len(self.values) else np.zeros(0)

    def __len__(self) -> int:
        return int(len(self.steps))

    def finite_count(self) -> np.ndarray:
        return self.field("count") - self.field("nan") - self.field("posinf") - self.field("neginf")

    def mean(self) -> np.ndarray:
        n = self.finite_count()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.field("sum") / n, np.nan)

    def mean_abs(self) -> np.ndarray:
        n = self.finite_count()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.field("l1") / n, np.nan)

    def l2(self) -> np.ndarray:
        return np.sqrt(self.field("sumsq"))

    def var(self) -> np.ndarray:
        """Population variance from sum and sumsq (cancels for tensors far from zero)."""
        n = self.finite_count()
        with np.errstate(invalid="ignore", divide="ignore"):
            m = self.field("sum") / n
            return np.where(n > 0, np.maximum(self.field("sumsq") / n - m * m, 0.0), np.nan)

    def nonfinite(self) -> np.ndarray:
        return self.field("nan") + self.field("posinf") + self.field("neginf")


@dataclass(kw_only=True)
class _Part:
    """What a task returns: states per tensor and kernel, stats, errors, bytes read."""

    states: dict[TensorKey, dict[Kernel, Any]] = field(default_factory=dict)
    stats: dict[TensorKey, StatsArrays] = field(default_factory=dict)
    errors: dict[TensorKey, list[ScanError]] = field(default_factory=dict)
    nbytes: int = 0


@dataclass(kw_only=True)
class ScanResult:
    """The scan's output: stats and kernel states per tensor, and what could not be read.

    Mergeable with :func:`merge_scans` (scans of disjoint or overlapping tensor groups).
    """

    stats: dict[TensorKey, StatsArrays] = field(default_factory=dict)
    states: dict[TensorKey, dict[Kernel, Any]] = field(default_factory=dict)
    errors: dict[TensorKey, list[ScanError]] = field(default_factory=dict)
    nbytes: int = 0
    seconds: float = 0.0
    tasks: int = 0


def _merge_into(dst: _Part | ScanResult, src: _Part | ScanResult) -> None:
    for key, ks in src.states.items():
        d = dst.states.setdefault(key, {})
        for k, s in ks.items():
            d[k] = k.merge(d[k], s) if k in d else s
    dst.stats.update(src.stats)
    for key, errs in src.errors.items():
        dst.errors.setdefault(key, []).extend(errs)
    dst.nbytes += src.nbytes


def merge_scans(scans: Iterable[ScanResult]) -> ScanResult:
    """Merge scan results (e.g. one per group of layers scanned by separate Prefect tasks)."""
    out = ScanResult()
    for s in scans:
        _merge_into(out, s)
        out.seconds += s.seconds
        out.tasks += s.tasks
    return out


# ---------------------------------------------------------------------------------------------
# Tasks (run on workers)


def _stats_task(opener: Callable[[], Any], keys: Sequence[TensorKey]) -> _Part:
    part = _Part()
    try:
        run = opener()
    except Exception as e:
        for rank, name in keys:
            part.errors[(rank, name)] = [ScanError(tensor=name, rank=rank, source="stats", steps=None,
                                                   message=f"could not open the run: {type(e).__name__}: {e}")]
        return part
    for rank, name in keys:
        try:
            st = run.stats(name, rank=rank)
            values = np.asarray(st.values, dtype=np.float64)
            part.stats[(rank, name)] = StatsArrays(
                steps=np.asarray(st.step, dtype=np.int64),
                modes=np.asarray(st.mode, dtype=np.int64),
                values=values.reshape(-1, values.shape[-1] if values.ndim == 2 else 10),
            )
            part.nbytes += values.nbytes
        except Exception as e:
            part.errors[(rank, name)] = [ScanError(tensor=name, rank=rank, source="stats", steps=None,
                                                   message=f"{type(e).__name__}: {e}")]
    return part


def _read(run: Any, name: str, rank: int, lo: int, hi: int) -> Block:
    values, shapes, steps, modes = run.values_block(name, lo, hi, rank=rank)
    return Block(values=np.asarray(values), shapes=np.asarray(shapes), steps=np.asarray(steps),
                 modes=np.asarray(modes))


def _concat(blocks: list[Block]) -> Block:
    return Block(
        values=np.concatenate([b.values for b in blocks]),
        shapes=np.concatenate([b.shapes for b in blocks]),
        steps=np.concatenate([b.steps for b in blocks]),
        modes=np.concatenate([b.modes for b in blocks]),
    )


def _read_tolerant(run: Any, name: str, rank: int, lo: int, hi: int, value_steps: np.ndarray,
                   errors: list[ScanError]) -> Block | None:
    """Read rows ``[lo, hi)``; on failure retry row by row and record the rows that fail."""
    try:
        return _read(run, name, rank, lo, hi)
    except Exception as first:
        good: list[Block] = []
        bad: list[tuple[int, str]] = []
        for i in range(lo, hi):
            try:
                good.append(_read(run, name, rank, i, i + 1))
            except Exception as e:
                bad.append((i, f"{type(e).__name__}: {e}"))
        if not bad:  # transient: the row-wise reads worked
            return _concat(good) if good else None
        # group consecutive bad rows into step ranges
        start = prev = bad[0][0]
        for i, _ in bad[1:] + [(-1, "")]:
            if i != prev + 1:
                s0 = int(value_steps[start]) if start < len(value_steps) else start
                s1 = int(value_steps[prev]) if prev < len(value_steps) else prev
                errors.append(ScanError(tensor=name, rank=rank, source="values", steps=(s0, s1),
                                        message=f"could not read the saved values: {bad[0][1] or first}"))
                start = i
            prev = i
        return _concat(good) if good else None


def _block_task(opener: Callable[[], Any], tp: TensorPlan, lo: int, hi: int) -> _Part:
    t = tp.tensor
    part = _Part()
    errors: list[ScanError] = []
    try:
        run = opener()
    except Exception as e:
        part.errors[t.key] = [ScanError(tensor=t.name, rank=t.rank, source="values", steps=None,
                                        message=f"could not open the run: {type(e).__name__}: {e}")]
        return part
    block = _read_tolerant(run, t.name, t.rank, lo, hi, t.value_steps, errors)
    states: dict[Kernel, Any] = {}
    if block is not None:
        part.nbytes += int(block.values.nbytes)
        partner_blocks: dict[TensorKey, Block | None] = {}
        for kernel, (klo, khi) in tp.kernels.items():
            a, b = max(lo, klo), min(hi, khi)
            if a >= b:
                continue
            sub = block
            if (a, b) != (lo, hi) and len(t.value_steps) >= b:
                sub = block.select(int(t.value_steps[a]), int(t.value_steps[b - 1]))
            if not len(sub):
                continue
            if kernel.paired:
                pt = tp.partners.get(kernel)
                if pt is None:
                    continue
                if pt.key not in partner_blocks:
                    s0, s1 = int(sub.steps.min()), int(sub.steps.max())
                    plo = int(np.searchsorted(pt.value_steps, s0, side="left"))
                    phi = int(np.searchsorted(pt.value_steps, s1, side="right"))
                    perr: list[ScanError] = []
                    partner_blocks[pt.key] = (
                        _read_tolerant(run, pt.name, pt.rank, plo, phi, pt.value_steps, perr) if phi > plo else None
                    )
                    if perr:
                        part.errors.setdefault(pt.key, []).extend(perr)
                guest = partner_blocks[pt.key]
                if guest is None:
                    continue
                if guest.values.size:
                    part.nbytes += int(guest.values.nbytes)
                states[kernel] = kernel.chunk(guest, sub)  # (predictions, labels)
                continue
            states[kernel] = kernel.chunk(sub, None)
    part.states[t.key] = states
    if errors:
        part.errors[t.key] = errors
    return part


def _merge_task(*parts: _Part) -> _Part:
    out = _Part()
    for p in parts:
        _merge_into(out, p)
    return out


def _compact_task(part: _Part) -> _Part:
    for ks in part.states.values():
        for k, s in list(ks.items()):
            compact = getattr(k, "compact", None)
            if compact is not None:
                ks[k] = compact(s)
    return part


# ---------------------------------------------------------------------------------------------


def _select_tensors(plan: Plan, tensors: Iterable[TensorKey | str] | None) -> list[TensorPlan]:
    if tensors is None:
        return list(plan.tensors.values())
    wanted = {tuple(t) if isinstance(t, list | tuple) else t for t in tensors}  # keys arrive as lists from JSON
    return [tp for key, tp in plan.tensors.items() if key in wanted or key[1] in wanted]


def scan(plan: Plan, *, client: Any = None, tensors: Iterable[TensorKey | str] | None = None) -> ScanResult:
    """Read everything ``plan`` needs once, on ``client`` (a ``distributed.Client``) or, when
    ``client`` is None, serially in this process.

    ``tensors`` restricts the scan to some tensors (keys ``(rank, name)`` or names); scans of
    several groups merge with :func:`merge_scans`.
    """
    t0 = time.perf_counter()
    tps = _select_tensors(plan, tensors)
    # biggest first: the long tasks start early and the tail is made of small ones
    tps.sort(key=lambda tp: -sum(hi - lo for lo, hi in tp.blocks) * max(1, int(np.prod(tp.tensor.shape))))
    # one statistics task per rank: capture writes one statistics log per rank, read whole
    stats_by_rank: dict[int, list[TensorKey]] = {}
    for tp in tps:
        if tp.stats:
            stats_by_rank.setdefault(tp.key[0], []).append(tp.key)
    stats_groups = list(stats_by_rank.values())
    result = ScanResult()
    n_tasks = 0
    if client is None:
        for g in stats_groups:
            _merge_into(result, _stats_task(plan.opener, g))
            n_tasks += 1
        for tp in tps:
            part = _Part(states={tp.key: {}})
            for lo, hi in tp.blocks:
                _merge_into(part, _block_task(plan.opener, tp, lo, hi))
                n_tasks += 1
            _merge_into(result, _compact_task(part))
    else:
        tag = uuid.uuid4().hex[:8]
        futures = []
        for i, g in enumerate(stats_groups):
            futures.append(client.submit(_stats_task, plan.opener, g, key=f"ta-stats-{tag}-{i}"))
        n_tasks += len(stats_groups)
        for j, tp in enumerate(tps):
            parts = [
                client.submit(_block_task, plan.opener, tp, lo, hi, key=f"ta-block-{tag}-{j}-{lo}")
                for lo, hi in tp.blocks
            ]
            n_tasks += len(parts)
            if not parts:
                continue
            level = 0
            while len(parts) > 1:
                parts = [
                    client.submit(_merge_task, *parts[i : i + MERGE_FANIN], key=f"ta-merge-{tag}-{j}-{level}-{i}")
                    for i in range(0, len(parts), MERGE_FANIN)
                ]
                level += 1
            futures.append(client.submit(_compact_task, parts[0], key=f"ta-compact-{tag}-{j}"))
        for part in client.gather(futures):
            _merge_into(result, part)
        for tp in tps:  # tensors with no value rows still appear, with no states
            result.states.setdefault(tp.key, {})
    result.seconds = time.perf_counter() - t0
    result.tasks = n_tasks
    return result

