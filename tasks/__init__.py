"""trainaudit.tasks: statistic kernels, the rule catalog, the planner, the scan and the audit.

``import trainaudit.tasks`` loads neither Prefect nor Dask: the Prefect task wrappers live in
``trainaudit.tasks._prefect`` (import it explicitly), and Dask is imported when a scan runs.
"""

from __future__ import annotations

from ._audit import audit, open_client, write_audit_json
from ._catalog import (
    Range,
    RuleSpec,
    catalog,
    format_catalog,
    get_rule,
    register_rule,
    registry,
    rule,
    unregister_rule,
)
from ._context import RuleContext, TensorData
from ._evaluate import build_result, evaluate
from ._findings import AUDIT_SCHEMA_VERSION, AuditResult, Finding, Severity, Status, StepRef
from ._kernels import (
    Block,
    ChannelMoments,
    ClassCounts,
    ConfusionCounts,
    FirstRowChecks,
    Histogram,
    Kernel,
    LastRows,
    Moments,
    PerStepKernel,
    StepDiffs,
    StepMoments,
    StepQuantiles,
    StepSeries,
    TokenCounts,
    UnitBand,
)
from ._plan import Need, Plan, TensorMeta, make_plan
from ._scan import ScanError, ScanResult, StatsArrays, merge_scans, scan

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "AuditResult",
    "Block",
    "ChannelMoments",
    "ClassCounts",
    "ConfusionCounts",
    "Finding",
    "FirstRowChecks",
    "Histogram",
    "Kernel",
    "LastRows",
    "Moments",
    "Need",
    "PerStepKernel",
    "Plan",
    "Range",
    "RuleContext",
    "RuleSpec",
    "ScanError",
    "ScanResult",
    "Severity",
    "StatsArrays",
    "Status",
    "StepDiffs",
    "StepMoments",
    "StepQuantiles",
    "StepRef",
    "StepSeries",
    "TensorData",
    "TensorMeta",
    "TokenCounts",
    "UnitBand",
    "audit",
    "build_result",
    "catalog",
    "evaluate",
    "format_catalog",
    "get_rule",
    "make_plan",
    "merge_scans",
    "open_client",
    "register_rule",
    "registry",
    "rule",
    "scan",
    "unregister_rule",
    "write_audit_json",
]
