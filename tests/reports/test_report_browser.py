"""Reports opened in headless Chromium: no console errors, no network, no dialogs; the verdict
and the rule table with the right statuses; the table sorts and filters; dark mode and print
work. Screenshots land in ``tests/_artifacts/reports/`` for people to look at."""

from __future__ import annotations

import pytest
from _report_samples import (
    RULE_IDS,
    healthy_result,
    hostile_result,
    long_result,
    mlp_result,
    xgb_result,
)

from trainaudit.reports import render_html, write_report

SCENARIOS = {
    "mlp-exploding": (mlp_result, "critical"),
    "xgboost-deep-trees": (xgb_result, "info"),
    "healthy": (healthy_result, "healthy"),
    "hostile-names": (hostile_result, "critical"),
}

ROWS_JS = ("Array.from(document.querySelectorAll('#rule-table tbody tr'))"
           ".map(r => [r.dataset.rule, r.dataset.status, r.hidden])")


@pytest.fixture(scope="module")
def page(browser):
    return browser.new_page()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_report_loads_clean_with_verdict_and_statuses(page, tmp_path, artifacts, name):
    make, verdict = SCENARIOS[name]
    result = make()
    path = write_report(result, tmp_path)
    load = page.open(path)
    assert load.clean, load.problems()
    assert page.evaluate("document.getElementById('verdict').dataset.verdict") == verdict
    rows = page.evaluate(ROWS_JS)
    assert {r: s for r, s, _ in rows} == {f.rule: f.status for f in result.findings}
    assert not any(hidden for *_, hidden in rows)
    assert set(RULE_IDS) <= {r for r, _, _ in rows}
    # every row's link lands on its section
    missing = page.evaluate(
        "Array.from(document.querySelectorAll('#rule-table a')).filter("
        "a => !document.getElementById(decodeURIComponent(a.hash.slice(1)))).length")
    assert missing == 0
    page.screenshot(artifacts / f"{name}-light.png", height=1800)


def test_hostile_names_stay_text(page, tmp_path):
    load = page.open(write_report(hostile_result(), tmp_path))
    assert load.clean and not load.dialogs, load.problems()
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.scripts.length") == 1
    assert page.evaluate("document.getElementById('run-id').textContent").startswith('"><img')


def test_sort_and_filter(page, tmp_path):
    load = page.open(write_report(mlp_result(steps=300), tmp_path))
    page.evaluate("""(() => { const q = document.getElementById('rule-filter');
        q.value = 'relu'; q.dispatchEvent(new Event('input')); })()""")
    shown = [r for r, _, hidden in page.evaluate(ROWS_JS) if not hidden]
    assert shown == ["DeadRelu"]
    assert "1 of 20" in page.evaluate("document.getElementById('rule-count').textContent")
    page.evaluate("""(() => { const q = document.getElementById('rule-filter'); q.value = '';
        q.dispatchEvent(new Event('input'));
        const s = document.getElementById('status-filter'); s.value = 'not_evaluable';
        s.dispatchEvent(new Event('change')); })()""")
    shown = {r for r, st, hidden in page.evaluate(ROWS_JS) if not hidden}
    assert shown == {"TanhSaturation", "TokenRatio", "TreeDepth", "FeatureImportanceOverweight"}
    page.evaluate("""(() => { const s = document.getElementById('status-filter'); s.value = 'all';
        s.dispatchEvent(new Event('change'));
        document.querySelectorAll('#rule-table th button')[2].click(); })()""")
    names = [r for r, _, _ in page.evaluate(ROWS_JS)]
    assert names == sorted(names, key=str.lower)
    page.evaluate("document.querySelectorAll('#rule-table th button')[2].click()")
    assert [r for r, _, _ in page.evaluate(ROWS_JS)] == sorted(names, key=str.lower, reverse=True)
    page.evaluate("document.querySelectorAll('#rule-table th button')[3].click()")  # first step
    steps = page.evaluate("Array.from(document.querySelectorAll('#rule-table tbody tr'))"
                          ".map(r => r.cells[3].dataset.sort).filter(s => s !== '').map(Number)")
    assert steps == sorted(steps) and len(steps) == 9
    assert not (load.exceptions or load.console_errors or load.log_errors), load.problems()


def test_dark_mode_and_print(page, tmp_path, artifacts):
    path = write_report(mlp_result(), tmp_path)
    bg = "getComputedStyle(document.documentElement).backgroundColor"
    page.open(path, color_scheme="light")
    light = page.evaluate(bg)
    load = page.open(path, color_scheme="dark")
    assert load.clean, load.problems()
    dark = page.evaluate(bg)
    assert light != dark
    assert page.evaluate(f"{bg}.match(/\\d+/g).slice(0, 3).every(c => Number(c) < 60)")
    page.screenshot(artifacts / "mlp-exploding-dark.png", height=1800)
    y = page.evaluate("document.getElementById('rule-ExplodingTensor').getBoundingClientRect().top"
                      " + window.scrollY")
    page.screenshot(artifacts / "mlp-exploding-dark-finding.png", y=y, height=1100)
    page.emulate_media(media="print")
    assert page.evaluate("getComputedStyle(document.querySelector('.controls')).display") == "none"
    assert page.evaluate(bg) in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
    assert page.print_pdf()[:4] == b"%PDF"
    page.emulate_media()


def test_laptop_width_has_no_horizontal_scroll(page, tmp_path):
    page.open(write_report(mlp_result(), tmp_path), width=1280)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.open(write_report(mlp_result(), tmp_path), width=820)
    assert page.evaluate("document.documentElement.scrollWidth") <= 840


def test_100k_step_report_opens_clean(page, tmp_path, artifacts):
    # render only: the un-downsampled sample would make a huge audit.json (the producer
    # downsamples to <= 2000 points; the report must hold its budget even when it did not)
    path = tmp_path / "report.html"
    path.write_text(render_html(long_result(steps=100_000, layers=50)), encoding="utf-8")
    load = page.open(path)
    assert load.clean, load.problems()
    y = page.evaluate("document.getElementById('curves').getBoundingClientRect().top + window.scrollY")
    page.screenshot(artifacts / "long-run-curves.png", y=y, height=900)
