"""Any JSON value (evidence, parameters, coverage, run facts) as compact, escaped HTML.

Rules put whatever numbers explain them into ``Finding.evidence``; the report cannot know their
shape in advance. Scalars are formatted, lists of scalars are joined, lists of records become
small tables, dicts become key/value tables; everything is capped (:class:`ValueLimits`), so a
rule that dumps a 100,000-element list into its evidence does not blow the size budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._text import clip, esc, fmt, is_nonfinite_str, num

__all__ = ["ValueLimits", "value_html", "kv_table", "steps_text"]


@dataclass(frozen=True, kw_only=True)
class ValueLimits:
    """How much of a value the page shows."""

    list_items: int = 16
    dict_keys: int = 40
    record_rows: int = 15
    record_cols: int = 8
    text: int = 600
    depth: int = 3

    def shrunk(self) -> ValueLimits:
        return ValueLimits(
            list_items=max(4, self.list_items // 2),
            dict_keys=max(8, self.dict_keys // 2),
            record_rows=max(4, self.record_rows // 2),
            record_cols=max(3, self.record_cols // 2),
            text=max(120, self.text // 2),
            depth=max(1, self.depth - 1),
        )


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool) or num(v) is not None


def _scalar_html(v: Any, lim: ValueLimits) -> str:
    if v is None:
        return '<span class="more">–</span>'
    if is_nonfinite_str(v) or (isinstance(v, float) and v != v):
        return f'<span class="nf">{esc(fmt(v))}</span>'
    if isinstance(v, str):
        return esc(clip(v, lim.text))
    f = num(v)
    if isinstance(v, float) and f is not None and f in (float("inf"), float("-inf")):
        return f'<span class="nf">{esc(fmt(v))}</span>'
    return esc(fmt(v))


def _more(n: int) -> str:
    return f' <span class="more">… {n} more</span>' if n > 0 else ""


def value_html(v: Any, lim: ValueLimits | None = None, depth: int = 0) -> str:
    """``v`` as escaped HTML, capped by ``lim``."""
    lim = lim or ValueLimits()
    if hasattr(v, "tolist") and not isinstance(v, str | bytes):
        if getattr(v, "ndim", 0) >= 1 and len(v) > lim.list_items:  # convert only what shows
            return value_html(v[: lim.list_items], lim, depth) + _more(len(v) - lim.list_items)
        v = v.tolist()
    if _scalar(v):
        return _scalar_html(v, lim)
    if isinstance(v, Mapping):
        if depth >= lim.depth:
            pairs = list(v.items())
            text = "; ".join(f"{esc(clip(str(k), 60))}: {value_html(x, lim, lim.depth)}"
                             for k, x in pairs[: lim.list_items])
            return text + _more(len(pairs) - lim.list_items)
        return kv_table(v, lim, depth + 1)
    if isinstance(v, list | tuple):
        items: list[Any] = list(v)
        if not items:
            return '<span class="more">none</span>'
        head = items[: lim.record_rows + lim.list_items]  # judge the shape by what is shown
        if all(_scalar(x) for x in head):
            shown = items[: lim.list_items]
            return ", ".join(_scalar_html(x, lim) for x in shown) + _more(len(items) - len(shown))
        if items and all(isinstance(x, Mapping) for x in head) and depth < lim.depth:
            return _records(items, lim, depth + 1)
        shown = items[: max(3, lim.list_items // 2)]
        inner = "".join(f"<li>{value_html(x, lim, depth + 1)}</li>" for x in shown)
        return f'<ul class="vlist">{inner}</ul>' + _more(len(items) - len(shown))
    return esc(clip(str(v), lim.text))


def kv_table(d: Mapping[str, Any], lim: ValueLimits | None = None, depth: int = 0,
             skip: tuple[str, ...] = ()) -> str:
    """A two-column key/value table of ``d`` (keys escaped too)."""
    lim = lim or ValueLimits()
    items = [(k, x) for k, x in d.items() if k not in skip]
    shown = items[: lim.dict_keys]
    rows = "".join(
        f'<tr><th scope="row">{esc(clip(str(k), 80))}</th><td>{value_html(x, lim, depth)}</td></tr>'
        for k, x in shown
    )
    more = (f'<tr><td colspan="2" class="more">… {len(items) - len(shown)} more entries '
            "(all in audit.json)</td></tr>") if len(items) > len(shown) else ""
    return f'<table class="ev"><tbody>{rows}{more}</tbody></table>'


def _records(items: list[Mapping[str, Any]], lim: ValueLimits, depth: int) -> str:
    cols: list[str] = []
    for it in items[: lim.record_rows]:
        for k in it:
            if k not in cols and len(cols) < lim.record_cols:
                cols.append(k)
    head = "".join(f'<th scope="col">{esc(clip(str(c), 40))}</th>' for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{value_html(it.get(c), lim, lim.depth)}</td>" for c in cols) + "</tr>"
        for it in items[: lim.record_rows]
    )
    more = (f'<tr><td colspan="{len(cols)}" class="more">… {len(items) - lim.record_rows} more rows '
            "(all in audit.json)</td></tr>") if len(items) > lim.record_rows else ""
    return f'<table class="ev"><thead><tr>{head}</tr></thead><tbody>{body}{more}</tbody></table>'


def steps_text(steps: Any, limit: int = 12) -> str:
    """``[[a, b], ...]`` ranges as escaped text ``a–b, c, …``."""
    if not isinstance(steps, list | tuple) or not steps:
        return ""
    parts = []
    for r in steps[:limit]:
        if isinstance(r, list | tuple) and len(r) == 2:
            a, b = r
            parts.append(esc(fmt(a)) if a == b else f"{esc(fmt(a))}–{esc(fmt(b))}")
        else:
            parts.append(esc(fmt(r)))
    return ", ".join(parts) + _more(len(steps) - limit)
