"""Safe text: escaping, number formatting and clipping, used by every part of the page.

Every string that came from a run (run id, layer, tensor, feature and class names, messages,
evidence keys) reaches the page through :func:`esc`, which escapes ``& < > " '``; there is no
other path into the HTML. Names are also clipped for layout, with the full text kept in a
``title`` (escaped the same way).
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

__all__ = ["esc", "clip", "clip_middle", "num", "fmt", "fmt_tick", "anchor_id", "is_nonfinite_str"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` for text and for quoted attribute values."""
    return html.escape(str(value), quote=True)


def clip(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters with an ellipsis (not escaped)."""
    text = str(text)
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def clip_middle(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters in the middle (``encoder.bl…fc.weight``): a layer's
    name is told apart by its start and its end (not escaped)."""
    text = str(text)
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head):]


def is_nonfinite_str(v: Any) -> bool:
    return isinstance(v, str) and v.lower() in _NONFINITE


def num(v: Any) -> float | None:
    """A float from a JSON number or a ``"nan"``/``"inf"``/``"-inf"`` string; else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str) and v.lower() in _NONFINITE:
        return _NONFINITE[v.lower()]
    if hasattr(v, "item") and not isinstance(v, str):  # numpy scalar
        try:
            return float(v.item())
        except (TypeError, ValueError):
            return None
    return None


def fmt(v: Any) -> str:
    """A number for people: 4 significant digits, exponent form outside [1e-3, 1e6),
    integers as they are; ``NaN``, ``+∞``, ``−∞`` for non-finite values (not escaped:
    the result only contains digits, signs, letters and ``.``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    f = num(v)
    if f is None:
        return str(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+∞" if f > 0 else "−∞"
    if f == 0:
        return "0"
    a = abs(f)
    if a >= 1e4 and a < 1e15 and f == int(f):
        return str(int(f))
    if 1e-3 <= a < 1e6:
        return f"{f:.4g}"
    return _clean_exp(f"{f:.3g}")


def fmt_tick(v: float) -> str:
    """A short axis tick label: 3 significant digits, ``k``/``M`` suffixes for large values."""
    if v == 0:
        return "0"
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if a >= div and a < div * 1e3:
            scaled = v / (1e3 if suffix == "k" else div)
            return f"{scaled:.3g}{suffix}"
    if 1e-3 <= a < 1e4:
        return f"{v:.4g}"
    return _clean_exp(f"{v:.2g}")


def _clean_exp(s: str) -> str:
    """``1.2e-07`` → ``1.2e-7``."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def anchor_id(rule: str, taken: set[str]) -> str:
    """A unique, URL-safe element id ``rule-<id>`` for a rule id (custom rules may use any
    characters); ``taken`` collects the ids already given out."""
    safe = re.sub(r"[^A-Za-z0-9_-]", lambda m: f"_{ord(m.group(0)):x}", rule) or "_"
    base = f"rule-{safe}"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out
