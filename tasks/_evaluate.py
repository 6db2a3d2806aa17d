"""Evaluation: every planned rule on the finalized statistics, and the audit's result.

A rule whose data could not be read (a corrupt chunk, an unreadable statistic) becomes an
``error`` finding that says where; a rule that raises becomes an ``error`` finding that says
what it raised and where; the other rules go on. :func:`build_result` adds the run-level series
of the report (the loss curves, the per-layer gradient norms) and the capture coverage.
"""

from __future__ import annotations

import datetime as _dt
import traceback
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _plots
from ._context import MODE_NAMES, RuleContext, TensorData
from ._findings import AuditResult, Finding
from ._kernels import Kernel
from ._plan import Plan, PlannedRule, TensorKey
from ._scan import ScanError, ScanResult

__all__ = ["evaluate", "evaluate_rule", "build_result", "run_series", "coverage"]


def _finalize(kernel: Kernel, states: Mapping[Kernel, Any]) -> Any:
    if kernel not in states:
        return None
    return kernel.finalize(states[kernel])


def _error_finding(pr: PlannedRule, message: str) -> Finding:
    return Finding(rule=pr.spec.id, status="error", severity=pr.spec.severity,  # type: ignore[arg-type]
                   message=message, params=dict(pr.params), problem=pr.spec.problem, fix=pr.spec.fix)


def evaluate_rule(pr: PlannedRule, plan: Plan, result: ScanResult) -> Finding:
    """One rule's finding (never raises)."""
    if pr.error:
        return _error_finding(pr, f"{pr.spec.id} could not be evaluated: {pr.error}.")
    data: dict[str, list[TensorData]] = {}
    errors: list[ScanError] = []
    finalized: dict[tuple[TensorKey, Kernel], Any] = {}
    try:
        for need in pr.needs:
            items: list[TensorData] = []
            for key, kernel in pr.selected.get(need.name, []):
                meta = plan.all_tensors[key]
                errs = [e for e in result.errors.get(key, []) if e.source == need.source]
                host = plan.host_of(key, kernel)
                if host != key:
                    errs += [e for e in result.errors.get(host, []) if e.source == "values"]
                if errs:
                    errors.extend(errs)
                    continue
                res = None
                if kernel is not None:
                    if (key, kernel) not in finalized:
                        finalized[(key, kernel)] = _finalize(kernel, result.states.get(host, {}))
                    res = finalized[(key, kernel)]
                stats = result.stats.get(key) if need.source == "stats" else None
                items.append(TensorData(meta=meta, stats=stats, result=res, kernel=kernel))
            data[need.name] = items
    except Exception as e:
        return _error_finding(pr, f"{pr.spec.id} could not finalize its statistics: {type(e).__name__}: {e}.")
    if errors:
        seen: list[str] = []
        for err in errors:
            s = f"{err.where()}: {err.message}"
            if s not in seen:
                seen.append(s)
        more = f" (and {len(seen) - 3} more)" if len(seen) > 3 else ""
        return _error_finding(
            pr, f"{pr.spec.id} could not be evaluated: the run is damaged at {'; '.join(seen[:3])}{more}."
        )
    ctx = RuleContext(spec=pr.spec, params=pr.params, needs=pr.needs, data=data, run=plan.run_info,
                      step_table=plan.step_table)
    try:
        finding = pr.spec.fn(ctx, **pr.params)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        return _error_finding(pr, f"{pr.spec.id} failed{where}: {type(e).__name__}: {e}")
    if not isinstance(finding, Finding) or finding.rule != pr.spec.id:
        return _error_finding(pr, f"{pr.spec.id} returned {type(finding).__name__}, not its Finding")
    return finding


def evaluate(plan: Plan, result: ScanResult) -> list[Finding]:
    """One finding per planned rule, in plan order."""
    return [evaluate_rule(pr, plan, result) for pr in plan.rules]


# ---------------------------------------------------------------------------------------------
# Run-level series and coverage


