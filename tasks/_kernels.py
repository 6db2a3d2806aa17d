"""Statistic kernels: chunk -> merge -> finalize over explicit, mergeable state.

A kernel turns blocks of a tensor's saved values into a compact statistic. The state it keeps
is made of quantities that merge exactly (counts, sums, min, max and M2, merged with Chan's
parallel formula) -- never means, which do not merge. ``merge`` is associative, so the scan can
combine block states in any tree; the property tests check every kernel against NumPy under
arbitrary splits of the data.

Two shapes of kernel exist:

* *aggregate* kernels (:class:`Moments`) fold every element of the tensor into one state;
* *per-step* kernels (:class:`UnitBand`, :class:`ChannelMoments`, ...) compute a small record per
  saved step. A step never spans two blocks, so the record is final when the block is read; the
  state is a ``{step: record}`` dict and merging is a union. Rules then look at the records in
  step order (the first step where a condition holds is the finding's ``first_step``).

Every kernel is a frozen, hashable dataclass: the planner deduplicates identical kernels that
several rules ask for, so each is computed once per block.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Block",
    "Kernel",
    "PerStepKernel",
    "StepSeries",
    "MOMENT_FIELDS",
    "moments_chunk",
    "moments_merge",
    "moments_finalize",
    "moments_axis_chunk",
    "Moments",
    "StepMoments",
    "UnitBand",
    "ChannelMoments",
    "ClassCounts",
    "ConfusionCounts",
    "TokenCounts",
    "FirstRowChecks",
    "LastRows",
    "StepDiffs",
    "StepQuantiles",
    "Histogram",
    "to_class_ids",
    "is_class_ids",
]


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True, kw_only=True, eq=False)
class Block:
    """Consecutive value rows of one tensor: ``values`` is ``(k, *padded_shape)``, ``shapes``
    the real shape of each row (a smaller last batch is padded), ``steps``/``modes`` their keys."""

    values: np.ndarray
    shapes: np.ndarray
    steps: np.ndarray
    modes: np.ndarray

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` cut to its real shape."""
        shape = tuple(int(s) for s in self.shapes[i]) if self.shapes.size else ()
        v = self.values[i]
        if shape and shape != v.shape:
            v = v[tuple(slice(0, s) for s in shape)]
        return v

    def rows(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for i in range(len(self)):
            yield int(self.steps[i]), int(self.modes[i]), self.row(i)

    def select(self, lo_step: int | None, hi_step: int | None) -> Block:
        """The rows whose step lies in ``[lo_step, hi_step]`` (None: unbounded)."""
        mask = np.ones(len(self), dtype=bool)
        if lo_step is not None:
            mask &= self.steps >= lo_step
        if hi_step is not None:
            mask &= self.steps <= hi_step
        if mask.all():
            return self
        return Block(
            values=self.values[mask],
            shapes=self.shapes[mask],
            steps=self.steps[mask],
            modes=self.modes[mask],
        )

    @classmethod
    def from_rows(cls, rows: list[np.ndarray], *, steps: list[int] | None = None,
                  modes: list[int] | None = None) -> Block:
        """A block of rows, padded to their largest shape as the reader pads them (NaN for
        floats, 0 for integers)."""
        arrs = [np.asarray(r) for r in rows]
        n = len(arrs)
        if not arrs:
            return cls(values=np.zeros((0,)), shapes=np.zeros((0, 0), np.int64),
                       steps=np.zeros(0, np.int64), modes=np.zeros(0, np.int64))
        shapes = np.asarray([a.shape for a in arrs], dtype=np.int64).reshape(n, -1)
        padded = tuple(int(v) for v in shapes.max(axis=0)) if shapes.size else ()
        dtype = np.result_type(*arrs)
        arr = np.full((n, *padded), np.nan if dtype.kind == "f" else 0, dtype=dtype)
        for i, a in enumerate(arrs):
            index: tuple[Any, ...] = (i, *[slice(0, d) for d in a.shape])
            arr[index] = a
        return cls(
            values=arr,
            shapes=shapes,
            steps=np.asarray(steps if steps is not None else range(n), dtype=np.int64),
            modes=np.asarray(modes if modes is not None else [0] * n, dtype=np.int64),
        )


class Kernel(ABC):
    """A statistic computed chunk by chunk. Subclasses are frozen dataclasses (hashable)."""

    #: a paired kernel also receives the rows of a partner tensor at the same steps
    paired: bool = False

    @abstractmethod
    def init(self) -> Any:
        """The state of no data."""

    @abstractmethod
    def chunk(self, block: Block, partner: Block | None = None) -> Any:
        """The state of one block."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Combine two states (associative; ``init()`` is the identity)."""

    def finalize(self, state: Any) -> Any:
        """The statistic a rule reads."""
        return state


@dataclass(frozen=True, kw_only=True)
class StepSeries:
    """Per-step records in step order: ``steps[i]``, ``modes[i]``, ``records[i]``."""

    steps: np.ndarray
    modes: np.ndarray
    records: list[Any]

    def __len__(self) -> int:
        return len(self.records)


class PerStepKernel(Kernel):
    """A kernel that computes one final record per saved step."""

    @abstractmethod
    def record(self, x: np.ndarray) -> Any:
        """The record of one step's value ``x`` (real shape)."""

    def init(self) -> dict[int, tuple[int, Any]]:
        return {}

    def chunk(self, block: Block, partner: Block | None = None) -> dict[int, tuple[int, Any]]:
        return {step: (mode, self.record(x)) for step, mode, x in block.rows()}

    def merge(self, a: dict[int, tuple[int, Any]], b: dict[int, tuple[int, Any]]) -> dict[int, tuple[int, Any]]:
        out = dict(a)
        out.update(b)
        return out

    def finalize(self, state: dict[int, tuple[int, Any]]) -> StepSeries:
        keys = sorted(state)
        return StepSeries(
            steps=np.asarray(keys, dtype=np.int64),
            modes=np.asarray([state[k][0] for k in keys], dtype=np.int64),
            records=[state[k][1] for k in keys],
        )


# ---------------------------------------------------------------------------------------------
# Moments: count, sum, M2 (Chan et al.), min, max, non-finite counts


#: Layout of a moment state vector.
MOMENT_FIELDS: tuple[str, ...] = ("n", "sum", "m2", "min", "max", "nan", "posinf", "neginf", "zero")
_N, _SUM, _M2, _MIN, _MAX, _NAN, _PINF, _NINF, _ZERO = range(9)


def _empty_moments(shape: tuple[int, ...] = ()) -> np.ndarray:
    s = np.zeros((*shape, 9), dtype=np.float64)
    s[..., _MIN] = np.inf
    s[..., _MAX] = -np.inf
    return s


def moments_chunk(x: np.ndarray) -> np.ndarray:
    """The moment state of all elements of ``x``: non-finite elements are counted, not summed.

    float32 input stays float32 (no float64 copy): the sum accumulates in float64, and M2 is a
    float32 dot product of the *centred* values, whose relative error (~1e-6) cannot cancel.
    """
    a = np.asarray(x).reshape(-1)
    f = a if a.dtype == np.float32 else a.astype(np.float64, copy=False)
    s = _empty_moments()
    with np.errstate(invalid="ignore", over="ignore"):
        total = float(f.sum(dtype=np.float64))
    if not math.isfinite(total):  # a finite sum means every element is finite: skip the mask
        finite = np.isfinite(f)
        s[_NAN] = np.count_nonzero(np.isnan(f))
        s[_PINF] = np.count_nonzero(f == np.inf)
        s[_NINF] = np.count_nonzero(f == -np.inf)
        f = f[finite]
        total = float(f.sum(dtype=np.float64))
    n = f.size
    if n:
        d = f - f.dtype.type(total / n)
        s[_N] = n
        s[_SUM] = total
        s[_M2] = float(np.dot(d, d))
        s[_MIN] = float(f.min())
        s[_MAX] = float(f.max())
        s[_ZERO] = n - np.count_nonzero(f)
    return s


def moments_axis_chunk(x: np.ndarray, axis: int) -> np.ndarray:
    """Moment states per index of ``axis`` (shape ``(x.shape[axis], 9)``)."""
    a = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    a = a.reshape(a.shape[0], -1)
    s = _empty_moments((a.shape[0],))
    finite = np.isfinite(a)
    if not finite.all():
        s[:, _NAN] = np.isnan(a).sum(axis=1)
        s[:, _PINF] = (a == np.inf).sum(axis=1)
        s[:, _NINF] = (a == -np.inf).sum(axis=1)
    af = np.where(finite, a, 0.0)
    n = finite.sum(axis=1).astype(np.float64)
    total = af.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    d = np.where(finite, a - mean[:, None], 0.0)
    s[:, _N] = n
    s[:, _SUM] = total
    s[:, _M2] = (d * d).sum(axis=1)
    s[:, _MIN] = np.where(n > 0, np.where(finite, a, np.inf).min(axis=1, initial=np.inf), np.inf)
    s[:, _MAX] = np.where(n > 0, np.where(finite, a, -np.inf).max(axis=1, initial=-np.inf), -np.inf)
    s[:, _ZERO] = (finite & (a == 0)).sum(axis=1)
    return s


def moments_merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chan's parallel merge of two moment states (works elementwise on stacked states)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = a + b  # counts, sums and the non-finite counts add
    na, nb = a[..., _N], b[..., _N]
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where((na > 0) & (nb > 0), b[..., _SUM] / np.maximum(nb, 1) - a[..., _SUM] / np.maximum(na, 1), 0.0)
        out[..., _M2] = a[..., _M2] + b[..., _M2] + np.where(n > 0, delta * delta * na * nb / np.maximum(n, 1), 0.0)
    out[..., _MIN] = np.minimum(a[..., _MIN], b[..., _MIN])
    out[..., _MAX] = np.maximum(a[..., _MAX], b[..., _MAX])
    return out


def moments_finalize(s: np.ndarray) -> dict[str, float]:
    """count (finite), mean, var (population), std, min, max and the non-finite counts."""
    s = np.asarray(s, dtype=np.float64)
    n = float(s[_N])
    nan_ = float("nan")
    return {
        "count": n,
        "mean": float(s[_SUM] / n) if n else nan_,
        "var": float(s[_M2] / n) if n else nan_,
        "std": math.sqrt(max(0.0, float(s[_M2] / n))) if n else nan_,
        "min": float(s[_MIN]) if n else nan_,
        "max": float(s[_MAX]) if n else nan_,
        "nan": float(s[_NAN]),
        "posinf": float(s[_PINF]),
        "neginf": float(s[_NINF]),
        "zero": float(s[_ZERO]),
    }


@dataclass(frozen=True)
class Moments(Kernel):
    """Moments of every element of a tensor, over all the rows it is given."""

    def init(self) -> np.ndarray:
        return _empty_moments()

    def chunk(self, block: Block, partner: Block | None = None) -> np.ndarray:
        s = _empty_moments()
        for _, _, x in block.rows():
            s = moments_merge(s, moments_chunk(x))
        return s

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return moments_merge(a, b)

    def finalize(self, state: np.ndarray) -> dict[str, float]:
        return moments_finalize(state)


@dataclass(frozen=True)
class StepMoments(PerStepKernel):
    """Exact moments (two-pass M2) of each saved step: records are :func:`moments_finalize`
    dicts. The per-step statistics written by capture carry sumsq, whose variance
    (sumsq/n - mean^2) cancels catastrophically for tensors far from zero; this does not."""

    def record(self, x: np.ndarray) -> dict[str, float]:
        return moments_finalize(moments_chunk(x))


# ---------------------------------------------------------------------------------------------
# Per-unit and per-channel statistics


def _unit_axis(ndim: int, axis: int) -> int:
    return axis if axis >= 0 else ndim + axis


@dataclass(frozen=True)
class UnitBand(PerStepKernel):
    """Per unit (index along ``axis``), how many entries lie strictly inside ``(lo, hi)``.

    Record: ``(entries_per_unit, counts)`` with ``counts`` an int64 vector over units. A 1-D
    value (no batch axis) has one entry per unit.
    """

    lo: float
    hi: float
    axis: int = 1

    def record(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        a = np.asarray(x)
        if a.ndim <= 1:
            inside = (a > self.lo) & (a < self.hi)
            return 1, inside.reshape(-1).astype(np.int64)
        ax = _unit_axis(a.ndim, self.axis)
        inside = (a > self.lo) & (a < self.hi)
        other = tuple(i for i in range(a.ndim) if i != ax)
        counts = inside.sum(axis=other, dtype=np.int64)
        per_unit = int(a.size // max(1, a.shape[ax]))
        return per_unit, counts


@dataclass(frozen=True)
class ChannelMoments(PerStepKernel):
    """Per channel (index along ``axis``) moment states of one step, plus the batch size.

    Record: ``(samples, states)`` with ``states`` of shape ``(channels, 9)``; merge the states
    of several steps with :func:`moments_merge`.
    """

    axis: int = 1

    def record(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim <= 1:
            return int(a.shape[0]) if a.ndim else 1, moments_axis_chunk(a.reshape(-1, 1), 1)
        ax = _unit_axis(a.ndim, self.axis)
        return int(a.shape[0]), moments_axis_chunk(a, ax)


# ---------------------------------------------------------------------------------------------
# Classes and tokens


def to_class_ids(x: np.ndarray) -> np.ndarray:
    """Class ids from labels or predictions: integer ids as they are; scores or one-hot rows
    (last axis > 1) by argmax; a vector of probabilities in [0, 1] that is not integral (a
    binary classifier's output) by ``p > 0.5``."""
    a = np.asarray(x)
    if a.ndim >= 2 and a.shape[-1] > 1:
        return np.argmax(a, axis=-1).reshape(-1).astype(np.int64)
    a = a.reshape(-1)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    a = a[np.isfinite(a)]
    if a.size and np.any(a != np.round(a)):
        return (a > 0.5).astype(np.int64)
    return np.round(a).astype(np.int64)


def is_class_ids(x: np.ndarray) -> bool:
    """Whether ``x`` looks like class labels: integers, integral floats, or one-hot / score
    rows. Non-integral 1-D floats are regression targets."""
    a = np.asarray(x)
    if a.ndim >= 2 and a.shape[-1] > 1:
        return True
    if a.dtype.kind in "iub":
        return True
    f = a[np.isfinite(a)]
    return bool(np.all(f == np.round(f)))


def _counts(ids: np.ndarray) -> dict[int, int]:
    u, c = np.unique(ids, return_counts=True)
    return {int(k): int(v) for k, v in zip(u, c, strict=True)}


@dataclass(frozen=True)
class ClassCounts(PerStepKernel):
    """Per step, how many labels of each class (record: ``{class: count}``, or None when the
    labels are not class ids, e.g. regression targets)."""

    def record(self, x: np.ndarray) -> dict[int, int] | None:
        if not is_class_ids(x):
            return None
        return _counts(to_class_ids(x))


@dataclass(frozen=True)
class ConfusionCounts(Kernel):
    """Per step, counts of (label, prediction) pairs; the partner block holds the labels.

    Record: ``{(label, prediction): count}``. Steps where labels were not saved are skipped;
    rows of different lengths are cut to the shorter one. ``guest`` names the predictions tensor
    (the planner sets it: the kernel runs in the labels' task).
    """

    paired = True
    guest: str = ""

    def init(self) -> dict[int, tuple[int, dict[tuple[int, int], int]]]:
        return {}

    def chunk(self, block: Block, partner: Block | None = None) -> dict[int, tuple[int, dict[tuple[int, int], int]]]:
        out: dict[int, tuple[int, dict[tuple[int, int], int]]] = {}
        if partner is None:
            return out
        labels = {step: x for step, _, x in partner.rows()}
        for step, mode, x in block.rows():
            if step not in labels:
                continue
            if not is_class_ids(labels[step]):
                continue
            pred = to_class_ids(x)
            lab = to_class_ids(labels[step])
            n = min(pred.size, lab.size)
            lab, pred = lab[:n], pred[:n]
            if not n:
                out[step] = (mode, {})
                continue
            # encode each pair as one integer: a 1-D unique is much faster than unique(axis=0)
            lo = int(min(lab.min(), pred.min()))
            span = int(max(lab.max(), pred.max())) - lo + 1
            u, c = np.unique((lab - lo) * span + (pred - lo), return_counts=True)
            out[step] = (mode, {(int(k // span + lo), int(k % span + lo)): int(v) for k, v in zip(u, c, strict=True)})
        return out

    def merge(self, a: dict, b: dict) -> dict:  # type: ignore[type-arg]
        out = dict(a)
        out.update(b)
        return out

    def finalize(self, state: dict) -> StepSeries:  # type: ignore[type-arg]
        keys = sorted(state)
        return StepSeries(
            steps=np.asarray(keys, dtype=np.int64),
            modes=np.asarray([state[k][0] for k in keys], dtype=np.int64),
            records=[state[k][1] for k in keys],
        )


@dataclass(frozen=True)
class TokenCounts(PerStepKernel):
    """Per step: ``(positions, counts)`` with ``counts[i]`` the positions equal to
    ``token_values[i]``."""

    token_values: tuple[int, ...] = (0,)

    def record(self, x: np.ndarray) -> tuple[int, tuple[int, ...]]:
        a = np.asarray(x).reshape(-1)
        return int(a.size), tuple(int(np.count_nonzero(a == t)) for t in self.token_values)


# ---------------------------------------------------------------------------------------------
# First / last rows and differences between consecutive rows


def _duplicate_rows(w: np.ndarray, atol: float) -> int:
    """How many rows of ``w`` (2-D) equal another row within ``atol`` (sorted-neighbour test:
    rows are sorted lexicographically and each compared with the next)."""
    if w.shape[0] < 2:
        return 0
    order = np.lexsort(w.T[::-1])
    s = w[order]
    same = np.all(np.abs(s[1:] - s[:-1]) <= atol, axis=1)
    if not same.any():
        return 0
    dup = np.zeros(w.shape[0], dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    return int(dup.sum())


@dataclass(frozen=True)
class FirstRowChecks(Kernel):
    """Checks on the earliest saved value of a tensor (PoorWeightInitialization).

    Result: ``{"step", "mode", "shape", "fan_in", "fan_out", "var", "std", "constant",
    "duplicate_rows", "rows"}``; rows are the output units (axis 0) for ``ndim >= 2``.
    """

    atol: float = 1e-7

    def init(self) -> dict[str, Any] | None:
        return None

    def chunk(self, block: Block, partner: Block | None = None) -> dict[str, Any] | None:
        if not len(block):
            return None
        i = int(np.argmin(block.steps))
        x = np.asarray(block.row(i), dtype=np.float64)
        finite = x[np.isfinite(x)]
        shape = tuple(int(s) for s in x.shape)
        rows = shape[0] if x.ndim >= 2 else 1
        recept = int(np.prod(shape[2:])) if x.ndim > 2 else 1
        fan_in = int(shape[1] * recept) if x.ndim >= 2 else int(x.size)
        fan_out = int(shape[0] * recept) if x.ndim >= 2 else int(x.size)
        dup = _duplicate_rows(x.reshape(rows, -1), self.atol) if x.ndim >= 2 and np.isfinite(x).all() else 0
        return {
            "step": int(block.steps[i]),
            "mode": int(block.modes[i]),
            "shape": list(shape),
            "fan_in": fan_in,
            "fan_out": fan_out,
            "var": float(finite.var()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
            "constant": bool(finite.size > 1 and float(finite.max() - finite.min()) <= self.atol),
            "duplicate_rows": dup,
            "rows": rows,
        }

    def merge(self, a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
        if a is None:
            return b
        if b is None:
            return a
        return a if a["step"] <= b["step"] else b


@dataclass(frozen=True)
class LastRows(Kernel):
    """The last ``n`` saved rows (by step): ``[(step, mode, array), ...]`` in step order."""

    n: int = 1

    def init(self) -> list[tuple[int, int, np.ndarray]]:
        return []

    def chunk(self, block: Block, partner: Block | None = None) -> list[tuple[int, int, np.ndarray]]:
        rows = [(s, m, np.array(x)) for s, m, x in block.rows()]
        return sorted(rows, key=lambda r: r[0])[-self.n :]

    def merge(self, a: list[tuple[int, int, np.ndarray]], b: list[tuple[int, int, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
        return sorted(a + b, key=lambda r: r[0])[-self.n :] if self.n else []


@dataclass(frozen=True)
class StepDiffs(Kernel):
    """``||x_s - x_prev||_2`` and ``||x_prev||_2`` between consecutive saved rows.

    State: the first and last row of the span it covers, plus the differences inside it, so two
    adjacent spans merge by differencing the left's last row with the right's first.
    Result: :class:`StepSeries` of ``(diff_norm, prev_norm, prev_step)`` records keyed by the
    later step.
    """

    def init(self) -> dict[str, Any] | None:
        return None

    @staticmethod
    def _diff(prev: tuple[int, np.ndarray], cur: tuple[int, int, np.ndarray]) -> tuple[int, tuple[float, float, int]]:
        p_step, p = prev
        step, mode, x = cur
        if p.shape != x.shape:
            return mode, (float("nan"), float(np.linalg.norm(p)), p_step)
        d = x.astype(np.float64) - p.astype(np.float64)
        return mode, (float(np.linalg.norm(d.reshape(-1))), float(np.linalg.norm(p.reshape(-1).astype(np.float64))), p_step)

    def chunk(self, block: Block, partner: Block | None = None) -> dict[str, Any] | None:
        rows = sorted(((s, m, np.array(x)) for s, m, x in block.rows()), key=lambda r: r[0])
        if not rows:
            return None
        diffs = {}
        for prev, cur in zip(rows, rows[1:], strict=False):
            diffs[cur[0]] = self._diff((prev[0], prev[2]), cur)
        return {"first": rows[0], "last": rows[-1], "diffs": diffs}

    def merge(self, a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
        if a is None:
            return b
        if b is None:
            return a
        if a["first"][0] > b["first"][0]:
            a, b = b, a
        diffs = {**a["diffs"], **b["diffs"]}
        diffs[b["first"][0]] = self._diff((a["last"][0], a["last"][2]), b["first"])
        return {"first": a["first"], "last": b["last"], "diffs": diffs}

    def compact(self, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Drop the boundary rows once a tensor's span is complete (only diffs travel)."""
        if state is None:
            return None
        empty = np.zeros(0)
        return {
            "first": (state["first"][0], state["first"][1], empty),
            "last": (state["last"][0], state["last"][1], empty),
            "diffs": state["diffs"],
        }

    def finalize(self, state: dict[str, Any] | None) -> StepSeries:
        diffs = state["diffs"] if state else {}
        keys = sorted(diffs)
        return StepSeries(
            steps=np.asarray(keys, dtype=np.int64),
            modes=np.asarray([diffs[k][0] for k in keys], dtype=np.int64),
            records=[diffs[k][1] for k in keys],
        )


# ---------------------------------------------------------------------------------------------
# Distributions


@dataclass(frozen=True)
class StepQuantiles(PerStepKernel):
    """Per step, quantiles of the finite values (weight distribution bands in the report).

    For plotting only: a tensor of more than ``max_sample`` elements is summarised by an evenly
    strided sample of about ``max_sample`` of them (exact quantiles of a 1M-element tensor cost
    more than reading it).
    """

    qs: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
    max_sample: int = 8192

    def record(self, x: np.ndarray) -> tuple[float, ...]:
        f = np.asarray(x).reshape(-1)
        if f.size > self.max_sample:
            f = f[:: -(-f.size // self.max_sample)]
        f = np.sort(f[np.isfinite(f)].astype(np.float64))
        if not f.size:
            return tuple(float("nan") for _ in self.qs)
        # linear interpolation between order statistics (numpy's default "linear" method)
        pos = np.asarray(self.qs) * (f.size - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, f.size - 1)
        return tuple(float(v) for v in f[lo] + (f[hi] - f[lo]) * (pos - lo))


@dataclass(frozen=True)
class Histogram(Kernel):
    """Counts of the finite values in ``bins`` equal bins over ``[lo, hi]``, plus the counts
    below and above the range (state: int64 vector of ``bins + 2``)."""

    lo: float = -1.0
    hi: float = 1.0
    bins: int = 64

    def init(self) -> np.ndarray:
        return np.zeros(self.bins + 2, dtype=np.int64)

    def chunk(self, block: Block, partner: Block | None = None) -> np.ndarray:
        s = self.init()
        for _, _, x in block.rows():
            f = np.asarray(x, dtype=np.float64).reshape(-1)
            f = f[np.isfinite(f)]
            s[0] += int(np.count_nonzero(f < self.lo))
            s[-1] += int(np.count_nonzero(f > self.hi))
            inside = f[(f >= self.lo) & (f <= self.hi)]
            s[1:-1] += np.histogram(inside, bins=self.bins, range=(self.lo, self.hi))[0]
        return s

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(a) + np.asarray(b)

    def finalize(self, state: np.ndarray) -> dict[str, Any]:
        edges = np.linspace(self.lo, self.hi, self.bins + 1)
        return {"edges": edges, "counts": state[1:-1], "below": int(state[0]), "above": int(state[-1])}
