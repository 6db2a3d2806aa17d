"""The parts of the page, top to bottom: verdict, run, coverage, rule table, findings.

Each function takes the audit (or one finding) and returns escaped HTML; ``_html.py`` puts
them together and keeps the page within its size budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._svg import PlotLimits, render_plot
from ._text import anchor_id, clip, esc, fmt
from ._values import ValueLimits, kv_table, steps_text, value_html

if TYPE_CHECKING:  # the report reads findings duck-typed: importing it loads no task code
    from trainaudit.tasks._findings import AuditResult, Finding

__all__ = [
    "PageLimits",
    "ordered",
    "verdict_card",
    "run_card",
    "coverage_card",
    "rule_table",
    "finding_section",
    "series_section",
    "STATUS_LABEL",
]

STATUS_ORDER = {"triggered": 0, "error": 1, "not_evaluable": 2, "ok": 3}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
STATUS_LABEL = {"triggered": "triggered", "ok": "ok", "not_evaluable": "not evaluable",
                "error": "error"}


@dataclass(frozen=True, kw_only=True)
class PageLimits:
    """Everything the page caps; :meth:`shrunk` is applied until the page fits its budget."""

    plots: PlotLimits = field(default_factory=PlotLimits)
    values: ValueLimits = field(default_factory=ValueLimits)
    plots_per_finding: int = 6
    tensors: int = 200
    message: int = 1000
    draw_plots: bool = True

    def shrunk(self) -> PageLimits:
        return PageLimits(
            plots=self.plots.shrunk(),
            values=self.values.shrunk(),
            plots_per_finding=max(2, self.plots_per_finding // 2),
            tensors=max(20, self.tensors // 2),
            message=max(200, self.message // 2),
            draw_plots=self.draw_plots,
        )


def ordered(findings: list[Finding]) -> list[Finding]:
    """Worst first: triggered by severity, then errors, not evaluable, ok; then first step."""

    def key(ix: tuple[int, Finding]) -> tuple[int, int, float, int]:
        i, f = ix
        sev = SEVERITY_ORDER.get(f.severity, 3) if f.triggered else 0
        step = float(f.first_step.step) if f.first_step else float("inf")
        return STATUS_ORDER.get(f.status, 4), sev, step, i

    return [f for _, f in sorted(enumerate(findings), key=key)]


def anchors(findings: list[Finding]) -> dict[int, str]:
    """Element ids per finding (by ``id()``), unique even for odd or repeated rule ids."""
    taken: set[str] = set()
    return {id(f): anchor_id(f.rule, taken) for f in findings}


def _badge(status: str, severity: str) -> str:
    """Status badge (coloured by severity when triggered) and severity badge."""
    scls = f"sev-{severity}" if status == "triggered" else f"st-{status}"
    st = f'<span class="badge {esc(scls)}">{esc(STATUS_LABEL.get(status, status))}</span>'
    dim = "" if status == "triggered" else " dim"
    sev = f'<span class="badge sev-{esc(severity)}{dim}">{esc(severity)}</span>'
    return st + sev


def _first_step(f: Finding, *, long: bool = False) -> str:
    fs = f.first_step
    if fs is None:
        return ""
    bits = [esc(fs.mode)]
    if long and fs.mode_step is not None and fs.mode_step != fs.step:
        bits.append(f"{esc(fs.mode)} step {esc(fmt(fs.mode_step))}")
    if fs.rank:
        bits.append(f"rank {esc(fmt(fs.rank))}")
    return f'{esc(fmt(fs.step))} <span class="more">{", ".join(bits)}</span>'


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ------------------------------------------------------------------------------------ top


def verdict_card(result: AuditResult, ids: dict[int, str]) -> str:
    counts = result.counts()
    verdict = result.verdict()
    n_ok = sum(1 for f in result.findings if f.status == "ok")
    n_looked = n_ok + len(result.triggered)
    blind = counts["not_evaluable"] + counts["error"]
    if verdict == "healthy" and n_looked == 0:
        word, cls = "not evaluated", "v-unknown"
        line = "No rule could look at this run: nothing was found because nothing was seen."
    elif verdict == "healthy":
        word, cls = "healthy", "v-healthy"
        line = f"No rule fired ({n_ok} passed)."
        if blind:
            line += f" But {_plural(blind, 'rule')} could not look: see capture coverage."
    else:
        word, cls = verdict, f"v-{verdict}"
        parts = [f"{counts[s]} {s}" for s in ("critical", "warning", "info") if counts[s]]
        line = f"{_plural(len(result.triggered), 'rule')} fired: {', '.join(parts)}."
    chips = []
    for key, label, c in (("critical", "critical", "sev-critical"),
                          ("warning", "warning", "sev-warning"), ("info", "info", "sev-info")):
        chips.append((counts[key], label, c))
    chips += [(n_ok, "ok", "st-ok"), (counts["not_evaluable"], "not evaluable", "st-not_evaluable"),
              (counts["error"], "error", "st-error")]
    lis = "".join(
        f'<li class="{c}{" zero" if n == 0 else ""}" data-count="{esc(label)}">'
        f"<b>{n}</b>{esc(label)}</li>"
        for n, label, c in chips
    )
    fired = ""
    if result.triggered:
        items = []
        for f in ordered(result.triggered)[:6]:
            when = f" from step {esc(fmt(f.first_step.step))}" if f.first_step else ""
            items.append(f'<li><span class="badge sev-{esc(f.severity)}">{esc(f.severity)}</span> '
                         f'<a href="#{ids[id(f)]}">{esc(f.rule)}</a>{when}: '
                         f"{esc(clip(f.message, 180))}</li>")
        rest = len(result.triggered) - 6
        if rest > 0:
            items.append(f'<li class="more">… {rest} more in the rule table</li>')
        fired = '<ul class="fired">' + "".join(items) + "</ul>"
    return (f'<div class="card verdict {cls}" id="verdict" data-verdict="{esc(word)}">'
            f'<div class="brand">Verdict</div><div class="vword">{esc(word.upper())}</div>'
            f'<p class="vline">{esc(line)}</p><ul class="counts">{lis}</ul>{fired}</div>')


_RUN_KEYS = (("uri", "Location"), ("framework", "Framework"), ("status", "Capture status"),
             ("steps", "Steps"), ("modes", "Modes"), ("ranks", "Ranks"), ("created", "Started"),
             ("ended", "Ended"))


def run_card(result: AuditResult, lim: PageLimits) -> str:
    run = result.run if isinstance(result.run, Mapping) else {}
    rows = []
    for key, label in _RUN_KEYS:
        if key not in run or run[key] in (None, "", [], {}):
            continue
        v = run[key]
        if key == "ranks" and isinstance(v, list):
            text = value_html(v, lim.values) + f' <span class="more">({_plural(len(v), "rank")})</span>'
        elif key == "status" and v != "complete":
            text = f'<span class="badge sev-warning">{esc(v)}</span>'
        elif key == "uri":
            text = f'<code>{esc(clip(str(v), 300))}</code>'
        else:
            text = value_html(v, lim.values, depth=lim.values.depth)
        rows.append(f"<dt>{esc(label)}</dt><dd>{text}</dd>")
    known = {k for k, _ in _RUN_KEYS} | {"run_id", "config"}
    for k, v in run.items():
        if k not in known:
            rows.append(f"<dt>{esc(clip(str(k), 40))}</dt>"
                        f"<dd>{value_html(v, lim.values, depth=lim.values.depth)}</dd>")
    audited = []
    if result.created:
        audited.append(esc(result.created))
    if result.trainaudit_version:
        audited.append(f"trainaudit {esc(result.trainaudit_version)}")
    total = sum(v for v in result.timings.values() if isinstance(v, int | float))
    if result.timings:
        audited.append(f"in {esc(fmt(round(total, 2)))} s")
    if audited:
        rows.append(f"<dt>Audited</dt><dd>{' · '.join(audited)}</dd>")
    config = run.get("config")
    cfg = ""
    if isinstance(config, Mapping) and config:
        cfg = f"<details><summary>Capture configuration</summary>{kv_table(config, lim.values)}</details>"
    return f'<div class="card" id="run"><div class="brand">Run</div><dl class="facts">{"".join(rows)}</dl>{cfg}</div>'


def coverage_card(result: AuditResult, lim: PageLimits, ids: dict[int, str]) -> str:
    cov = result.coverage if isinstance(result.coverage, Mapping) else {}
    rows = []
    coll = cov.get("collections")
    if isinstance(coll, Mapping) and coll:
        chips = "".join(f'<span class="chip">{esc(clip(str(k), 40))} · {esc(fmt(v)) if not isinstance(v, Mapping | list) else value_html(v, lim.values, lim.values.depth)}</span>'
                        for k, v in coll.items())
        rows.append(f'<dt>Captured</dt><dd><div class="chips">{chips}</div></dd>')
    elif coll is not None:
        rows.append("<dt>Captured</dt><dd>nothing</dd>")
    missing = _first(cov, "missing", "missing_collections")
    if isinstance(missing, list) and missing:
        chips = "".join(f'<span class="chip miss">{esc(clip(str(m), 40))}</span>' for m in missing)
        rows.append(f'<dt>Not captured</dt><dd><div class="chips">{chips}</div></dd>')
    if "steps" in cov:
        rows.append(f"<dt>Steps</dt><dd>{value_html(cov['steps'], lim.values, lim.values.depth)}</dd>")
    lost = cov.get("lost")
    lost_any = _has_loss(lost)
    if lost is not None:
        text = value_html(lost, lim.values, lim.values.depth) if lost_any else "nothing"
        cls = ' class="nf"' if lost_any else ""
        rows.append(f"<dt>Lost in capture</dt><dd><span{cls}>{text}</span></dd>")
    errors = _first(cov, "errors", "capture_errors")
    scan_errors = cov.get("scan_errors")
    if isinstance(scan_errors, list):  # errors reading the run count as lost coverage too
        errors = (errors if isinstance(errors, list) else []) + scan_errors
    if isinstance(errors, list):
        if errors:
            items = []
            for e in errors[: lim.values.list_items]:
                if isinstance(e, Mapping):
                    kind = esc(clip(str(e.get("kind", "error")), 60))
                    rest = {k: v for k, v in e.items() if k not in ("kind", "message")}
                    extra = f' <span class="more">{value_html(rest, lim.values, lim.values.depth)}</span>' if rest else ""
                    items.append(f"<li><b>{kind}</b>: {esc(clip(str(e.get('message', '')), 300))}{extra}</li>")
                else:
                    items.append(f"<li>{value_html(e, lim.values, lim.values.depth)}</li>")
            more = f'<li class="more">… {len(errors) - len(items)} more</li>' if len(errors) > len(items) else ""
            rows.append(f'<dt>Errors</dt><dd><ul class="fired">{"".join(items)}{more}</ul></dd>')
        else:
            rows.append("<dt>Errors</dt><dd>none</dd>")
    for k, v in cov.items():
        if k not in _COVERAGE_KEYS:
            rows.append(f"<dt>{esc(clip(str(k), 40))}</dt><dd>{value_html(v, lim.values, lim.values.depth)}</dd>")
    if not rows:
        rows.append("<dt>Coverage</dt><dd>The audit recorded no capture coverage.</dd>")
    blind = [f for f in ordered(result.findings) if f.status in ("not_evaluable", "error")]
    if blind:
        lis = [f'<li><a href="#{ids[id(f)]}">{esc(f.rule)}</a> '
               f'<span class="badge st-{esc(f.status)}">{esc(STATUS_LABEL.get(f.status, f.status))}</span> '
               f"{esc(clip(f.message, 200))}</li>" for f in blind]
        blind_html = f'<ul class="fired" id="blind-rules">{"".join(lis[:5])}</ul>'
        if len(lis) > 5:
            blind_html += (f"<details><summary>{len(lis) - 5} more rules could not look</summary>"
                           f'<ul class="fired">{"".join(lis[5:])}</ul></details>')
        rows.append(f"<dt>Could not look</dt><dd>{blind_html}</dd>")
    else:
        rows.append("<dt>Could not look</dt><dd>every rule could evaluate</dd>")
    warn = ""
    if lost_any or (isinstance(errors, list) and errors):
        warn = ('<p class="warnbox">The capture recorded lost data or errors: findings cover only '
                "what was captured.</p>")
    return (f'<div class="card" id="coverage"><div class="brand">Capture coverage</div>{warn}'
            f'<dl class="facts">{"".join(rows)}</dl></div>')


_COVERAGE_KEYS = ("collections", "missing", "missing_collections", "steps", "lost", "errors",
                  "capture_errors", "scan_errors")


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` present in ``d`` (coverage key spellings vary)."""
    return next((d[k] for k in keys if k in d), None)


