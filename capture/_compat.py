"""Optional dependencies and feature checks, as named flags (feature detection, not versions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["abs_sum_f32", "HAS_BLAS_ASUM"]


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
