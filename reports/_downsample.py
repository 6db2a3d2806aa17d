"""Downsampling that keeps what a reader looks for: minima, maxima and non-finite values.

A report has a hard size budget whatever the length of the run, so every series is cut to a
bounded number of points before it is drawn. Plain decimation (every k-th point) hides spikes,
the very thing an auditor wants to see; here each of ``n`` equal buckets keeps its first
non-finite point, its minimum and its maximum (the "M4" idea without the first/last points),
and heatmap columns are binned keeping the maximum, with a bin marked non-finite as soon as one
of its cells is.

Everything takes plain JSON numbers (non-finite values as the strings ``"nan"``, ``"inf"``,
``"-inf"``, as ``audit.json`` stores them), Python floats or NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "as_floats",
    "as_matrix",
    "minmax_indices",
    "downsample_xy",
    "bin_columns",
    "bin_rows",
    "bin_bands",
]


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def as_floats(seq: Any) -> np.ndarray:
    """A 1-D float64 array from numbers, ``"nan"``/``"inf"``/``"-inf"`` strings or ``None``
    (which becomes NaN); anything unreadable becomes NaN rather than failing the report."""
    if seq is None:
        return np.zeros(0)
    try:
        arr = np.asarray(seq, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.asarray([_to_float(v) for v in seq], dtype=np.float64)
    return arr.reshape(-1) if arr.ndim != 1 else arr


def as_matrix(rows: Any, n_cols: int | None = None) -> np.ndarray:
    """A 2-D float64 array from a list of rows; ragged rows are padded with NaN."""
    if rows is None:
        return np.zeros((0, 0))
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        try:
            return rows.astype(np.float64)
        except (TypeError, ValueError):
            pass
    parsed = [as_floats(r) for r in rows]
    width = max([len(r) for r in parsed] + [n_cols or 0])
    out = np.full((len(parsed), width), np.nan)
    for i, r in enumerate(parsed):
        out[i, : len(r)] = r
    return out


def _edges(n: int, n_bins: int) -> np.ndarray:
    """Start indices of ``n_bins`` near-equal, non-empty bins over ``range(n)``."""
    n_bins = max(1, min(n_bins, n))
    return np.unique(np.linspace(0, n, n_bins + 1).astype(np.int64)[:-1])


def minmax_indices(y: np.ndarray, max_points: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` points of ``y`` that keep, per bucket, the
    minimum, the maximum and the first non-finite value; the first and last points are kept."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    n_buckets = max(1, (max_points - 2) // 3)
    starts = _edges(n, n_buckets)
    bucket = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    finite = np.isfinite(y)
    lo = np.where(finite, y, np.inf)
    hi = np.where(finite, y, -np.inf)
    keep = [np.array([0, n - 1])]
    for hit in (
        finite & (lo == np.minimum.reduceat(lo, starts)[bucket]),  # each bucket's minimum
        finite & (hi == np.maximum.reduceat(hi, starts)[bucket]),  # ... its maximum
        ~finite,  # ... and its first non-finite value
    ):
        idx = np.flatnonzero(hit)
        _, first = np.unique(bucket[idx], return_index=True)
        keep.append(idx[first])
    return np.unique(np.concatenate(keep).astype(np.int64))


def downsample_xy(
    x: Sequence[Any] | np.ndarray, y: Sequence[Any] | np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` cut to at most ``max_points`` points by :func:`minmax_indices`.

    ``x`` and ``y`` are truncated to their common length (a malformed spec must not fail the
    report)."""
    xa, ya = as_floats(x), as_floats(y)
    n = min(len(xa), len(ya))
    xa, ya = xa[:n], ya[:n]
    idx = minmax_indices(ya, max_points)
    return xa[idx], ya[idx]


def bin_columns(z: np.ndarray, max_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin the columns of ``z`` into at most ``max_cols`` bins.

    Returns ``(starts, zmax, bad)``: the first column index of each bin, the maximum over the
    finite cells of each bin (NaN when it had none) and whether the bin held a non-finite
    cell (NaN or an infinity: a heatmap must not hide the step where a gradient blew up)."""
    rows, cols = z.shape
    if cols == 0:
        return np.zeros(0, np.int64), z, np.zeros(z.shape, bool)
    bad = ~np.isfinite(z)
    starts = _edges(cols, max_cols) if cols > max_cols else np.arange(cols)
    if cols <= max_cols:
        return starts, np.where(bad, np.nan, z), bad
    zmax = np.maximum.reduceat(np.where(bad, -np.inf, z), starts, axis=1)
    zbad = np.logical_or.reduceat(bad, starts, axis=1)
    zmax = np.where(np.isneginf(zmax), np.nan, zmax)
    return starts, zmax, zbad


def bin_rows(
    z: np.ndarray, bad: np.ndarray, labels: list[str], max_rows: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Merge adjacent rows (layers in depth order) into at most ``max_rows`` rows keeping the
    maximum; a merged row is labelled ``"first … last"``."""
    n = z.shape[0]
    if n <= max_rows:
        return z, bad, labels
    starts = _edges(n, max_rows)
    stops = np.append(starts[1:], n)
    zz = np.maximum.reduceat(np.where(np.isnan(z), -np.inf, z), starts, axis=0)
    zz = np.where(np.isneginf(zz), np.nan, zz)
    bb = np.logical_or.reduceat(bad, starts, axis=0)
    merged = [
        labels[a] if b - a == 1 else f"{labels[a]} … {labels[b - 1]}"
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    ]
    return zz, bb, merged


def bin_bands(
    x: np.ndarray, median: np.ndarray, bands: list[tuple[np.ndarray, np.ndarray]], max_points: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Bin percentile bands over time: per bin the lower edges keep their minimum, the upper
    edges their maximum (a band never looks narrower than it was) and the median its value at
    the middle of the bin."""
    n = len(x)
    if n <= max_points:
        return x, median, bands
    starts = _edges(n, max_points)
    stops = np.append(starts[1:], n)
    mid = (starts + stops - 1) // 2

    def reduce(a: np.ndarray, fn: Any, fill: float) -> np.ndarray:
        r = fn.reduceat(np.where(np.isfinite(a), a, fill), starts)
        return np.where(np.isinf(r), np.nan, r)

    out = [(reduce(lo, np.minimum, np.inf), reduce(hi, np.maximum, -np.inf)) for lo, hi in bands]
    return x[starts], median[mid], out
