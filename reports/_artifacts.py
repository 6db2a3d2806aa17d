"""What the Prefect UI shows of an audit: a markdown summary and the rows of a findings table.

The flows turn these into Prefect artifacts (``create_markdown_artifact``,
``create_table_artifact``); nothing here imports Prefect. Run strings are escaped for markdown
(and for HTML inside markdown), because the UI renders the summary.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from ._sections import STATUS_LABEL, ordered
from ._text import clip, fmt

if TYPE_CHECKING:
    from trainaudit.tasks._findings import AuditResult, Finding

__all__ = ["markdown_summary", "findings_table", "md_escape"]

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~<])")


def md_escape(text: Any) -> str:
    """``text`` safe inside markdown: HTML-escaped, markdown punctuation backslash-escaped,
    newlines folded to spaces."""
    s = html.escape(" ".join(str(text).split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s)


def _first_step(f: Finding) -> str:
    fs = f.first_step
    if fs is None:
        return ""
    rank = f", rank {fs.rank}" if fs.rank else ""
    return f"{fs.step} ({fs.mode}{rank})"


def findings_table(result: AuditResult) -> list[dict[str, str]]:
    """One row per finding, worst first, for a Prefect table artifact: ``rule``, ``status``,
    ``severity``, ``first_step`` (``"812 (train)"``, empty when the rule did not fire),
    ``tensors`` (the first five, then a count) and ``message``. Values are plain text."""
    rows = []
    for f in ordered(result.findings):
        tensors = ", ".join(f.tensors[:5])
        if len(f.tensors) > 5:
            tensors += f" (+{len(f.tensors) - 5} more)"
        rows.append({
            "rule": f.rule,
            "status": f.status,
            "severity": f.severity,
            "first_step": _first_step(f),
            "tensors": tensors,
            "message": clip(f.message, 300),
        })
    return rows


def markdown_summary(result: AuditResult, *, report_url: str | None = None,
                     max_items: int = 20) -> str:
    """A short markdown summary: verdict, counts, the findings that fired (worst first), the
    rules that could not look, and a link to the report when ``report_url`` is given."""
    run = result.run if isinstance(result.run, dict) else {}
    run_id = run.get("run_id") or run.get("uri") or "unnamed run"
    counts = result.counts()
    verdict = result.verdict()
    n_ok = sum(1 for f in result.findings if f.status == "ok")
    lines = [f"## trainaudit: {verdict.upper()} · {md_escape(run_id)}", ""]
    facts = [f"{k}: {md_escape(run[k])}" for k in ("framework", "status", "steps") if k in run
             and not isinstance(run[k], dict | list)]
    if facts:
        lines += [" · ".join(facts), ""]
    fired = ordered(result.triggered)
    sev = ", ".join(f"{counts[s]} {s}" for s in ("critical", "warning", "info") if counts[s])
    lines.append(
        f"**{len(fired)} fired**" + (f" ({sev})" if sev else "")
        + f" · {n_ok} ok · {counts['not_evaluable']} not evaluable · {counts['error']} error"
    )
    lines.append("")
    if fired:
        lines.append("### Fired")
        for f in fired[:max_items]:
            when = f" (from step {fmt(f.first_step.step)})" if f.first_step else ""
            lines.append(f"- **{f.severity}** {md_escape(f.rule)}{when}: "
                         f"{md_escape(clip(f.message, 240))}")
        if len(fired) > max_items:
            lines.append(f"- … {len(fired) - max_items} more")
        lines.append("")
    blind = [f for f in ordered(result.findings) if f.status in ("not_evaluable", "error")]
    if blind:
        lines.append("### Could not look")
        for f in blind[:max_items]:
            lines.append(f"- {md_escape(f.rule)} ({STATUS_LABEL.get(f.status, f.status)}): "
                         f"{md_escape(clip(f.message, 200))}")
        if len(blind) > max_items:
            lines.append(f"- … {len(blind) - max_items} more")
        lines.append("")
    if report_url:
        safe = str(report_url).replace(" ", "%20").replace(")", "%29").replace("(", "%28")
        lines.append(f"[Open the full report]({safe})")
    return "\n".join(lines).rstrip() + "\n"
