"""What a rule function receives: its data, and the constructors of its finding.

A rule is ``fn(ctx, *, params...) -> Finding``. ``ctx.tensors(need)`` gives, for each tensor a
need selected, its metadata, its per-step statistics and the finalized result of the need's
kernel. ``ctx.triggered / ok / not_evaluable`` build the finding with the rule's id, severity,
parameters, problem and fix filled in, so a rule body is only the comparison and its message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._catalog import RuleSpec
from ._findings import Finding, StepRef
from ._kernels import Kernel
from ._plan import Need, TensorMeta
from ._scan import StatsArrays

__all__ = ["TensorData", "RuleContext", "step_runs", "MODE_NAMES"]

MODE_NAMES = ("train", "eval", "predict")


@dataclass(frozen=True, kw_only=True)
class TensorData:
    """One selected tensor: ``meta``, ``stats`` (None when not read) and ``result`` (the
    finalized kernel output of the need; None when no values were saved)."""

    meta: TensorMeta
    stats: StatsArrays | None
    result: Any
    kernel: Kernel | None

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def layer(self) -> str:
        return self.meta.layer

    @property
    def rank(self) -> int:
        return self.meta.rank


def step_runs(steps: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray) -> list[list[int]]:
    """``[[first, last], ...]`` of the runs of consecutive entries of ``steps`` where ``mask``."""
    s = np.asarray(steps, dtype=np.int64)
    m = np.asarray(mask, dtype=bool)
    out: list[list[int]] = []
    start = None
    for i in range(len(s)):
        if m[i] and start is None:
            start = i
        if start is not None and (not m[i] or i == len(s) - 1):
            end = i if m[i] else i - 1
            out.append([int(s[start]), int(s[end])])
            start = None
    return out


class RuleContext:
    """The data of one rule and the builders of its finding."""

    def __init__(self, *, spec: RuleSpec, params: Mapping[str, Any], needs: Sequence[Need],
                 data: Mapping[str, list[TensorData]], run: Mapping[str, Any],
                 step_table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.spec = spec
        self.params = dict(params)
        self._needs = {n.name: n for n in needs}
        self._data = data
        self.run = run
        self._steps = step_table

    @property
    def step_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(global_step, mode code, mode_step) of the run's steps, sorted by global step."""
        return self._steps

    # data ------------------------------------------------------------------------------------
    def tensors(self, need: str) -> list[TensorData]:
        """The tensors ``need`` selected (sorted by rank, depth, name)."""
        if need not in self._needs:
            raise KeyError(f"rule {self.spec.id} declared no need named {need!r}")
        return list(self._data.get(need, []))

    def with_stats(self, need: str) -> list[TensorData]:
        return [t for t in self.tensors(need) if t.stats is not None and len(t.stats)]

    def with_result(self, need: str) -> list[TensorData]:
        return [t for t in self.tensors(need) if t.result is not None and _nonempty(t.result)]

    def step_ref(self, step: int, mode: int | str | None = None, rank: int = 0) -> StepRef:
        """The full reference of a global step (mode and mode step from the step table)."""
        mode_step = None
        mname = MODE_NAMES[mode] if isinstance(mode, int | np.integer) else mode
        if self._steps is not None:
            g, m, ms = self._steps
            i = int(np.searchsorted(g, step))
            if i < len(g) and g[i] == step:
                mode_step = int(ms[i])
                mname = mname or MODE_NAMES[int(m[i])]
        return StepRef(step=int(step), mode=mname or "train", mode_step=mode_step, rank=int(rank))

    # findings ---------------------------------------------------------------------------------
    def _finding(self, status: str, message: str, **kw: Any) -> Finding:
        return Finding(
            rule=self.spec.id,
            status=status,  # type: ignore[arg-type]
            severity=self.spec.severity,  # type: ignore[arg-type]
            message=message,
            params=self.params,
            problem=self.spec.problem,
            fix=self.spec.fix,
            **kw,
        )

    def triggered(self, message: str, *, first_step: StepRef | None = None,
                  steps: list[list[int]] | None = None, tensors: Sequence[str] = (),
                  evidence: Mapping[str, Any] | None = None) -> Finding:
        return self._finding("triggered", message, first_step=first_step, steps=steps or [],
                             tensors=list(tensors), evidence=dict(evidence or {}))

    def ok(self, message: str, *, tensors: Sequence[str] = (), evidence: Mapping[str, Any] | None = None) -> Finding:
        return self._finding("ok", message, tensors=list(tensors), evidence=dict(evidence or {}))

    def not_evaluable(self, message: str, *, evidence: Mapping[str, Any] | None = None) -> Finding:
        return self._finding("not_evaluable", message, evidence=dict(evidence or {}))

    def missing(self, *needs: str, extra: str = "") -> Finding:
        """``not_evaluable`` naming the data and the collections to turn on."""
        parts = []
        colls: list[str] = []
        for n in needs:
            need = self._needs[n]
            parts.append(need.what or n)
            colls.extend(c for c in need.collections if c not in colls)
        what = " or ".join(parts)
        turn_on = (
            f"; turn on the {', '.join(repr(c) for c in colls)} collection{'s' if len(colls) > 1 else ''} in the capture config"
            if colls else ""
        )
        return self.not_evaluable(f"The run holds no {what}{extra}{turn_on}.")

    def error(self, message: str) -> Finding:
        return self._finding("error", message)


def _nonempty(result: Any) -> bool:
    if hasattr(result, "records"):
        return len(result.records) > 0
    if isinstance(result, list | dict):
        return len(result) > 0
    return True
