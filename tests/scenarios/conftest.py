"""Session fixtures of the scenario suite: every scenario trained and audited once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainaudit.tasks import AuditResult, audit, catalog

from .trainings import CONTROLS, SCENARIOS


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def scenario_results(tmp_path_factory: pytest.TempPathFactory, dask_client: object) -> dict[str, AuditResult]:
    """Train and audit every scenario and control once per session."""
    base = tmp_path_factory.mktemp("scenarios")
    trainings = {s.name: s.train for s in SCENARIOS} | dict(CONTROLS)
    results: dict[str, AuditResult] = {}
    done: dict[object, AuditResult] = {}
    for name, train in trainings.items():
        if train in done:  # two scenarios share one training (its run is audited once)
            results[name] = done[train]
            continue
        uri = str(base / name)
        train(uri)
        results[name] = done[train] = audit(uri, client=dask_client)
    _print_table(results)
    keep = os.environ.get("TRAINAUDIT_KEEP_SCENARIOS")
    if keep:  # for the report tests and for people: keep the audits
        Path(keep).mkdir(parents=True, exist_ok=True)
        for name, res in results.items():
            (Path(keep) / f"{name}.json").write_text(res.to_json())
    return results


def _print_table(results: dict[str, AuditResult]) -> None:
    rules = [r["id"] for r in catalog()]
    width = max(len(n) for n in results) + 2
    lines = ["", "Rules fired per scenario (X = triggered, . = ok, - = not evaluable, E = error):", ""]
    header = " " * width + " ".join(f"{i:>2}" for i in range(len(rules)))
    lines.append(header)
    for name, res in results.items():
        cells = []
        by_rule = {f.rule: f.status for f in res.findings}
        for r in rules:
            st = by_rule.get(r)
            cells.append({"triggered": " X", "ok": " .", "not_evaluable": " -", "error": " E"}.get(st or "", " ?"))
        lines.append(f"{name:<{width}}" + " ".join(c.strip().rjust(2) for c in cells))
    lines.append("")
    lines += [f"{i:>2} {r}" for i, r in enumerate(rules)]
    print("\n".join(lines))


