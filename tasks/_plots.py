"""Plot specs: the plain-JSON contract between the rules and the report.

Kinds: ``line``, ``heatmap``, ``bars``, ``matrix``, ``bands`` (see ``docs/AUDIT_JSON.md``).
Producers downsample long series to at most :data:`MAX_POINTS` points, keeping each bucket's
minimum and maximum so spikes survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_POINTS", "downsample", "line", "heatmap", "bars", "matrix", "bands"]

MAX_POINTS = 2000


def downsample(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
               max_points: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points of ``(x, y)``: per bucket, the points holding its minimum
    and maximum (non-finite values are kept: the report marks them)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    n = len(xa)
    if n <= max_points:
        return xa.tolist(), ya.tolist()
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(int)
    keep: list[int] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        seg = ya[a:b]
        bad = ~np.isfinite(seg)
        if bad.any():
            keep.append(a + int(np.argmax(bad)))
        finite = np.where(np.isfinite(seg), seg, np.nan)
        if np.isfinite(finite).any():
            keep.append(a + int(np.nanargmin(finite)))
            keep.append(a + int(np.nanargmax(finite)))
    idx = np.unique(np.asarray(keep, dtype=int))[: max_points]
    return xa[idx].tolist(), ya[idx].tolist()


def line(title: str, series: list[dict[str, Any]], *, x_label: str = "step", y_label: str = "",
         log_y: bool = False, markers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A line plot; each series is ``{"name", "x", "y"}`` (downsampled here)."""
    out = []
    for s in series:
        x, y = downsample(s["x"], s["y"])
        out.append({"name": str(s["name"]), "x": x, "y": y})
    return {"kind": "line", "title": title, "x_label": x_label, "y_label": y_label, "log_y": log_y,
            "series": out, "markers": markers or []}


def heatmap(title: str, x: Sequence[float], rows: list[str], z: Any, *,
            x_label: str = "step", y_label: str = "layer", log: bool = False,
            markers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A heatmap: ``z[i]`` is the row of ``rows[i]`` over ``x`` (columns downsampled by stride)."""
    xa = list(x)
    cols = np.arange(len(xa))
    if len(xa) > MAX_POINTS:
        cols = np.unique(np.linspace(0, len(xa) - 1, MAX_POINTS).astype(int))
    return {
        "kind": "heatmap", "title": title, "x_label": x_label, "y_label": y_label,
        "x": [xa[int(i)] for i in cols], "y": list(rows),
        "z": [[float(r[int(i)]) for i in cols] for r in z], "log": log, "markers": markers or [],
    }


def bars(title: str, labels: Sequence[Any], values: Sequence[float], *, x_label: str = "",
         y_label: str = "", threshold: float | None = None) -> dict[str, Any]:
    labels = list(labels)[:MAX_POINTS]
    return {"kind": "bars", "title": title, "x_label": x_label, "y_label": y_label,
            "labels": [str(v) for v in labels], "values": [float(v) for v in list(values)[: len(labels)]],
            "threshold": threshold}


def matrix(title: str, rows: Sequence[Any], cols: Sequence[Any], values: Sequence[Sequence[float]], *,
           row_label: str = "label", col_label: str = "prediction") -> dict[str, Any]:
    return {"kind": "matrix", "title": title, "row_label": row_label, "col_label": col_label,
            "rows": [str(r) for r in rows], "cols": [str(c) for c in cols],
            "values": [[float(v) for v in r] for r in values]}


def bands(title: str, x: Sequence[float], median: Sequence[float], bands_: list[dict[str, Any]], *,
          x_label: str = "step", y_label: str = "value") -> dict[str, Any]:
    idx = np.arange(len(x))
    if len(idx) > MAX_POINTS:
        idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(int))

    def pick(seq: Sequence[float]) -> list[float]:
        lst = list(seq)
        return [float(lst[int(i)]) for i in idx]

    return {"kind": "bands", "title": title, "x_label": x_label, "y_label": y_label,
            "x": pick(x), "median": pick(median),
            "bands": [{"name": b["name"], "lo": pick(b["lo"]), "hi": pick(b["hi"])} for b in bands_]}
