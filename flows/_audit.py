"""The ``audit-run`` flow: audit one run with Prefect and Dask.

Prefect tasks stay coarse (NOTES.md: a task costs 60-100 ms under the DaskTaskRunner): one to
plan, one scan per group of tensors, one to evaluate, one to write the report. The fan-out
over (tensor, step-block) blocks is a Dask graph that each scan task submits to the same
cluster through ``get_dask_client()``. The work itself is ``trainaudit.tasks``' code, the very
code ``trainaudit.tasks.audit`` runs without Prefect.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from trainaudit.capture import open_run
from trainaudit.tasks import AuditResult
from trainaudit.tasks._prefect import evaluate_task, plan_task, scan_task

from ._runs import audit_dir, run_fingerprint, slug

__all__ = ["AuditOutcome", "audit_run", "audit_run_flow", "dask_task_runner", "MAX_SCAN_TASKS"]

#: Scan tasks per audit: enough to keep a few workers busy, few enough that Prefect's per-task
#: cost stays negligible next to the Dask graph inside each.
MAX_SCAN_TASKS = 4


@dataclass(frozen=True)
class AuditOutcome:
    """What ``audit_run`` returns: the result and where its files went."""

    result: AuditResult
    report_path: str
    audit_json: str


def dask_task_runner(dask_address: str | None = None) -> DaskTaskRunner:
    """An existing cluster by address, or a temporary in-process ``LocalCluster``.

    The temporary cluster uses threads, not processes: in Prefect's ephemeral mode each worker
    process would start its own temporary Prefect server on one sqlite file (NOTES.md), and
    the scan's kernels (numpy, zarr's decompression) release the GIL.
    """
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    workers = max(1, min(2, os.cpu_count() or 1))
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 1, "threads_per_worker": workers, "processes": False, "dashboard_address": None},
    )


def audit_run(
    uri: str,
    rules: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | None = None,
    dask_address: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> AuditOutcome:
    """Audit the run at ``uri`` with the ``audit-run`` Prefect flow; see :func:`audit_run_flow`.

    Picks the flow's task runner from ``dask_address`` (a flow cannot change its own runner
    once it runs), then runs the flow.
    """
    runner = dask_task_runner(dask_address)
    flow_with_runner = audit_run_flow.with_options(task_runner=runner)  # type: ignore[arg-type]
    return flow_with_runner(uri=uri, rules=rules, params=params, out=out, dask_address=dask_address,
                            storage_options=storage_options, progress=progress)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    uri = str(flow_run.parameters.get("uri", "run"))
    return f"audit-{slug(uri.rstrip('/').rsplit('/', 1)[-1], max_len=40)}"


@flow(name="audit-run", flow_run_name=_flow_run_name, validate_parameters=True)
def audit_run_flow(
    uri: str,
    rules: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | None = None,
    dask_address: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> AuditOutcome:
    """Audit one training run: plan, scan (Dask), evaluate every rule, write the report.

    Args:
        uri: the run (local path, ``file://``, ``s3://bucket/prefix``).
        rules: rule ids to evaluate (default: the whole catalog).
        params: parameter overrides, ``{"DeadRelu": {"threshold_layer": 40}}``.
        out: folder (local or ``s3://``) for ``report.html`` and ``audit.json``; default
            ``./trainaudit-audits/<run id>``.
        dask_address: the cluster the flow's task runner attached to (recorded for the UI).
        storage_options: s3fs options for the run's store.
        progress: print one line per phase and per finished scan task on stderr (the CLI).
    """
    log = get_run_logger()
    # What this audit saw, for idempotent scheduled audits (taken before planning: a step
    # committed meanwhile makes the next schedule audit again, never skip one).
    fingerprint = run_fingerprint(open_run(uri, storage_options=storage_options))
    plan = plan_task.submit(uri, rules=rules, params=params, storage_options=storage_options).result()
    groups = _tensor_groups(plan, MAX_SCAN_TASKS)
    log.info("Planned %d rules over %d tensors: %d scan tasks", len(plan.rules), len(plan.tensors), len(groups))
    say = _progress if progress else (lambda text: None)
    say(f"planned {len(plan.rules)} rules over {len(plan.tensors)} tensors ({plan.n_tasks} blocks, {len(groups)} scan tasks)")
    t0 = time.perf_counter()
    scans = [scan_task.submit(plan, tensors=g) for g in groups]
    for i, _ in enumerate(as_completed(scans), start=1):
        say(f"scanned {i}/{len(scans)} groups of tensors ({time.perf_counter() - t0:.1f} s)")
    result = evaluate_task.submit(plan, scans).result()
    say(f"evaluated: {result.verdict()} ({len(result.triggered)} rules fired)")
    result.run["fingerprint"] = fingerprint
    target = out or audit_dir("trainaudit-audits", result.run.get("run_id", "run"))
    paths = report_task.submit(result, target, storage_options=storage_options).result()
    _publish(result, paths["report"], dask_address)
    log.info("Verdict %s; report at %s", result.verdict(), paths["report"])
    return AuditOutcome(result=result, report_path=paths["report"], audit_json=paths["audit_json"])


def _progress(text: str) -> None:
    print(f"[trainaudit] {text}", file=sys.stderr, flush=True)


def _tensor_groups(plan: Any, n: int) -> list[list[Any]]:
    """Split the planned tensors into at most ``n`` groups of similar bytes to read (greedy:
    largest first, into the lightest group). Always at least one group (the statistics-only
    rules need a scan too)."""
    sized = []
    for key, tp in plan.tensors.items():
        size = sum(hi - lo for lo, hi in tp.blocks) or 1
        sized.append((size, key))
    sized.sort(key=lambda s: (-s[0], str(s[1])))
    k = max(1, min(n, len(sized)))
    groups: list[list[Any]] = [[] for _ in range(k)]
    load = [0] * k
    for size, key in sized:
        i = load.index(min(load))
        groups[i].append(key)
        load[i] += size
    return groups


def _publish(result: AuditResult, report: str, dask_address: str | None) -> None:
    """Show the audit in the Prefect UI (artifacts keyed by run, so they line up across
    audits) and emit one event per triggered critical finding for automations."""
    from trainaudit.reports import findings_table, markdown_summary

    run_id = str(result.run.get("run_id", "run"))
    key = f"trainaudit-{slug(run_id, max_len=40)}"
    create_table_artifact(key=f"{key}-findings", table=findings_table(result),
                          description=f"trainaudit findings for run {run_id}")
    create_markdown_artifact(key=f"{key}-summary", markdown=markdown_summary(result),
                             description=f"trainaudit verdict for run {run_id}")
    link = report if "://" in report else "file://" + os.path.abspath(report)
    create_link_artifact(key=f"{key}-report", link=link, link_text=f"report for {run_id}",
                         description="the self-contained HTML audit report")
    for f in result.triggered:
        if f.severity != "critical":
            continue
        emit_event(
            event="trainaudit.finding.critical",
            resource={
                "prefect.resource.id": f"trainaudit.run.{slug(run_id, max_len=80)}",
                "prefect.resource.name": run_id,
                "trainaudit.rule": f.rule,
            },
            payload={
                "rule": f.rule,
                "message": f.message,
                "uri": result.run.get("uri"),
                "first_step": f.first_step.to_dict() if f.first_step else None,
                "tensors": f.tensors[:20],
                "report": link,
                "dask_address": dask_address,
            },
        )


@task(name="write-report")
def report_task(result: AuditResult, out: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Prefect task: :func:`write_outputs`."""
    return write_outputs(result, out, storage_options=storage_options)


def write_outputs(result: AuditResult, out: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``report.html`` and ``audit.json`` into ``out`` (local, or uploaded to s3://)."""
    from trainaudit.reports import write_report

    if "://" not in out:
        html = write_report(result, out)
        return {"report": str(html), "audit_json": os.path.join(out, "audit.json")}
    import fsspec

    from trainaudit.capture._format import s3_storage_options

    opts = s3_storage_options(storage_options) if out.startswith("s3://") else dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(out, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        html = write_report(result, tmp)
        fs.makedirs(path, exist_ok=True)
        fs.put_file(str(html), f"{path}/report.html")
        fs.put_file(os.path.join(tmp, "audit.json"), f"{path}/audit.json")
    return {"report": f"{out}/report.html", "audit_json": f"{out}/audit.json"}
