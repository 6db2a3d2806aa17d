"""Plots as inline SVG, one function per plot-spec kind of the contract.

Kinds (``docs/REPORT.md``): ``line``, ``heatmap``, ``bars``, ``matrix``, ``bands``. Each plot is a
``<figure>`` with an HTML caption and legend (they wrap and reflow) around an SVG with axes,
tick labels and axis titles. Colours come from CSS classes (``_style.py``), so plots follow
the page's light and dark schemes and print in light colours. Every series is downsampled to
the bounds in :class:`PlotLimits` first (``_downsample.py``): a plot's size does not grow with
the run. A malformed spec yields a figure that says what is wrong, never a broken report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._downsample import as_floats, as_matrix, bin_bands, bin_columns, bin_rows, downsample_xy
from ._png import NONFINITE_RGB, NONPOSITIVE_RGB, colormap, png_data_uri
from ._text import clip, clip_middle, esc, fmt, fmt_tick

__all__ = ["PlotLimits", "render_plot", "PLOT_KINDS"]

W = 600  # viewBox width of every plot; height depends on the kind
FONT_W = 6.4  # average glyph width at the 11px plot font, for layout estimates
N_COLORS = 8


@dataclass(frozen=True, kw_only=True)
class PlotLimits:
    """Upper bounds on what one plot may hold; the page shrinks them until it fits its budget."""

    line_points: int = 1200  # per plot, shared among its series
    series: int = 10
    markers: int = 12
    heat_cols: int = 300
    heat_rows: int = 120
    bars: int = 60
    matrix: int = 40
    band_points: int = 400

    def shrunk(self) -> PlotLimits:
        """Half of every bound (with floors that keep a plot readable)."""
        return PlotLimits(
            line_points=max(100, self.line_points // 2),
            series=max(3, self.series // 2),
            markers=max(4, self.markers // 2),
            heat_cols=max(50, self.heat_cols // 2),
            heat_rows=max(20, self.heat_rows // 2),
            bars=max(15, self.bars // 2),
            matrix=max(10, self.matrix // 2),
            band_points=max(50, self.band_points // 2),
        )


# ---------------------------------------------------------------------------------- scales


class _Scale:
    """Data → pixel along one axis, linear or log10."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, *, log: bool = False) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        lo, hi = (min(max(v, -1e300), 1e300) for v in (lo, hi))  # finite, whatever came in
        if not hi > lo:
            pad = abs(lo) * 0.05 or 1.0
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v: np.ndarray | float) -> Any:
        a = np.log10(v) if self.log else v
        return self.p0 + (a - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            a, b = math.floor(self.lo), math.ceil(self.hi)
            step = max(1, math.ceil((b - a) / 6))
            out = [10.0**e for e in range(a, b + 1, step) if self.lo - 1e-9 <= e <= self.hi + 1e-9]
            if len(out) < 3:  # under two decades: 1-2-5 steps, then plain nice ticks
                inside = [m * 10.0**e for e in range(a - 1, b + 1) for m in (1, 2, 5)
                          if self.lo - 1e-9 <= math.log10(m) + e <= self.hi + 1e-9]
                out = inside if len(inside) >= 3 else [
                    t for t in _nice_ticks(10**self.lo, 10**self.hi, 4) if t > 0]
            return out or [10.0 ** round((self.lo + self.hi) / 2)]
        return _nice_ticks(self.lo, self.hi, n)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    v = first
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def _padded(lo: float, hi: float, *, log: bool) -> tuple[float, float]:
    if log:
        return lo / 1.3, min(hi * 1.3, 1e300)
    pad = (hi - lo) * 0.05 or (abs(hi) * 0.05 or 1.0)
    if not math.isfinite(pad):
        return lo, hi
    return lo - pad, hi + pad


def _seq(v: Any) -> Any:
    """A spec's list field (a list, or a NumPy array before serialisation); [] when absent."""
    if v is None or isinstance(v, str | bytes | Mapping):
        return []
    return v


def _p(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


# ------------------------------------------------------------------------------ building blocks


def _svg(height: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {W} {_p(height)}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _x_axis(sx: _Scale, y0: float, top: float, label: str, ticks: list[float] | None = None,
            tick_text: Callable[[float], str] = fmt_tick) -> list[str]:
    out = [f'<line class="axis" x1="{_p(sx.p0)}" x2="{_p(sx.p1)}" y1="{_p(y0)}" y2="{_p(y0)}"/>']
    for t in ticks if ticks is not None else sx.ticks(6):
        x = float(sx(t))
        out.append(f'<line class="grid" x1="{_p(x)}" x2="{_p(x)}" y1="{_p(top)}" y2="{_p(y0)}"/>')
        out.append(f'<text class="tick" x="{_p(x)}" y="{_p(y0 + 14)}" text-anchor="middle">'
                   f"{esc(tick_text(t))}</text>")
    out.append(f'<text class="alabel" x="{_p((sx.p0 + sx.p1) / 2)}" y="{_p(y0 + 32)}" '
               f'text-anchor="middle">{esc(clip(label, 80))}</text>')
    return out


def _y_axis(sy: _Scale, x0: float, right: float, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{_p(x0)}" x2="{_p(x0)}" y1="{_p(sy.p0)}" y2="{_p(sy.p1)}"/>']
    for t in sy.ticks(5):
        y = float(sy(t))
        out.append(f'<line class="grid" x1="{_p(x0)}" x2="{_p(right)}" y1="{_p(y)}" y2="{_p(y)}"/>')
        out.append(f'<text class="tick" x="{_p(x0 - 5)}" y="{_p(y + 4)}" text-anchor="end">'
                   f"{esc(fmt_tick(t))}</text>")
    mid = (sy.p0 + sy.p1) / 2
    out.append(f'<text class="alabel" transform="translate(13 {_p(mid)}) rotate(-90)" '
               f'text-anchor="middle">{esc(clip(label, 50))}</text>')
    return out


def _markers(markers: Any, to_x: Callable[[float], float | None], top: float, bottom: float,
             left: float, right: float, limit: int) -> tuple[list[str], list[str]]:
    """Vertical dashed lines with staggered labels; returns (svg parts, legend items)."""
    out: list[str] = []
    legend: list[str] = []
    if not isinstance(markers, list):
        return out, legend
    lanes: list[list[tuple[float, float]]] = [[], [], []]  # label extents per text row
    for m in markers[:limit]:
        if not isinstance(m, Mapping):
            continue
        xv = as_floats([m.get("x")])[0]
        label = str(m.get("label", ""))
        x = to_x(xv) if math.isfinite(xv) else None
        if x is None or not left - 0.5 <= x <= right + 0.5:
            continue
        short = clip(label, 34)
        width = len(short) * 6.0 + 4
        anchor, tx = ("end", x - 3) if x > left + 0.7 * (right - left) else ("start", x + 3)
        span = (tx - width, tx) if anchor == "end" else (tx, tx + width)
        lane = next((k for k, used in enumerate(lanes)
                     if all(span[1] < a or span[0] > b for a, b in used)), None)
        text = ""
        if lane is not None:  # no free row: the line alone, the label is in the legend
            lanes[lane].append(span)
            text = (f'<text x="{_p(tx)}" y="{_p(top + 11 + lane * 12)}" text-anchor="{anchor}">'
                    f"{esc(short)}</text>")
        tip = esc(f"{label} (x = {fmt(xv)})")
        out.append(f'<g class="marker"><title>{tip}</title>'
                   f'<line x1="{_p(x)}" x2="{_p(x)}" y1="{_p(top)}" y2="{_p(bottom)}"/>{text}</g>')
        legend.append(f'<li><span class="sw marker-sw"></span>{esc(clip(label, 80))} '
                      f"at {esc(fmt(xv))}</li>")
    return out, legend


def _figure(spec: Mapping[str, Any], svg: str, legend: list[str], notes: list[str]) -> str:
    title = str(spec.get("title") or spec.get("kind") or "plot")
    parts = [f'<figure class="fig"><figcaption>{esc(clip(title, 160))}</figcaption>']
    if legend:
        parts.append('<ul class="legend">' + "".join(legend) + "</ul>")
    parts.append(svg)
    for n in notes:
        parts.append(f'<p class="fignote">{esc(n)}</p>')
    parts.append("</figure>")
    return "".join(parts)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous ``True`` runs of ``mask`` as half-open (start, stop) pairs."""
    if not len(mask):
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


# ------------------------------------------------------------------------------------- kinds


def _line(spec: Mapping[str, Any], lim: PlotLimits) -> str:
    raw = [s for s in _seq(spec.get("series")) if isinstance(s, Mapping)]
    notes: list[str] = []
    if len(raw) > lim.series:
        notes.append(f"{len(raw) - lim.series} more series not drawn.")
        raw = raw[: lim.series]
    log = bool(spec.get("log_y"))
    per = max(60, lim.line_points // max(1, len(raw)))
    series = []
    for s in raw:
        x, y = downsample_xy(_seq(s.get("x")), _seq(s.get("y")), per)
        series.append((str(s.get("name", "")), x, y))
    xs = [x[np.isfinite(x)] for _, x, _ in series]
    ok = [np.isfinite(x) & np.isfinite(y) & ((y > 0) if log else True) for _, x, y in series]
    ys = [y[m] for (_, _, y), m in zip(series, ok, strict=True)]
    if not any(len(v) for v in ys):
        return _figure(spec, "", [], ["No finite values to draw."])
    xall, yall = np.concatenate(xs), np.concatenate(ys)
    left, right, top, h = 62.0, W - 14.0, 12.0, 290.0
    bottom = h - 44
    sx = _Scale(float(xall.min()), float(xall.max()), left, right)
    ylo, yhi = _padded(float(yall.min()), float(yall.max()), log=log)
    sy = _Scale(ylo, yhi, bottom, top, log=log)
    body = _y_axis(sy, left, right, str(spec.get("y_label", ""))) + _x_axis(
        sx, bottom, top, str(spec.get("x_label", "")))
    legend: list[str] = []
    bad_total = 0
    for i, ((name, x, y), m) in enumerate(zip(series, ok, strict=True)):
        cls = f"s{i % N_COLORS}"
        px, py = sx(x), sy(np.where(m, y, 1.0))
        paths, dots = [], []
        for a, b in _runs(m):
            if b - a == 1:
                dots.append((px[a], py[a]))
            else:
                paths.append("M" + " ".join(f"{_p(px[k])},{_p(py[k])}" for k in range(a, b)))
        tip = f"<title>{esc(name)}</title>"
        if paths:
            body.append(f'<path class="ln {cls}" d="{"".join(paths)}">{tip}</path>')
        if int(m.sum()) <= 60:
            dots = [(px[k], py[k]) for k in np.flatnonzero(m)]
        for dx, dy in dots:
            body.append(f'<circle class="pt {cls}" cx="{_p(dx)}" cy="{_p(dy)}" r="2.6"/>')
        bad = np.isfinite(x) & ~np.isfinite(y)
        bad_total += int(bad.sum())
        for a, b in _runs(bad):  # a ▼ where a non-finite run starts, a bar along it
            x0, x1 = float(px[a]), float(px[b - 1])
            span = f" to {fmt(x[b - 1])}" if b - a > 1 else ""
            body.append(f'<g class="nonfinite"><title>{esc(name)}: non-finite at '
                        f"{esc(fmt(x[a]))}{esc(span)}</title>"
                        f'<path d="M{_p(x0)},{_p(top)} l-4,-8 h8 z"/>'
                        f'<rect x="{_p(x0)}" y="{_p(top - 2)}" width="{_p(max(1.0, x1 - x0))}" '
                        'height="3"/></g>')
        legend.append(f'<li><span class="sw {cls}"></span>{esc(clip(name, 80))}</li>')
    if log and any(int((np.isfinite(y) & (y <= 0)).sum()) for _, _, y in series):
        notes.append("Values ≤ 0 cannot be drawn on the log scale and are left out.")
    if bad_total:
        legend.append('<li><span class="sw nonfinite-sw"></span>non-finite value (▼)</li>')
    mk, mleg = _markers(spec.get("markers"), lambda v: float(sx(v)), top, bottom, left, right,
                        lim.markers)
    svg = _svg(h, body + mk, str(spec.get("title", "")))
    return _figure(spec, svg, legend + mleg, notes)


def _heatmap(spec: Mapping[str, Any], lim: PlotLimits) -> str:
    z = as_matrix(spec.get("z"))
    labels = [str(v) for v in _seq(spec.get("y"))]
    notes: list[str] = []
    n_rows = z.shape[0]
    if len(labels) < n_rows:
        labels += [f"row {i}" for i in range(len(labels), n_rows)]
    labels = labels[:n_rows]
    x = as_floats(spec.get("x"))
    if not len(x):
        x = np.arange(z.shape[1], dtype=np.float64)
    n_cols = min(len(x), z.shape[1])
    if n_rows == 0 or n_cols == 0:
        return _figure(spec, "", [], ["No values to draw."])
    z, x = z[:, :n_cols], x[:n_cols]
    starts, zmax, bad = bin_columns(z, lim.heat_cols)
    if n_cols > len(starts):
        notes.append(f"{n_cols} steps shown in {len(starts)} bins; each bin shows its maximum.")
    zmax, bad, labels = bin_rows(zmax, bad, labels, lim.heat_rows)
    if n_rows > len(labels):
        notes.append(f"{n_rows} rows merged into {len(labels)}; each shows the maximum.")
    xb = x[starts]
    log = bool(spec.get("log"))
    finite = np.isfinite(zmax) & ~bad
    val = finite & (zmax > 0) if log else finite
    nonpos = finite & ~val
    t = np.where(val, zmax, np.nan)
    t = np.log10(t) if log else t
    if val.any():
        vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    else:
        vmin, vmax = 0.0, 1.0
    if not vmax > vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    rows, cols = zmax.shape
    pix = np.zeros((rows, cols, 4), np.uint8)
    pix[..., :3] = colormap((t - vmin) / (vmax - vmin))
    pix[..., 3] = np.where(val, 255, 0)
    pix[bad] = (*NONFINITE_RGB, 255)
    pix[nonpos] = (*NONPOSITIVE_RGB, 255)
    max_len = max(len(clip_middle(s, 26)) for s in labels)
    left = max(44.0, min(190.0, 14 + FONT_W * max_len))  # room for the axis title
    right, top = W - 74.0, 10.0
    row_h = min(22.0, max(2.0, 520.0 / rows))
    bottom = top + rows * row_h
    h = bottom + 44
    cw = (right - left) / cols
    body = [f'<image class="heat" x="{_p(left)}" y="{_p(top)}" width="{_p(right - left)}" '
            f'height="{_p(bottom - top)}" preserveAspectRatio="none" '
            f'href="{png_data_uri(pix)}"/>',
            f'<rect class="frame" x="{_p(left)}" y="{_p(top)}" width="{_p(right - left)}" '
            f'height="{_p(bottom - top)}"/>']
    every = max(1, math.ceil(12.0 / row_h))
    for i, name in enumerate(labels):
        y = top + i * row_h
        body.append(f'<rect class="hit" x="0" y="{_p(y)}" width="{_p(right)}" '
                    f'height="{_p(row_h)}"><title>{esc(name)}</title></rect>')
        if i % every == 0:
            body.append(f'<text class="tick" x="{_p(left - 4)}" y="{_p(y + row_h / 2 + 4)}" '
                        f'text-anchor="end">{esc(clip_middle(name, 26))}</text>')
    # x: ticks in step units placed on the column they fall in (steps may be irregular)
    centers = left + (np.arange(cols) + 0.5) * cw
    monotonic = bool(np.all(np.diff(xb) > 0)) if cols > 1 else True

    def to_x(v: float) -> float | None:
        if not monotonic:
            return None
        if v < xb[0] or v > x[-1]:
            return None
        return float(np.interp(v, xb, centers))

    sx = _Scale(float(xb[0]), float(x[-1]), left, right)
    ticks = [tk for tk in sx.ticks(6) if to_x(tk) is not None] if monotonic else []
    body += _placed_x_axis(ticks, to_x, bottom, sx, str(spec.get("x_label", "")))
    body.append(f'<text class="alabel" transform="translate(11 {_p((top + bottom) / 2)}) '
                f'rotate(-90)" text-anchor="middle">{esc(clip(str(spec.get("y_label", "")), 50))}'
                "</text>")
    # colour bar
    bar_h = max(40.0, min(160.0, bottom - top))
    ramp = np.zeros((64, 1, 4), np.uint8)
    ramp[:, 0, :3] = colormap(np.linspace(1, 0, 64))
    ramp[..., 3] = 255
    bx = right + 12
    body.append(f'<image class="heat" x="{_p(bx)}" y="{_p(top)}" width="10" height="{_p(bar_h)}" '
                f'preserveAspectRatio="none" href="{png_data_uri(ramp)}"/>')
    lo_v, hi_v = (10**vmin, 10**vmax) if log else (vmin, vmax)
    body.append(f'<text class="tick" x="{_p(bx + 13)}" y="{_p(top + 9)}">{esc(fmt_tick(hi_v))}</text>')
    body.append(f'<text class="tick" x="{_p(bx + 13)}" y="{_p(top + bar_h)}">'
                f"{esc(fmt_tick(lo_v))}</text>")
    mk, mleg = _markers(spec.get("markers"), lambda v: to_x(v), top, bottom, left, right,
                        lim.markers)
    legend = [f'<li><span class="sw ramp-sw"></span>{esc(fmt(lo_v))} … {esc(fmt(hi_v))}'
              f'{" (log scale)" if log else ""}</li>']
    if bad.any():
        legend.append('<li><span class="sw nonfinite-sw"></span>non-finite (NaN / ±∞)</li>')
    if nonpos.any():
        legend.append('<li><span class="sw nonpos-sw"></span>≤ 0 (exactly zero)</li>')
    if not monotonic:
        notes.append("The x values are not increasing; columns are drawn in the given order.")
    svg = _svg(h, body + mk, str(spec.get("title", "")))
    return _figure(spec, svg, legend + mleg, notes)


def _placed_x_axis(ticks: list[float], to_x: Callable[[float], float | None], y0: float,
                   sx: _Scale, label: str) -> list[str]:
    """An x axis whose ticks sit on the heatmap column holding their step."""
    out: list[str] = []
    for t in ticks:
        x = to_x(t)
        if x is None:
            continue
        out.append(f'<line class="tickmark" x1="{_p(x)}" x2="{_p(x)}" y1="{_p(y0)}" '
                   f'y2="{_p(y0 + 4)}"/>')
        out.append(f'<text class="tick" x="{_p(x)}" y="{_p(y0 + 15)}" text-anchor="middle">'
                   f"{esc(fmt_tick(t))}</text>")
    out.append(f'<text class="alabel" x="{_p((sx.p0 + sx.p1) / 2)}" y="{_p(y0 + 33)}" '
               f'text-anchor="middle">{esc(clip(label, 80))}</text>')
    return out


def _bars(spec: Mapping[str, Any], lim: PlotLimits) -> str:
    labels = [str(v) for v in _seq(spec.get("labels"))]
    values = as_floats(spec.get("values"))
    n = min(len(labels), len(values))
    notes: list[str] = []
    if n > lim.bars:
        notes.append(f"{n - lim.bars} more bars not drawn (showing the first {lim.bars}).")
        n = lim.bars
    labels, values = labels[:n], values[:n]
    if n == 0:
        return _figure(spec, "", [], ["No values to draw."])
    thr = as_floats([spec.get("threshold")])[0]
    fin = values[np.isfinite(values)]
    lo = min([0.0, *fin.tolist()] + ([thr] if math.isfinite(thr) else []))
    hi = max([0.0, *fin.tolist()] + ([thr] if math.isfinite(thr) else []))
    if hi == lo:
        hi = lo + 1.0
    max_len = max(len(clip_middle(s, 30)) for s in labels)
    left = min(210.0, 16 + FONT_W * max_len)
    right, top, row_h = W - 56.0, 10.0, 18.0
    bottom = top + n * row_h + 4
    h = bottom + 44
    sx = _Scale(lo, hi + (hi - lo) * 0.02, left, right)
    body = _x_axis(sx, bottom, top, str(spec.get("y_label") or spec.get("x_label") or ""))
    zero = float(sx(0.0))
    for i, (name, v) in enumerate(zip(labels, values.tolist(), strict=True)):
        y = top + i * row_h
        body.append(f'<text class="tick" x="{_p(left - 5)}" y="{_p(y + 13)}" text-anchor="end">'
                    f"<title>{esc(name)}</title>{esc(clip_middle(name, 30))}</text>")
        if math.isfinite(v):
            x = float(sx(v))
            body.append(f'<rect class="bar" x="{_p(min(x, zero))}" '
                        f'y="{_p(y + 3)}" width="{_p(max(abs(x - zero), 0.8))}" height="12">'
                        f"<title>{esc(name)}: {esc(fmt(v))}</title></rect>")
            body.append(f'<text class="val" x="{_p(max(x, zero) + 3)}" y="{_p(y + 13)}">'
                        f"{esc(fmt(v))}</text>")
        else:
            body.append(f'<text class="val bad" x="{_p(zero + 3)}" y="{_p(y + 13)}">'
                        f"{esc(fmt(v))}</text>")
    legend = []
    if math.isfinite(thr):
        tx = float(sx(thr))
        body.append(f'<line class="threshold" x1="{_p(tx)}" x2="{_p(tx)}" y1="{_p(top)}" '
                    f'y2="{_p(bottom)}"/>')
        legend.append(f'<li><span class="sw threshold-sw"></span>threshold {esc(fmt(thr))}</li>')
    svg = _svg(h, body, str(spec.get("title", "")))
    return _figure(spec, svg, legend, notes)


def _matrix(spec: Mapping[str, Any], lim: PlotLimits) -> str:
    vals = as_matrix(spec.get("values"))
    rows = [str(v) for v in _seq(spec.get("rows"))]
    cols = [str(v) for v in _seq(spec.get("cols"))]
    nr, nc = vals.shape
    rows = (rows + [str(i) for i in range(len(rows), nr)])[:nr]
    cols = (cols + [str(i) for i in range(len(cols), nc)])[:nc]
    notes: list[str] = []
    if nr > lim.matrix or nc > lim.matrix:
        notes.append(f"Showing the first {min(nr, lim.matrix)} × {min(nc, lim.matrix)} of "
                     f"{nr} × {nc} cells.")
        nr, nc = min(nr, lim.matrix), min(nc, lim.matrix)
        vals, rows, cols = vals[:nr, :nc], rows[:nr], cols[:nc]
    if nr == 0 or nc == 0:
        return _figure(spec, "", [], ["No values to draw."])
    row_sum = np.nansum(np.where(np.isfinite(vals), vals, 0), axis=1)
    share = np.divide(vals, row_sum[:, None], out=np.zeros_like(vals), where=row_sum[:, None] > 0)
    max_len = max(len(clip_middle(s, 18)) for s in rows)
    left = min(150.0, 30 + FONT_W * max_len)
    col_len = max(len(clip_middle(s, 14)) for s in cols)
    top = 26 + min(90.0, FONT_W * col_len * 0.72)
    cell = max(8.0, min(64.0, (W - left - 12) / nc, 460.0 / nr))
    h = top + nr * cell + 12
    body = [f'<text class="alabel" x="{_p(left + nc * cell / 2)}" y="13" text-anchor="middle">'
            f'{esc(clip(str(spec.get("col_label", "")), 60))} →</text>',
            f'<text class="alabel" transform="translate(13 {_p(top + nr * cell / 2)}) rotate(-90)"'
            f' text-anchor="middle">{esc(clip(str(spec.get("row_label", "")), 40))} →</text>']
    for j, name in enumerate(cols):
        x = left + (j + 0.5) * cell
        body.append(f'<text class="tick" transform="translate({_p(x + 3)} {_p(top - 5)}) '
                    f'rotate(-45)"><title>{esc(name)}</title>{esc(clip_middle(name, 14))}</text>')
    show_text = cell >= 22
    for i, rname in enumerate(rows):
        y = top + i * cell
        body.append(f'<text class="tick" x="{_p(left - 5)}" y="{_p(y + cell / 2 + 4)}" '
                    f'text-anchor="end"><title>{esc(rname)}</title>{esc(clip_middle(rname, 18))}</text>')
        for j, cname in enumerate(cols):
            v, s = float(vals[i, j]), float(share[i, j])
            x = left + j * cell
            cls = "cell diag" if i == j else "cell"
            tip = f"{rname} → {cname}: {fmt(v)} ({s:.0%} of row)"
            body.append(f'<rect class="{cls}" x="{_p(x)}" y="{_p(y)}" width="{_p(cell)}" '
                        f'height="{_p(cell)}" fill-opacity="{0.06 + 0.94 * max(0.0, s):.2f}">'
                        f"<title>{esc(tip)}</title></rect>")
            if show_text:
                tcls = "cv light" if s > 0.45 else "cv"
                body.append(f'<text class="{tcls}" x="{_p(x + cell / 2)}" y="{_p(y + cell / 2 + 4)}"'
                            f' text-anchor="middle">{esc(fmt_tick(v) if math.isfinite(v) else fmt(v))}'
                            "</text>")
    svg = _svg(h, body, str(spec.get("title", "")))
    legend = ['<li><span class="sw cell-sw"></span>shade: share of the row '
              "(counts in the cells, hover for details)</li>"]
    return _figure(spec, svg, legend, notes)


def _bands(spec: Mapping[str, Any], lim: PlotLimits) -> str:
    x = as_floats(spec.get("x"))
    med = as_floats(spec.get("median"))
    raw = [b for b in _seq(spec.get("bands")) if isinstance(b, Mapping)][:6]
    n = min([len(x), len(med)] + [min(len(as_floats(b.get("lo"))), len(as_floats(b.get("hi"))))
                                  for b in raw])
    if n == 0:
        return _figure(spec, "", [], ["No values to draw."])
    bands = [(as_floats(b.get("lo"))[:n], as_floats(b.get("hi"))[:n]) for b in raw]
    names = [str(b.get("name", "")) for b in raw]
    notes: list[str] = []
    xb, mb, bb = bin_bands(x[:n], med[:n], bands, lim.band_points)
    if n > len(xb):
        notes.append(f"{n} steps shown in {len(xb)} bins (band edges keep their extremes).")
    allv = np.concatenate([mb] + [a for lh in bb for a in lh])
    allv = allv[np.isfinite(allv)]
    if not len(allv) or not np.isfinite(xb).any():
        return _figure(spec, "", [], ["No finite values to draw."])
    left, right, top, h = 62.0, W - 14.0, 12.0, 290.0
    bottom = h - 44
    xf = xb[np.isfinite(xb)]
    sx = _Scale(float(xf.min()), float(xf.max()), left, right)
    sy = _Scale(*_padded(float(allv.min()), float(allv.max()), log=False), bottom, top)
    body = _y_axis(sy, left, right, str(spec.get("y_label", ""))) + _x_axis(
        sx, bottom, top, str(spec.get("x_label", "")))
    legend = []
    # widest band first so narrower ones are drawn on top
    order = sorted(range(len(bb)), key=lambda k: -float(np.nanmean(bb[k][1] - bb[k][0]))
                   if np.isfinite(bb[k][1] - bb[k][0]).any() else 0.0)
    for rank, k in enumerate(order):
        lo, hi = bb[k]
        m = np.isfinite(xb) & np.isfinite(lo) & np.isfinite(hi)
        px, plo, phi = sx(xb), sy(np.where(m, lo, 0)), sy(np.where(m, hi, 0))
        for a, b in _runs(m):
            pts = [f"{_p(px[i])},{_p(phi[i])}" for i in range(a, b)]
            pts += [f"{_p(px[i])},{_p(plo[i])}" for i in range(b - 1, a - 1, -1)]
            body.append(f'<polygon class="band b{min(rank, 3)}" points="{" ".join(pts)}">'
                        f"<title>{esc(names[k])}</title></polygon>")
        legend.append(f'<li><span class="sw band-sw b{min(rank, 3)}"></span>'
                      f"{esc(clip(names[k], 60))}</li>")
    m = np.isfinite(xb) & np.isfinite(mb)
    px, py = sx(xb), sy(np.where(m, mb, 0))
    d = "".join("M" + " ".join(f"{_p(px[i])},{_p(py[i])}" for i in range(a, b)) for a, b in _runs(m))
    if d:
        body.append(f'<path class="ln s0" d="{d}"><title>median</title></path>')
    legend.insert(0, '<li><span class="sw s0"></span>median</li>')
    svg = _svg(h, body, str(spec.get("title", "")))
    return _figure(spec, svg, legend, notes)


PLOT_KINDS: dict[str, Callable[[Mapping[str, Any], PlotLimits], str]] = {
    "line": _line,
    "heatmap": _heatmap,
    "bars": _bars,
    "matrix": _matrix,
    "bands": _bands,
}


def render_plot(spec: Any, limits: PlotLimits | None = None) -> str:
    """One plot spec as an HTML ``<figure>``; a bad spec gives a figure saying why."""
    lim = limits or PlotLimits()
    if not isinstance(spec, Mapping):
        return _figure({"title": "plot"}, "", [], [f"Not a plot spec: {clip(repr(spec), 80)}"])
    kind = spec.get("kind")
    fn = PLOT_KINDS.get(kind) if isinstance(kind, str) else None
    if fn is None:
        return _figure(spec, "", [], [f"Unknown plot kind {clip(repr(kind), 40)}; "
                                      f"known: {', '.join(PLOT_KINDS)}."])
    try:
        return fn(spec, lim)
    except Exception as exc:  # a malformed spec must not cost the user the whole report
        return _figure(spec, "", [], [f"This plot could not be drawn: {type(exc).__name__}: "
                                      f"{clip(str(exc), 200)}"])
