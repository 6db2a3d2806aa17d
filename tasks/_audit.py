"""The audit API: plan, scan, evaluate, result, in one call and without Prefect.

``audit(uri)`` opens the run, plans the rules' needs, scans the run once on a Dask client (a
temporary local cluster by default, or an existing one by address), evaluates every rule and
returns an :class:`AuditResult`; with ``out`` it also writes ``out/audit.json``. The Prefect
flow (``trainaudit.flows``) calls these same functions as coarse tasks.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._evaluate import build_result, evaluate
from ._findings import AuditResult
from ._plan import DEFAULT_BLOCK_BYTES, make_plan
from ._scan import scan

__all__ = ["audit", "open_client", "write_audit_json", "AUDIT_JSON"]

AUDIT_JSON = "audit.json"


@contextlib.contextmanager
def open_client(client: Any = None, *, uri: str = "", n_workers: int | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client``: ``client`` itself, a client of the scheduler at address
    ``client`` (``"tcp://host:8786"``), or a temporary ``LocalCluster`` closed on exit.

    The temporary cluster runs its workers as threads of this process (the scan's work releases
    the GIL in decompression and NumPy, and ``memory://`` runs are only visible in-process).
    """
    if client is not None and not isinstance(client, str):
        yield client
        return
    from distributed import Client, LocalCluster

    if isinstance(client, str):
        c = Client(client)
        try:
            yield c
        finally:
            c.close()
        return
    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    with LocalCluster(n_workers=1, threads_per_worker=workers, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def write_audit_json(result: AuditResult, out: str | os.PathLike[str]) -> Path:
    """Write ``out/audit.json`` (creating ``out``) and return its path."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    path = d / AUDIT_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(result.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def audit(
    uri_or_run: Any,
    *,
    rules: Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    client: Any = None,
    out: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    address: str | None = None,
) -> AuditResult:
    """Audit a captured run with the rule catalog.

    Args:
        uri_or_run: a run URI (local path, ``s3://``, ``memory://``) or an open run.
        rules: rule ids to evaluate (None: every registered rule).
        params: per-rule parameter overrides, ``{"DeadRelu": {"threshold_layer": 30}}``;
            validated before anything is read (:class:`InvalidParameterError`).
        client: a ``distributed.Client``, a scheduler address, or None for a temporary local
            cluster.
        out: a folder to write ``audit.json`` into.
        storage_options: passed to the store (s3fs options) when opening by URI.
        block_bytes: the target size of the values one scan task holds.
        address: the scheduler address of an existing Dask cluster (same as a string
            ``client``).

    Returns:
        The :class:`AuditResult`: one finding per rule, coverage, series and timings.
    """
    t0 = time.perf_counter()
    if isinstance(uri_or_run, str | os.PathLike):
        from trainaudit.capture import open_run

        run = open_run(os.fspath(uri_or_run), storage_options=dict(storage_options) if storage_options else None)
    else:
        run = uri_or_run
    plan = make_plan(run, rules, params, storage_options=storage_options, block_bytes=block_bytes)
    t1 = time.perf_counter()
    with open_client(client if client is not None else address, uri=plan.uri) as c:
        t_client = time.perf_counter()
        result = scan(plan, client=c)
    t2 = time.perf_counter()
    findings = evaluate(plan, result)
    t3 = time.perf_counter()
    timings = {"plan": t1 - t0, "cluster": t_client - t1, "scan": t2 - t_client, "evaluate": t3 - t2}
    res = build_result(plan, result, findings, timings=timings)
    timings["total"] = time.perf_counter() - t0
    if out is not None:
        write_audit_json(res, out)
    return res
