"""Live audits: ``watch-run`` audits a run while it trains and can ask it to stop.

Every ``interval`` seconds the flow reopens the run; when new steps were committed it audits
the run as committed so far (the ``audit-run`` flow, on one Dask cluster kept for the whole
watch) and evaluates ``StalledTraining`` (no step committed for ``stall_seconds``). When a
rule listed in ``stop_on`` (or any critical rule, with ``stop_on=["critical"]``) fires, it
emits a Prefect event and writes a stop request into the run; the capture hook notices it at
its next poll (every 2 s) and sets ``hook.stop_requested``,
which the training loop checks to finish cleanly (XGBoost's callback stops boosting itself).
The watch ends when the run is complete or incomplete, or after ``max_passes``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from trainaudit.capture import open_run, request_stop
from trainaudit.tasks import Finding, StepRef

from ._audit import audit_run
from ._runs import slug

__all__ = ["watch_run", "stalled_training"]


def stalled_training(*, last_commit: float | None, now: float, threshold: float, last_step: int | None) -> Finding:
    """``StalledTraining``: no new step committed for ``threshold`` seconds (live audits).

    Condition: now - time of the last committed step > threshold (default 300 s: longer than
    any sane step or evaluation pass of the jobs we audit; raise it for jobs with long epochs).
    Usually fixed by looking at the job: a hung data loader, a deadlock between ranks, a
    preempted node.
    """
    params = {"threshold": threshold}
    problem = "Training stopped making progress"
    fix = "Check the training job: a hung data loader, a collective waiting on a dead rank, a preempted or OOM-killed node."
    if last_commit is None:
        return Finding(rule="StalledTraining", status="not_evaluable", severity="critical",
                       message="No step has been committed yet, so progress cannot be judged.",
                       params=params, problem=problem, fix=fix)
    idle = now - last_commit
    evidence = {"seconds_since_last_step": round(idle, 1), "threshold": threshold, "last_step": last_step}
    if idle > threshold:
        return Finding(rule="StalledTraining", status="triggered", severity="critical",
                       message=f"No step committed for {idle:.0f} s (threshold {threshold:.0f} s); the last was step {last_step}.",
                       first_step=StepRef(step=int(last_step or 0)), steps=[[int(last_step or 0), int(last_step or 0)]],
                       evidence=evidence, params=params, problem=problem, fix=fix)
    return Finding(rule="StalledTraining", status="ok", severity="critical",
                   message=f"The last step was committed {idle:.0f} s ago (threshold {threshold:.0f} s).",
                   evidence=evidence, params=params, problem=problem, fix=fix)


@flow(name="watch-run", validate_parameters=True)
def watch_run(
    uri: str,
    interval: float = 30.0,
    stall_seconds: float = 300.0,
    stop_on: list[str] | None = None,
    rules: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | None = None,
    max_passes: int | None = None,
    dask_address: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit ``uri`` while it trains; see the module docstring for the exact behaviour."""
    log = get_run_logger()
    summary: dict[str, Any] = {"uri": uri, "passes": 0, "audits": 0, "fired": [], "stop_requested": False,
                               "stalled": False, "final_status": None}
    last_seen = -1
    with ExitStack() as stack:
        address = dask_address or _local_cluster(stack)
        while True:
            run = open_run(uri, storage_options=storage_options, stale_after=max(stall_seconds, 60.0))
            committed = sum(run.committed_steps(r) for r in run.ranks)
            last_commit, last_step = _last_commit(run)
            fired: list[Finding] = []
            if committed != last_seen and committed > 0:
                last_seen = committed
                outcome = audit_run(uri, rules=rules, params=params, out=out, dask_address=address,
                                    storage_options=storage_options)
                summary["audits"] += 1
                summary["report"] = outcome.report_path
                fired = outcome.result.triggered
            stall = stalled_training(last_commit=last_commit, now=time.time(), threshold=stall_seconds, last_step=last_step)
            if stall.triggered and run.status == "running":
                summary["stalled"] = True
                fired.append(stall)
            for f in fired:
                if f.rule not in summary["fired"]:
                    summary["fired"].append(f.rule)
            to_stop = [f for f in fired if _matches(f, stop_on)]
            if to_stop and not summary["stop_requested"] and run.status == "running":
                reason = "; ".join(f"{f.rule}: {f.message}" for f in to_stop)
                request_stop(uri, reason=reason, storage_options=storage_options)
                summary["stop_requested"] = True
                summary["stop_reason"] = reason
                emit_event(event="trainaudit.watch.stop-requested",
                           resource={"prefect.resource.id": f"trainaudit.run.{slug(run.run_id, max_len=80)}",
                                     "prefect.resource.name": run.run_id},
                           payload={"uri": uri, "rules": [f.rule for f in to_stop], "reason": reason})
                log.warning("Asked %s to stop: %s", uri, reason)
            summary["passes"] += 1
            summary["final_status"] = run.status
            if run.status != "running":
                break
            if max_passes is not None and summary["passes"] >= max_passes:
                break
            time.sleep(interval)
    return summary


def _matches(f: Finding, stop_on: list[str] | None) -> bool:
    if not stop_on or not f.triggered:
        return False
    return f.rule in stop_on or ("critical" in stop_on and f.severity == "critical")


def _last_commit(run: Any) -> tuple[float | None, int | None]:
    last_t, last_s = None, None
    for r in run.ranks:
        st = run.steps(r)
        if len(st):
            t = float(st.time.max())
            if last_t is None or t > last_t:
                last_t, last_s = t, int(st.global_step.max())
    return last_t, last_s


def _local_cluster(stack: ExitStack) -> str:
    """One temporary Dask cluster for the whole watch (not one per pass)."""
    from distributed import LocalCluster

    cluster = stack.enter_context(LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None))
    return str(cluster.scheduler_address)
