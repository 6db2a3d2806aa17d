"""The Prefect flows on real Prefect (test harness) and a real Dask LocalCluster."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from trainaudit.flows._demo import train_faulty_mlp, train_healthy_mlp
from trainaudit.flows._runs import find_runs, slug
from trainaudit.tasks import AuditResult, audit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two short real trainings: one healthy, one with dead ReLUs and vanishing gradients."""
    base = tmp_path_factory.mktemp("runs")
    out = {"healthy": str(base / "healthy-mlp"), "faulty": str(base / "faulty-mlp")}
    train_healthy_mlp(out["healthy"], steps=80)
    train_faulty_mlp(out["faulty"], steps=80)
    return out


def _summary(result: AuditResult) -> dict[str, tuple[str, list[str]]]:
    return {f.rule: (f.status, f.tensors) for f in result.findings}


def test_flow_findings_equal_the_audit_api_and_publish_artifacts(prefect_harness: None, runs: dict[str, str], tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter

    from trainaudit.flows import audit_run

    out = tmp_path / "audit"
    outcome = audit_run(runs["faulty"], out=str(out))
    direct = audit(runs["faulty"])
    assert _summary(outcome.result) == _summary(direct)
    assert outcome.result.finding("DeadRelu").status == "triggered"
    assert outcome.result.verdict() == "critical"

    # The files: a report and an audit.json that reads back to the same findings.
    assert Path(outcome.report_path).is_file() and Path(outcome.report_path).stat().st_size > 1000
    saved = AuditResult.from_json(Path(outcome.audit_json).read_text())
    assert _summary(saved) == _summary(outcome.result)
    assert saved.run["fingerprint"]["status"] == "complete"

    # The Prefect UI: three artifacts keyed by the run, read back through the API.
    key = f"trainaudit-{slug('faulty-mlp', max_len=40)}"
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-findings", f"{key}-summary", f"{key}-report"])))
        assert {a.key for a in arts} == {f"{key}-findings", f"{key}-summary", f"{key}-report"}
        table = next(a for a in arts if a.key == f"{key}-findings")
        rows = table.data if isinstance(table.data, list) else json.loads(table.data)
        assert {r["rule"] for r in rows} == {f.rule for f in outcome.result.findings}
        # One event per triggered critical finding (events are written asynchronously).
        critical = {f.rule for f in outcome.result.triggered if f.severity == "critical"}
        seen: set[str] = set()
        for _ in range(30):
            page = client.read_events(filter=EventFilter(event=EventNameFilter(name=["trainaudit.finding.critical"])), limit=50)
            seen = {e.payload["rule"] for e in page.events if e.resource.get("prefect.resource.name") == "faulty-mlp"}
            if seen >= critical:
                break
            time.sleep(0.5)
        assert critical and seen >= critical


def test_audit_new_runs_audits_each_finished_run_once(prefect_harness: None, runs: dict[str, str], tmp_path: Path) -> None:
    from trainaudit.flows import audit_new_runs

    prefix = str(Path(runs["healthy"]).parent)
    assert {r.run_id for r in find_runs(prefix)} == {"healthy-mlp", "faulty-mlp"}
    out = str(tmp_path / "audits")
    first = audit_new_runs(prefix, out)
    assert sorted(first["audited"]) == sorted(runs.values()) and not first["skipped"]
    for name in ("healthy-mlp", "faulty-mlp"):
        assert (Path(out) / name / "report.html").is_file()
    second = audit_new_runs(prefix, out)
    assert not second["audited"] and sorted(second["skipped"]) == sorted(runs.values())


def test_cli_audit_exit_codes_and_errors(prefect_harness: None, runs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainaudit.flows.cli import main

    assert main(["audit", runs["faulty"], "--out", str(tmp_path / "f"), "--no-prefect"]) == 1
    text = capsys.readouterr().out
    assert "verdict: CRITICAL" in text and "DeadRelu" in text
    assert main(["audit", runs["faulty"], "--out", str(tmp_path / "f2"), "--no-prefect", "--fail-on", "never"]) == 0
    capsys.readouterr()

    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert "No trainaudit run at" in capsys.readouterr().err
    assert main(["audit", runs["faulty"], "--rules", "DeadRelu,NoSuchRule"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchRule" in err and "VanishingGradient" in err  # lists the valid ids
    assert main(["audit", runs["faulty"], "--param", "DeadRelu.threshold_layer=-5", "--no-prefect"]) == 2
    assert "threshold_layer" in capsys.readouterr().err
    assert main(["audit", runs["faulty"], "--param", "oops"]) == 2
    assert "RULE.PARAMETER=VALUE" in capsys.readouterr().err

    assert main(["rules"]) == 0
    listing = capsys.readouterr().out
    for rule_id in ("DeadRelu", "TreeDepth", "ClassImbalance", "ExplodingTensor"):
        assert rule_id in listing
    assert main(["show", runs["healthy"]]) == 0
    shown = capsys.readouterr().out
    assert "healthy-mlp" in shown and "complete" in shown and "gradients" in shown


def test_cli_audit_through_the_flow(prefect_harness: None, runs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainaudit.flows.cli import main

    code = main(["audit", runs["healthy"], "--out", str(tmp_path / "h")])
    out = capsys.readouterr().out
    assert (tmp_path / "h" / "report.html").is_file()
    doc = json.loads((tmp_path / "h" / "audit.json").read_text())
    critical = [f for f in doc["findings"] if f["status"] == "triggered" and f["severity"] == "critical"]
    assert code == (1 if critical else 0), out
    assert os.path.basename(runs["healthy"]) in doc["run"]["uri"]
