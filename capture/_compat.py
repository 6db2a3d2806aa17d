"""Optional dependencies and feature checks, as named flags (feature detection, not versions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["abs_sum_f32", "fast_stats", "HAS_BLAS_ASUM", "HAS_FAST_STATS"]


def _find_asum() -> Callable[[np.ndarray], float] | None:
    # BLAS ?asum sums |x| in one fused pass, 7x faster than np.abs(x).sum(); scipy is usually
    # present (scikit-learn needs it) but not required.
    try:
        from scipy.linalg.blas import dasum, sasum
    except Exception:  # pragma: no cover - scipy absent
        return None

    def asum(a: np.ndarray) -> float:
        if a.dtype == np.float32:
            return float(sasum(a))
        return float(dasum(a))

    return asum


_ASUM = _find_asum()
HAS_BLAS_ASUM = _ASUM is not None


def abs_sum_f32(a: Any) -> float:
    """Sum of absolute values of a contiguous 1-D float32/float64 array."""
    if _ASUM is not None and a.size and a.flags.c_contiguous:
        return _ASUM(a)
    return float(np.abs(a).sum(dtype=np.float64))


try:
    # One-pass statistics in C (capture/_fastats.c), built at install when a C compiler is there.
    from . import _fastats
except ImportError:  # pragma: no cover - built without a compiler: numpy / torch paths instead
    _fastats = None  # type: ignore[assignment]

HAS_FAST_STATS = _fastats is not None


def fast_stats(a: np.ndarray) -> np.ndarray | None:
    """The statistics (``_format.STAT_FIELDS``) of a float32/float64 array in one pass, or
    None when the extension is missing or ``a`` is of another dtype."""
    if _fastats is None or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        return None
    return np.array(_fastats.stats(np.ascontiguousarray(a)), dtype=np.float64)


def diff_sumsq(a: np.ndarray, b: np.ndarray) -> float | None:
    """``sum((a - b)**2)`` of two float arrays of one dtype and size, or None (no extension)."""
    if _fastats is None or a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        return None
    return float(_fastats.diff_sumsq(np.ascontiguousarray(a), np.ascontiguousarray(b)))


def snapshot(src: np.ndarray, dst: np.ndarray, prev: np.ndarray | None) -> tuple[np.ndarray, float | None] | None:
    """Copy ``src`` into ``dst`` and return ``(statistics of src, sum((src - prev)**2) or
    None)``, in one pass; None when the extension is missing or the dtype is not float32/64
    (the caller then copies and lets the writer compute)."""
    if _fastats is None or src.dtype.kind != "f" or src.dtype.itemsize not in (4, 8):
        return None
    out = _fastats.snapshot(src, dst, prev)
    return np.array(out[:-1], dtype=np.float64), out[-1]


def snapshot_many(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> list[tuple[tuple[float, ...], float | None]] | None:
    """:func:`snapshot` of many ``(src, dst, prev)`` triples of contiguous float32/float64
    arrays, the GIL released once for all of them; None without the extension. The statistics
    come as tuples of floats in :data:`STAT_FIELDS` order (the writer stacks them)."""
    if _fastats is None:
        return None
    return [(out[:-1], out[-1]) for out in _fastats.snapshot_many(triples)]


def fast_stats_many(arrays: list[np.ndarray]) -> list[np.ndarray] | None:
    """:func:`fast_stats` of many contiguous float32/float64 arrays in one call (the GIL
    released once), or None without the extension."""
    if _fastats is None:
        return None
    # One conversion for the whole step, then row views: the writer runs this for every step
    # holding the GIL, and an array per tensor cost microseconds each.
    rows = _fastats.stats_many(arrays)
    return list(np.array(rows, dtype=np.float64)) if rows else []


def stats_at(specs: list[tuple[int, int, int]]) -> np.ndarray | None:
    """The statistics of tensors given as ``(address of the first element, element count,
    dtype code)`` (:data:`STATS_AT_CODES`), one float64 row each, in one call with the GIL
    released; None without the extension. The caller keeps every tensor alive, contiguous and
    of that size through the call: the extension reads the memory at those addresses."""
    if _fastats is None:
        return None
    out = np.empty((len(specs), 10), dtype=np.float64)
    if specs:
        _fastats.stats_at(specs, out)
    return out


#: The dtype codes of :func:`stats_at`, by numpy dtype name (``_fastats.c``'s ``AT_*``).
STATS_AT_CODES = {"float32": 0, "float64": 1, "int64": 2, "int32": 3, "int16": 4, "int8": 5, "uint8": 6, "bool": 6}


#: How much lower than the training thread capture's own threads run (Linux nice levels).
THREAD_NICENESS = 10


def lower_thread_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: per-thread nice) to
    ``THREAD_NICENESS`` below the process's main thread, so that when the CPUs are busy the
    scheduler runs training before capture's threads. (Relative to the main thread, not to the
    caller: a thread started by a lowered thread inherits its priority. The store process's
    main thread, started from the writer thread, lowers itself once more.) A no-op where the
    OS has no per-thread priorities."""
    try:
        import os
        import threading

        tid = threading.get_native_id()
        want = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + THREAD_NICENESS)
        if os.getpriority(os.PRIO_PROCESS, tid) < want:
            os.setpriority(os.PRIO_PROCESS, tid, want)
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or not permitted
        pass


def yield_gil(seconds: float) -> None:
    """Let a thread waiting for the GIL take it: released for ``seconds`` (at most 1 ms) by
    the extension, which spins; without it, a sleep (at least the OS's timer slack, ~50 us)."""
    if _fastats is not None:
        _fastats.yield_gil(seconds)
    else:  # pragma: no cover - built without a compiler
        time.sleep(seconds)
