"""Helpers the builtin rules share: number formatting, unit axes, loss series."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._context import RuleContext, TensorData
from .._plan import TensorMeta

__all__ = ["g", "pct", "unit_axis", "loss_series", "effective_modes", "running_median", "first_true", "names",
           "trailing_windows", "final_streak"]


def g(x: float) -> str:
    """A number for a message: 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.3g}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def unit_axis(t: TensorMeta) -> int:
    """The axis of units (features / channels) of an activation: 1 for (batch, features) and
    channels-first convolutions; the last axis for (batch, time, features) sequences unless the
    module is a 1-D convolution."""
    nd = len(t.shape)
    if nd == 3 and "conv" not in t.module_type.lower():
        return -1
    return 1 if nd >= 2 else 0


def running_median(y: np.ndarray, window: int) -> np.ndarray:
    """Median of the last ``window`` values at each position (shorter at the start)."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) == 0:
        return y.copy()
    out = np.empty_like(y)
    for i in range(len(y)):
        out[i] = np.nanmedian(y[max(0, i - window + 1) : i + 1]) if np.isfinite(y[max(0, i - window + 1) : i + 1]).any() else np.nan
    return out


def loss_series(ctx: RuleContext, need: str, mode: int) -> tuple[TensorData, np.ndarray, np.ndarray] | None:
    """The loss of ``mode`` (0 train, 1 eval): ``(tensor, steps, values)`` of the first loss
    tensor holding rows of that mode (``losses/loss`` and ``losses/train`` preferred).

    A tensor whose meta has a ``role`` (``"train"``/``"eval"``: XGBoost records every eval set
    in mode train at the round's step) counts as that mode for all its rows.
    """
    cands = ctx.with_stats(need)

    def pref(t: TensorData) -> tuple[int, str]:
        leaf = t.name.split("/", 1)[-1]
        return (0 if leaf in ("loss", "train") else 1, t.name)

    for t in sorted(cands, key=pref):
        st = t.stats
        assert st is not None
        m = effective_modes(t) == mode
        if m.any():
            y = st.mean()[m]
            return t, st.steps[m], y
    return None


def effective_modes(t: TensorData) -> np.ndarray:
    """The mode code of each stats row, with a ``role`` meta overriding the stored mode."""
    assert t.stats is not None
    role = str(t.meta.meta.get("role", "")).lower()
    if role in ("train", "eval"):
        return np.full(len(t.stats), 0 if role == "train" else 1, dtype=np.int64)
    return t.stats.modes


def trailing_windows(records: Sequence[Mapping[Any, int] | None], min_pairs: int) -> list[Counter[Any] | None]:
    """For each per-step record of counts (in step order), the counts merged over the shortest
    run of records ending there that holds >= ``min_pairs``; None while fewer were seen.

    The classifier rules judge the model by its *recent* predictions: the first predictions of
    an untrained model are wrong for every class, and summing from step 0 would blame them.
    """
    sizes = np.asarray([sum(r.values()) if r else 0 for r in records], dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(sizes)])
    out: list[Counter[Any] | None] = []
    for k in range(len(records)):
        # the largest start s with cum[k + 1] - cum[s] >= min_pairs
        s = int(np.searchsorted(cum, cum[k + 1] - min_pairs, side="right")) - 1
        if s < 0 or cum[k + 1] < max(1, min_pairs):
            out.append(None)
            continue
        s = min(s, k)
        c: Counter[Any] = Counter()
        for r in records[s : k + 1]:
            if r:
                c.update(r)
        out.append(c)
    return out


def final_streak(hits: Sequence[bool]) -> int | None:
    """Index where the trailing run of True values starts (None when the last value is False)."""
    if not len(hits) or not hits[-1]:
        return None
    k = len(hits) - 1
    while k > 0 and hits[k - 1]:
        k -= 1
    return k


def first_true(mask: Sequence[bool] | np.ndarray) -> int | None:
    m = np.asarray(mask, dtype=bool)
    return int(np.argmax(m)) if m.any() else None


def names(items: Sequence[Any], limit: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