def run_series(plan: Plan, result: ScanResult) -> dict[str, Any]:
    """``{"loss": line spec, "gradient_norms": heatmap spec}`` where captured."""
    out: dict[str, Any] = {}
    first_rank = min(plan.run_info.get("ranks") or [0])
    losses = sorted((k for k, t in plan.all_tensors.items() if t.collection == "losses" and t.rank == first_rank),
                    key=lambda k: k[1])
    series = []
    for key in losses:
        st = result.stats.get(key)
        if st is None or not len(st):
            continue
        mean = st.mean()
        for code in np.unique(st.modes):
            m = st.modes == code
            series.append({"name": f"{key[1].split('/', 1)[-1]} ({MODE_NAMES[int(code)]})",
                           "x": st.steps[m], "y": mean[m]})
    if series:
        out["loss"] = _plots.line("Loss", series, y_label="loss")
    grads = [plan.all_tensors[k] for k in result.stats
             if plan.all_tensors[k].collection == "gradients" and k[0] == first_rank]
    grads.sort(key=lambda t: (t.depth, t.name))
    grads = [g for g in grads if len(result.stats[g.key])]
    if grads:
        steps = np.unique(np.concatenate([result.stats[g.key].steps for g in grads]))
        z = []
        first_bad: int | None = None
        for g in grads:
            st = result.stats[g.key]
            row = np.full(len(steps), np.nan)
            l2 = st.l2()
            bad = st.nonfinite() > 0
            l2 = np.where(bad, np.inf, l2)
            row[np.searchsorted(steps, st.steps)] = l2
            z.append(row)
            if bad.any():
                s = int(st.steps[np.argmax(bad)])
                first_bad = s if first_bad is None else min(first_bad, s)
        markers = [{"x": first_bad, "label": "first non-finite gradient"}] if first_bad is not None else []
        out["gradient_norms"] = _plots.heatmap("Gradient L2 norm per layer", steps.tolist(),
                                               [g.layer for g in grads], z, log=True, markers=markers)
    return out


def coverage(plan: Plan, result: ScanResult | None = None) -> dict[str, Any]:
    """What the run captured: tensors per collection, missing collections, steps per mode,
    the capture's own errors and losses, and what the scan could not read."""
    from trainaudit.capture._format import COLLECTIONS

    per: dict[str, int] = defaultdict(int)
    values: dict[str, int] = defaultdict(int)
    for t in plan.all_tensors.values():
        per[t.collection] += 1
        if t.n_values:
            values[t.collection] += 1
    needed = sorted({c for pr in plan.rules for n in pr.needs for c in n.collections})
    out: dict[str, Any] = {
        "collections": dict(sorted(per.items())),
        "collections_with_values": dict(sorted(values.items())),
        "missing_collections": [c for c in COLLECTIONS if c not in per and c in needed],
        "steps": dict(plan.run_info.get("steps", {})),
        "ranks": list(plan.run_info.get("ranks", [])),
        "capture_errors": list(plan.run_info.get("capture_errors", [])),
        "lost": dict(plan.run_info.get("lost", {})),
    }
    if result is not None:
        out["scan_errors"] = [
            {"tensor": e.tensor, "rank": e.rank, "source": e.source,
             "steps": list(e.steps) if e.steps else None, "message": e.message}
            for errs in result.errors.values() for e in errs
        ]
        out["bytes_read"] = int(result.nbytes)
        out["scan_tasks"] = int(result.tasks)
    return out


def build_result(plan: Plan, result: ScanResult, findings: list[Finding], *,
                 timings: Mapping[str, float] | None = None) -> AuditResult:
    """The :class:`AuditResult` of an audit (findings, series, coverage, timings)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("trainaudit")
    except PackageNotFoundError:
        ver = ""
    run = {k: v for k, v in plan.run_info.items() if k not in ("capture_errors", "lost")}
    return AuditResult(
        run=run,
        findings=list(findings),
        coverage=coverage(plan, result),
        series=run_series(plan, result),
        timings=dict(timings or {}),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        trainaudit_version=ver,
    )
