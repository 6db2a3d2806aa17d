"""Reports of the scenario runs, opened in headless Chromium: they load with no console error
and no network request, and show the verdict and every rule with the audit's status.
Screenshots land in ``tests/_artifacts/scenarios/`` for people to look at."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainaudit.reports import write_report
from trainaudit.tasks import AuditResult

# The Chromium driver lives with the report tests (tests/reports is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports"))
from _chromium import SKIP_REASON, Chromium, find_chromium  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts" / "scenarios"
SHOWN = ["dead_relu", "vanishing_gradient", "exploding", "overfit", "class_imbalance", "deep_trees",
         "one_feature", "healthy_cnn", "healthy_xgb_regressor"]
ROWS_JS = "Array.from(document.querySelectorAll('#rule-table tbody tr')).map(r => [r.dataset.rule, r.dataset.status])"


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    if find_chromium() is None:
        pytest.skip(SKIP_REASON)
    with Chromium() as browser:
        yield browser.new_page()


@pytest.mark.parametrize("name", SHOWN)
def test_scenario_report_opens_clean_with_the_audit_statuses(scenario_results: dict[str, AuditResult], page: object,
                                                             tmp_path: Path, name: str) -> None:
    result = scenario_results[name]
    path = write_report(result, tmp_path)
    assert path.stat().st_size < 5_000_000
    load = page.open(path)  # type: ignore[attr-defined]
    assert load.clean, load.problems()
    assert page.evaluate("document.getElementById('verdict').dataset.verdict") == result.verdict()  # type: ignore[attr-defined]
    rows = dict(page.evaluate(ROWS_JS))  # type: ignore[attr-defined]
    assert rows == {f.rule: f.status for f in result.findings}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(ARTIFACTS / f"{name}.png", height=2400)  # type: ignore[attr-defined]
