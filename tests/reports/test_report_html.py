"""The page: structure, verdict, rule table, sections, plots, coverage, offline, budget."""

from __future__ import annotations

import json
import re

import pytest
from _html_check import ParsedPage
from _report_samples import RULE_IDS, healthy_result, long_result, mlp_result, xgb_result

from trainaudit.reports import MAX_REPORT_BYTES, render_html, write_report
from trainaudit.reports._script import SCRIPT, script_hash
from trainaudit.reports._svg import PLOT_KINDS, PlotLimits, render_plot
from trainaudit.tasks._findings import AuditResult, Finding


@pytest.fixture(scope="module")
def mlp():
    r = mlp_result()
    return r, render_html(r)


def _rows(html: str) -> dict[str, str]:
    page = ParsedPage(html)
    return {a["data-rule"]: a["data-status"] for t, a in page.tags
            if t == "tr" and "data-rule" in a}


def test_every_rule_has_a_row_and_a_section_with_its_status(mlp):
    result, html = mlp
    rows = _rows(html)
    assert set(rows) == set(RULE_IDS)
    assert rows == {f.rule: f.status for f in result.findings}
    page = ParsedPage(html)
    sections = {a["data-rule"]: a for t, a in page.tags if t == "section" and "data-rule" in a}
    assert set(sections) == set(RULE_IDS)
    links = {a["href"] for t, a in page.tags if t == "a" and a.get("href", "").startswith("#rule-")}
    assert links == {"#" + s["id"] for s in sections.values()}


def test_table_is_worst_first(mlp):
    _, html = mlp
    statuses = list(_rows(html).values())
    order = {"triggered": 0, "error": 1, "not_evaluable": 2, "ok": 3}
    assert statuses == sorted(statuses, key=order.__getitem__)
    page = ParsedPage(html)
    sev = [a["data-severity"] for t, a in page.tags if t == "tr" and a.get("data-status") == "triggered"]
    assert sev == sorted(sev, key=["critical", "warning", "info"].index)


def test_verdict_and_counts(mlp):
    result, html = mlp
    page = ParsedPage(html)
    verdict = next(a for t, a in page.tags if a.get("id") == "verdict")
    assert verdict["data-verdict"] == "critical"
    c = result.counts()
    assert f"<b>{c['critical']}</b>critical" in html and f"<b>{c['not_evaluable']}</b>not evaluable" in html
    assert "<title>CRITICAL · mlp-exploding-7" in html


def test_healthy_and_blind_verdicts():
    html = render_html(healthy_result())
    assert 'data-verdict="healthy"' in html and "could not look" in html
    blind = AuditResult(run={"run_id": "r"}, findings=[
        Finding(rule=r, status="not_evaluable", severity="info", message="no data") for r in RULE_IDS])
    html = render_html(blind)
    assert 'data-verdict="not evaluated"' in html and "nothing was seen" in html


def test_coverage_shows_captured_missing_lost_and_blind_rules(mlp):
    result, html = mlp
    cov = re.search(r'<div class="card" id="coverage">.*?</dl></div>', html, re.S).group(0)
    for name in ("weights", "gradients", "tokens", "trees", "queue_full", "TokenRatio",
                 "UnchangedTensor", "TreeDepth"):
        assert name in cov
    assert "Lost in capture" in cov and "outputs: 3" in cov


def test_triggered_sections_have_plots_evidence_and_fix(mlp):
    _, html = mlp
    sec = re.search(r'<section class="finding[^"]*" id="rule-ExplodingTensor".*?</section>', html, re.S).group(0)
    assert "<svg" in sec and "<image" in sec  # the heatmap
    assert "first non-finite" in sec and "812" in sec
    assert "What usually fixes it" in sec and "clip gradients" in sec
    assert "first_nonfinite" in sec and "inputs_finite" in sec


