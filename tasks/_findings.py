"""Findings: what every rule returns, and the result of a whole audit.

A :class:`Finding` is a frozen value with exactly the fields RULES.md lists. An
:class:`AuditResult` is the run's identity, its capture coverage, one finding per rule and the
compact series the report plots. Both serialise to and from plain JSON (``audit.json``,
schema in ``docs/AUDIT_JSON.md``); nothing here imports Prefect, Dask or the report code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Status",
    "Severity",
    "StepRef",
    "Finding",
    "AuditResult",
    "AUDIT_SCHEMA_VERSION",
]

Status = Literal["triggered", "ok", "not_evaluable", "error"]
Severity = Literal["critical", "warning", "info"]
STATUSES: tuple[str, ...] = ("triggered", "ok", "not_evaluable", "error")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
AUDIT_SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class StepRef:
    """One step of a run: (global step, mode, mode step, rank)."""

    step: int
    mode: str = "train"
    mode_step: int | None = None
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRef:
        return cls(**d)

    def __str__(self) -> str:
        rank = f", rank {self.rank}" if self.rank else ""
        return f"step {self.step} ({self.mode}{rank})"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """The outcome of one rule on one run.

    ``steps`` holds ``[first, last]`` global-step ranges where the condition held; ``tensors``
    names the layers / tensors / features / classes involved, worst first; ``evidence`` holds the
    numbers behind the verdict and, under ``"plots"``, plot specs the report draws
    (see ``docs/AUDIT_JSON.md``).
    """

    rule: str
    status: Status
    severity: Severity
    message: str
    first_step: StepRef | None = None
    steps: list[list[int]] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    problem: str = ""
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.status != "triggered" and self.first_step is not None:
            raise ValueError("first_step is only set on a triggered finding")

    @property
    def triggered(self) -> bool:
        return self.status == "triggered"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["first_step"] = self.first_step.to_dict() if self.first_step else None
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        d = dict(d)
        fs = d.get("first_step")
        d["first_step"] = StepRef.from_dict(fs) if fs else None
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """Everything one audit produced.

    ``run``: identity (uri, run_id, framework, status, ranks, modes, steps, created, ...).
    ``coverage``: what was captured (collections -> tensor counts, steps), what the capture
    recorded as lost or failed. ``series``: compact, downsampled series for the report (loss
    curves, per-layer gradient norms...). ``timings``: seconds per phase.
    """

    run: dict[str, Any]
    findings: list[Finding]
    coverage: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    trainaudit_version: str = ""

    def finding(self, rule: str) -> Finding:
        """The finding of ``rule`` (KeyError if the rule was not part of the audit)."""
        for f in self.findings:
            if f.rule == rule:
                return f
        raise KeyError(rule)

    @property
    def triggered(self) -> list[Finding]:
        return [f for f in self.findings if f.triggered]

    def counts(self) -> dict[str, int]:
        """Triggered findings per severity, plus not_evaluable and error counts."""
        out = {s: 0 for s in SEVERITIES}
        out["not_evaluable"] = 0
        out["error"] = 0
        for f in self.findings:
            if f.triggered:
                out[f.severity] += 1
            elif f.status in ("not_evaluable", "error"):
                out[f.status] += 1
        return out

    def verdict(self) -> str:
        """``critical``, ``warning``, ``info`` (the worst triggered severity) or ``healthy``."""
        c = self.counts()
        for s in SEVERITIES:
            if c[s]:
                return s
        return "healthy"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "schema_version": AUDIT_SCHEMA_VERSION,
                "created": self.created,
                "trainaudit_version": self.trainaudit_version,
                "run": self.run,
                "verdict": self.verdict(),
                "counts": self.counts(),
                "coverage": self.coverage,
                "findings": [f.to_dict() for f in self.findings],
                "series": self.series,
                "timings": self.timings,
            }
        )

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditResult:
        version = d.get("schema_version")
        if version != AUDIT_SCHEMA_VERSION:
            raise ValueError(
                f"audit.json has schema_version={version!r}; this trainaudit reads {AUDIT_SCHEMA_VERSION}"
            )
        return cls(
            run=d["run"],
            findings=[Finding.from_dict(f) for f in d["findings"]],
            coverage=d.get("coverage", {}),
            series=d.get("series", {}),
            timings=d.get("timings", {}),
            created=d.get("created", ""),
            trainaudit_version=d.get("trainaudit_version", ""),
        )

    @classmethod
    def from_json(cls, text: str) -> AuditResult:
        return cls.from_dict(json.loads(text))


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars and arrays become Python numbers and lists, and
    non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has none)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return _jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return str(obj)
