"""Flows: the Prefect flows (audit a run, audit new runs on a schedule, watch a live run),
their deployment, and the ``trainaudit`` command line."""

from __future__ import annotations

from typing import Any

__all__ = ["audit_run", "audit_run_flow", "audit_new_runs", "watch_run", "serve", "AuditOutcome", "main"]


def __getattr__(name: str) -> Any:
    # Importing Prefect takes a second or two: only when a flow is used, not for `--help`.
    if name in ("audit_run", "audit_run_flow", "AuditOutcome"):
        from . import _audit

        return getattr(_audit, name)
    if name in ("audit_new_runs", "serve"):
        from . import _schedule

        return getattr(_schedule, name)
    if name == "watch_run":
        from ._watch import watch_run

        return watch_run
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module 'trainaudit.flows' has no attribute {name!r}")
