"""Hand-made finalized statistics for the rule tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trainaudit.capture._format import N_STATS, STAT
from trainaudit.tasks import (
    Finding,
    RuleContext,
    StatsArrays,
    StepSeries,
    TensorData,
    TensorMeta,
    get_rule,
)
from trainaudit.tasks._catalog import resolve_params


def meta(name: str, *, shape: Sequence[int] = (), dtype: str = "float32", rank: int = 0, **m: Any) -> TensorMeta:
    return TensorMeta(name=name, rank=rank, collection=name.split("/", 1)[0], shape=tuple(shape), dtype=dtype,
                      meta=m, n_stats=1, n_values=1, shard_steps=1)


def stats_from(values_per_step: Sequence[np.ndarray | float], *, steps: Sequence[int] | None = None,
               modes: Sequence[int] | None = None) -> StatsArrays:
    """Per-step statistics computed from the given values (as capture writes them)."""
    from trainaudit.capture._format import numpy_stats

    rows = [numpy_stats(np.asarray(v, dtype=np.float64)) for v in values_per_step]
    n = len(rows)
    return StatsArrays(
        steps=np.asarray(steps if steps is not None else range(n), dtype=np.int64),
        modes=np.asarray(modes if modes is not None else [0] * n, dtype=np.int64),
        values=np.asarray(rows, dtype=np.float64).reshape(n, N_STATS),
    )


def scalar_stats(ys: Sequence[float], *, steps: Sequence[int] | None = None,
                 modes: Sequence[int] | None = None) -> StatsArrays:
    return stats_from([np.float64(y) for y in ys], steps=steps, modes=modes)


def series(records: list[Any], *, steps: Sequence[int] | None = None, modes: Sequence[int] | None = None) -> StepSeries:
    n = len(records)
    return StepSeries(steps=np.asarray(steps if steps is not None else range(n), dtype=np.int64),
                      modes=np.asarray(modes if modes is not None else [0] * n, dtype=np.int64), records=records)


def td(m: TensorMeta, *, stats: StatsArrays | None = None, result: Any = None) -> TensorData:
    return TensorData(meta=m, stats=stats, result=result, kernel=None)


def run_rule(rule_id: str, data: Mapping[str, list[TensorData]], params: Mapping[str, Any] | None = None,
             step_table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Finding:
    spec = get_rule(rule_id)
    p = resolve_params(spec, params)
    needs = spec.needs(p)
    ctx = RuleContext(spec=spec, params=p, needs=needs, data=dict(data), run={}, step_table=step_table)
    f = spec.fn(ctx, **p)
    assert isinstance(f, Finding) and f.rule == rule_id
    f2 = Finding.from_dict(__import__("json").loads(__import__("json").dumps(f.to_dict())))
    assert f2.rule == f.rule and f2.status == f.status
    return f


STAT_INDEX = STAT


def _entry_point_rule(ctx: RuleContext, *, a: int = 1) -> Finding:
    """Always ok. Defaults: none."""
    return ctx.ok("fine")


def register_entry_point_rule() -> None:
    """What a third-party package's entry point names: a callable that registers its rules."""
    from trainaudit.tasks import register_rule

    register_rule(_entry_point_rule, id="EntryPointRule", needs=[])