def _has_loss(v: Any) -> bool:
    if isinstance(v, Mapping):
        return any(_has_loss(x) for x in v.values())
    if isinstance(v, list | tuple):
        return len(v) > 0
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    return bool(v)


# ------------------------------------------------------------------------------ rule table


def rule_table(result: AuditResult, lim: PageLimits, ids: dict[int, str]) -> str:
    rows = []
    for i, f in enumerate(ordered(result.findings)):
        sev_rank = SEVERITY_ORDER.get(f.severity, 3)
        st_rank = STATUS_ORDER.get(f.status, 4) * 10 + (sev_rank if f.triggered else 0)
        scls = f"sev-{f.severity}" if f.triggered else f"st-{f.status}"
        st = esc(STATUS_LABEL.get(f.status, f.status))
        dim = "" if f.triggered else " dim"
        step = f.first_step.step if f.first_step else ""
        tens_html = ", ".join(esc(clip(t, 48)) for t in f.tensors[:4])
        if len(f.tensors) > 4:
            tens_html += f' <span class="more">+{len(f.tensors) - 4}</span>'
        rows.append(
            f'<tr class="row-{esc(f.status)} {esc(scls)}" data-status="{esc(f.status)}" '
            f'data-severity="{esc(f.severity)}" data-rule="{esc(f.rule)}" data-i="{i}">'
            f'<td data-sort="{st_rank}"><span class="badge {esc(scls)}">{st}</span></td>'
            f'<td data-sort="{sev_rank}"><span class="badge sev-{esc(f.severity)}{dim}">{esc(f.severity)}</span></td>'
            f'<td><a href="#{ids[id(f)]}">{esc(f.rule)}</a></td>'
            f'<td class="num" data-sort="{esc(step)}">{_first_step(f)}</td>'
            f'<td class="tens">{tens_html}</td>'
            f'<td class="msg">{esc(clip(f.message, 300))}</td></tr>'
        )
    controls = (
        '<div class="controls">'
        '<input id="rule-filter" type="search" placeholder="Filter rules, layers, messages…" '
        'aria-label="Filter the rule table">'
        '<select id="status-filter" aria-label="Status">'
        '<option value="all">all statuses</option><option value="attention">needs attention</option>'
        '<option value="triggered">triggered</option><option value="error">error</option>'
        '<option value="not_evaluable">not evaluable</option><option value="ok">ok</option></select>'
        '<select id="severity-filter" aria-label="Severity">'
        '<option value="all">all severities</option><option value="critical">critical</option>'
        '<option value="warning">warning</option><option value="info">info</option></select>'
        f'<span class="count" id="rule-count" aria-live="polite">{len(rows)} rules</span></div>'
    )
    head = "".join(
        f'<th scope="col"{" data-type=" + chr(34) + "num" + chr(34) if num else ""}>'
        f'<button type="button">{label}</button></th>'
        for label, num in (("Status", True), ("Severity", True), ("Rule", False),
                           ("First step", True), ("Layers / features", False), ("Message", False))
    )
    return (f'<section id="rules"><h2>Rules</h2>{controls}<div class="tablewrap">'
            f'<table id="rule-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table></div></section>")


# --------------------------------------------------------------------------------- findings


def _plots(specs: Any, lim: PageLimits) -> str:
    if not lim.draw_plots or not isinstance(specs, list) or not specs:
        return ""
    shown = specs[: lim.plots_per_finding]
    out = "".join(render_plot(s, lim.plots) for s in shown)
    more = (f'<p class="fignote">{len(specs) - len(shown)} more plots are in audit.json.</p>'
            if len(specs) > len(shown) else "")
    return f'<div class="plots">{out}</div>{more}'


def _tensors(f: Finding, lim: PageLimits) -> str:
    if not f.tensors:
        return ""
    first = "".join(f'<span class="chip mono" title="{esc(t)}">{esc(clip(t, 60))}</span>'
                    for t in f.tensors[:12])
    rest = f.tensors[12: lim.tensors]
    more = ""
    if rest:
        items = "".join(f'<span class="chip mono">{esc(clip(t, 120))}</span>' for t in rest)
        cut = len(f.tensors) - 12 - len(rest)
        tail = f' <span class="more">… {cut} more in audit.json</span>' if cut > 0 else ""
        more = f'<details><summary>{len(f.tensors) - 12} more</summary><div class="chips">{items}</div>{tail}</details>'
    return f'<dt>Involved</dt><dd><div class="chips">{first}</div>{more}</dd>'


def _explain(f: Finding) -> str:
    if not (f.problem or f.fix):
        return ""
    parts = []
    if f.problem:
        parts.append(f'<div class="problem"><h4>What is wrong</h4><p>{esc(f.problem)}</p></div>')
    if f.fix:
        parts.append(f'<div class="fix"><h4>What usually fixes it</h4><p>{esc(f.fix)}</p></div>')
    return f'<div class="explain">{"".join(parts)}</div>'


def finding_section(f: Finding, anchor: str, lim: PageLimits) -> str:
    ev = f.evidence if isinstance(f.evidence, Mapping) else {"evidence": f.evidence}
    ev_keys = [k for k in ev if k != "plots"]
    scls = f"sev-{f.severity}" if f.triggered else f"st-{f.status}"
    head = (f'<h3>{_badge(f.status, f.severity)}<span class="rname">{esc(f.rule)}</span></h3>'
            f'<p class="msg">{esc(clip(f.message, lim.message))}</p>')
    attrs = (f'id="{anchor}" data-rule="{esc(f.rule)}" data-status="{esc(f.status)}" '
             f'data-severity="{esc(f.severity)}"')
    evidence = kv_table(ev, lim.values, skip=("plots",)) if ev_keys else ""
    params = (f"<details><summary>Parameters used</summary>{kv_table(f.params, lim.values)}</details>"
              if f.params else "")
    if f.triggered:
        facts = []
        if f.first_step:
            facts.append(f"<dt>First step</dt><dd>{_first_step(f, long=True)}</dd>")
        if f.steps:
            facts.append(f"<dt>Steps</dt><dd>{steps_text(f.steps)}</dd>")
        facts.append(_tensors(f, lim))
        ev_html = f"<h4>Evidence</h4>{evidence}" if evidence else ""
        return (f'<section class="finding {esc(scls)}" {attrs}>{head}'
                f'<dl class="facts">{"".join(facts)}</dl>{_plots(ev.get("plots"), lim)}'
                f"{_explain(f)}{ev_html}{params}</section>")
    inner = _plots(ev.get("plots"), lim) + (f"<h4>Evidence</h4>{evidence}" if evidence else "")
    inner += (f'<dl class="facts">{_tensors(f, lim)}</dl>' if f.tensors else "") + _explain(f)
    details = (f"<details><summary>Evidence and plots</summary>{inner}</details>"
               if inner else "")
    return f'<section class="finding small {esc(scls)}" {attrs}>{head}{details}{params}</section>'


def series_section(result: AuditResult, lim: PageLimits) -> str:
    """Run-level plots (``series["loss"]``, ``series["gradient_norms"]``, then any others)."""
    series = result.series if isinstance(result.series, Mapping) else {}
    keys = [k for k in ("loss", "gradient_norms") if k in series]
    keys += [k for k in series if k not in keys and isinstance(series[k], Mapping)
             and "kind" in series[k]]
    if not keys or not lim.draw_plots:
        return ""
    figs = "".join(render_plot(series[k], lim.plots) for k in keys[: lim.plots_per_finding + 2])
    return f'<section id="curves"><h2>Training curves</h2><div class="plots">{figs}</div></section>'
