"""Scheduled audits: every run under a prefix that finished since the last pass.

``audit_new_runs`` is idempotent: an audit records the run's fingerprint (status and committed
steps per rank) in its ``audit.json``, and a run whose fingerprint did not change since is
skipped. ``serve`` runs it as a Prefect deployment on a cron schedule (``flow.serve``); a
work pool works too (docs/FLOWS.md).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from ._audit import audit_run
from ._runs import already_audited, audit_dir, find_runs

__all__ = ["audit_new_runs", "serve"]


@flow(name="audit-new-runs", validate_parameters=True)
def audit_new_runs(
    prefix: str,
    out: str,
    rules: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    dask_address: str | None = None,
    storage_options: dict[str, Any] | None = None,
    stale_after: float = 300.0,
) -> dict[str, list[str]]:
    """Audit every run under ``prefix`` that is finished (complete, or silent for longer than
    ``stale_after`` seconds) and not yet audited at its current state.

    Returns ``{"audited": [...], "skipped": [...], "running": [...], "failed": [...]}`` (URIs).
    """
    log = get_run_logger()
    summary: dict[str, list[str]] = {"audited": [], "skipped": [], "running": [], "failed": []}
    for ref in find_runs(prefix, storage_options=storage_options, stale_after=stale_after):
        if ref.status == "running":
            summary["running"].append(ref.uri)
            continue
        if already_audited(out, ref, storage_options=storage_options):
            summary["skipped"].append(ref.uri)
            continue
        try:
            audit_run(ref.uri, rules=rules, params=params, out=audit_dir(out, ref.run_id),
                      dask_address=dask_address, storage_options=storage_options)
            summary["audited"].append(ref.uri)
        except Exception as exc:  # one bad run never stops the schedule
            log.error("Audit of %s failed: %s", ref.uri, exc)
            summary["failed"].append(ref.uri)
    log.info("audited %d, skipped %d, still running %d, failed %d", *(len(v) for v in summary.values()))
    return summary


def serve(*, prefix: str, out: str, cron: str = "*/15 * * * *", name: str = "audit-new-runs",
          dask_address: str | None = None) -> None:
    """Serve ``audit_new_runs`` as a deployment on ``cron`` (blocks; Ctrl-C stops it)."""
    audit_new_runs.serve(
        name=name,
        cron=cron,
        parameters={"prefix": prefix, "out": out, "dask_address": dask_address},
        description=f"trainaudit: audit every new run under {prefix} into {out}",
        tags=["trainaudit"],
    )
