"""Thin Prefect wrappers of the audit phases, for the flows layer.

Import explicitly (``from trainaudit.tasks._prefect import plan_task, ...``): ``import
trainaudit.tasks`` never loads Prefect. Each task is coarse (a Prefect task costs tens of
milliseconds); the fan-out over tensors and steps is the Dask graph inside :func:`scan_task`,
run on the flow's Dask client (``prefect_dask.get_dask_client``) when there is one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ._evaluate import build_result, evaluate
from ._findings import AuditResult, Finding
from ._plan import Plan, TensorKey, make_plan
from ._scan import ScanResult, merge_scans, scan

__all__ = ["plan_task", "scan_task", "merge_task", "evaluate_task", "findings_task"]


@task(name="trainaudit-plan", cache_policy=NO_CACHE)
def plan_task(uri: str, rules: Sequence[str] | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
              storage_options: Mapping[str, Any] | None = None) -> Plan:
    from trainaudit.capture import open_run

    run = open_run(uri, storage_options=dict(storage_options) if storage_options else None)
    return make_plan(run, rules, params, storage_options=storage_options)


@task(name="trainaudit-scan", cache_policy=NO_CACHE)
def scan_task(plan: Plan, tensors: Iterable[TensorKey | str] | None = None, client: Any = None) -> ScanResult:
    """Scan a group of tensors with a Dask graph on the flow's cluster.

    Under the DaskTaskRunner this body runs on a Dask worker thread; ``worker_client``
    secedes that thread from the worker's pool while the graph runs. (A plain client here, as
    ``prefect_dask.get_dask_client`` gives, would block a worker thread per scan task and
    deadlock as soon as the scan tasks hold every thread.)
    """
    if client is not None:
        return scan(plan, client=client, tensors=tensors)
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        return scan(plan, client=None, tensors=tensors)  # not on a Dask worker
    with worker_client() as c:
        return scan(plan, client=c, tensors=tensors)


@task(name="trainaudit-merge", cache_policy=NO_CACHE)
def merge_task(scans: list[ScanResult]) -> ScanResult:
    return merge_scans(scans)


@task(name="trainaudit-evaluate", cache_policy=NO_CACHE)
def evaluate_task(plan: Plan, scans: ScanResult | Sequence[ScanResult],
                  timings: Mapping[str, float] | None = None) -> AuditResult:
    """Merge the group scans, evaluate every rule, and build the :class:`AuditResult`."""
    result = scans if isinstance(scans, ScanResult) else merge_scans(list(scans))
    t0 = time.perf_counter()
    findings = evaluate(plan, result)
    times = {"scan": result.seconds, **dict(timings or {}), "evaluate": time.perf_counter() - t0}
    return build_result(plan, result, findings, timings=times)


@task(name="trainaudit-findings", cache_policy=NO_CACHE)
def findings_task(plan: Plan, result: ScanResult) -> list[Finding]:
    return evaluate(plan, result)
