"""The Prefect artifact helpers: markdown summary and findings table rows (no Prefect here)."""

from __future__ import annotations

import subprocess
import sys

from _report_samples import HOSTILE_LAYERS, RULE_IDS, hostile_result, mlp_result

import trainaudit.reports as reports
from trainaudit.reports import findings_table, markdown_summary


def test_findings_table_rows():
    rows = findings_table(mlp_result(steps=200))
    assert [set(r) for r in rows] == [{"rule", "status", "severity", "first_step", "tensors",
                                       "message"}] * 20
    assert {r["rule"] for r in rows} == set(RULE_IDS)
    assert rows[0]["status"] == "triggered" and rows[0]["severity"] == "critical"
    assert all(isinstance(v, str) for r in rows for v in r.values())
    boom = next(r for r in rows if r["rule"] == "ExplodingTensor")
    assert boom["first_step"] == "162 (train, rank 1)"
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["first_step"] == ""


def test_markdown_summary_lists_fired_and_blind_rules():
    md = markdown_summary(mlp_result(steps=200), report_url="file:///tmp/a b/report.html")
    assert md.startswith("## trainaudit: CRITICAL")
    assert "**9 fired** (2 critical, 6 warning, 1 info)" in md
    assert "ExplodingTensor (from step 162)" in md and "### Could not look" in md
    assert "(file:///tmp/a%20b/report.html)" in md


def test_markdown_escapes_run_strings():
    md = markdown_summary(hostile_result())
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;" in md
    assert HOSTILE_LAYERS[0] not in md


def test_public_surface_and_light_import():
    assert sorted(reports.__all__) == sorted(
        ["render_html", "write_report", "MAX_REPORT_BYTES", "markdown_summary", "findings_table",
         "PLOT_KINDS"])
    code = ("import sys, trainaudit.reports; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'dask', 'distributed')"
            " or m.startswith(('trainaudit.capture', 'trainaudit.flows'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