def test_plot_kinds_all_render_with_axes(mlp):
    _, html = mlp
    assert set(PLOT_KINDS) == {"line", "heatmap", "bars", "matrix", "bands"}
    assert html.count('class="alabel"') > 20  # axis titles
    assert 'class="band b0"' in html and 'class="cell diag"' in html and 'class="bar"' in html
    xgb = render_html(xgb_result())
    assert "Depth of each tree" in xgb and "Feature importance" in xgb


@pytest.mark.parametrize("spec", [
    None, 3, {}, {"kind": "pie"}, {"kind": "line"}, {"kind": "line", "series": [{"x": [], "y": []}]},
    {"kind": "line", "series": [{"x": [1, 2], "y": ["nan", "inf"]}]},
    {"kind": "line", "log_y": True, "series": [{"x": [1, 2], "y": [0, -1]}]},
    {"kind": "heatmap", "z": []}, {"kind": "heatmap", "z": [[1, "x"]], "x": ["a"]},
    {"kind": "heatmap", "z": [[0, 0], [0, 0]], "log": True, "x": [3, 1]},
    {"kind": "bars", "labels": ["a"], "values": ["inf"]}, {"kind": "bars", "labels": [], "values": []},
    {"kind": "matrix", "values": [[0, 0], [0]]}, {"kind": "matrix"},
    {"kind": "bands", "x": [1, 2], "median": [1, 2], "bands": [{"lo": [0], "hi": [3, 4]}]},
    {"kind": "bands", "x": [1, 2], "median": ["nan", "nan"], "bands": []},
])
def test_malformed_specs_never_break_the_report(spec):
    out = render_plot(spec, PlotLimits())
    assert out.startswith("<figure") and out.endswith("</figure>")


def test_nonfinite_points_are_marked_not_dropped():
    spec = {"kind": "line", "title": "t", "x_label": "step", "y_label": "loss",
            "series": [{"name": "train", "x": list(range(10)), "y": [1, 2, 3, "nan", "inf", 2, 1, 1, 1, 1]}]}
    out = render_plot(spec)
    assert out.count('class="nonfinite"') == 1 and "non-finite at 3 to 4" in out


def test_offline_and_csp():
    html = render_html(mlp_result(steps=200))
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", html)
    assert "@import" not in html and "url(http" not in html
    csp = next(a["content"] for t, a in ParsedPage(html).tags
               if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src {script_hash(SCRIPT)}" in csp and "default-src 'none'" in csp


def test_write_report_writes_html_and_roundtripping_json(tmp_path):
    result = mlp_result(steps=300)
    path = write_report(result, tmp_path / "out" / "deep")
    assert path == tmp_path / "out" / "deep" / "report.html" and path.exists()
    data = json.loads((path.parent / "audit.json").read_text())
    assert data["verdict"] == "critical"
    again = AuditResult.from_json((path.parent / "audit.json").read_text())
    assert [f.status for f in again.findings] == [f.status for f in result.findings]
    assert render_html(again) == render_html(result)  # the report reads audit.json as well
    assert not list(path.parent.glob(".*.tmp"))


def test_size_budget_holds_for_100k_steps_by_50_layers():
    result = long_result(steps=100_000, layers=50)
    html = render_html(result)
    assert len(html.encode()) <= MAX_REPORT_BYTES
    assert "100000 steps shown in" in html  # the heatmap was binned, and says so
    page = ParsedPage(html)
    assert len([t for t, _ in page.tags if t == "tr" and _.get("data-rule")]) == 20


def test_budget_shrinks_plots_before_dropping_them():
    result = long_result(steps=5_000, layers=50)
    full = render_html(result)
    small = render_html(result, max_bytes=len(full.encode()) // 3)
    assert len(small.encode()) <= len(full.encode()) // 3
    assert "<svg" in small
    tiny = render_html(result, max_bytes=150_000)
    assert "plots are left out" in tiny and "<svg" not in tiny
    with pytest.raises(ValueError, match="max_bytes=1000"):
        render_html(result, max_bytes=1000)
