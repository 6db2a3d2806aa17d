"""Decision trees (XGBoost): TreeDepth, FeatureImportanceOverweight.

The XGBoost callback records, per boosting round, the real depth of each new tree (walking the
child links) as ``trees/depth``, and the booster's feature importances as
``feature_importance/<type>`` vectors over all features (names in ``meta["labels"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, step_runs
from .._findings import Finding
from .._kernels import LastRows
from .._plan import Need
from ._common import g, names, pct

IMPORTANCE_TYPES = ("weight", "gain", "cover", "total_gain", "total_cover")


def _depth_needs(p: Mapping[str, Any]) -> list[Need]:
    return [Need(name="depth", collections=("trees",), regex=r"depth$", source="stats", what="tree depths")]


@rule(
    id="TreeDepth",
    problem_class="trees",
    severity="info",
    needs=_depth_needs,
    title="Depth of tree too large",
    ranges={"depth": Range(ge=1)},
    problem="Very deep trees fit noise: each one memorises small groups of training rows.",
    fix="Lower max_depth (or use max_leaves / min_child_weight / gamma), and rely on more boosting rounds "
        "of shallower trees.",
)
def tree_depth(ctx: RuleContext, *, depth: int = 8) -> Finding:
    """Some tree's depth > depth (per round: the maximum depth of the trees that round added).

    Reads ``trees/depth`` statistics. smdebug's ``TreeDepth`` used depth=4, which flags
    XGBoost's own default max_depth=6; we default to 8 (deeper than any default), to calibrate on
    the scenario suite.
    """
    ts = ctx.with_stats("depth")
    if not ts:
        return ctx.missing("depth")
    t = ts[0]
    st = t.stats
    assert st is not None
    d = st.field("max")
    hit = d > depth
    plot = _plots.line("Deepest tree per round", [{"name": "max depth", "x": st.steps, "y": d}], x_label="round",
                       y_label="depth", markers=[{"x": int(st.steps[np.argmax(hit)]), "label": "too deep"}] if hit.any() else [])
    evidence = {"max_depth": float(np.nanmax(d)) if len(d) else None, "rounds": len(d), "plots": [plot]}
    if hit.any():
        i = int(np.argmax(hit))
        return ctx.triggered(
            f"Trees reach depth {int(np.nanmax(d))} > depth={depth}, first in round {int(st.steps[i])}; "
            f"{int(hit.sum())} of {len(d)} rounds added such trees.",
            first_step=ctx.step_ref(int(st.steps[i]), int(st.modes[i])), steps=step_runs(st.steps, hit),
            tensors=[t.name], evidence=evidence)
    return ctx.ok(f"All trees of {len(d)} rounds have depth <= {depth} (deepest {g(float(np.nanmax(d)))}).",
                  evidence=evidence)


def _importance_needs(p: Mapping[str, Any]) -> list[Need]:
    kind = str(p["importance_type"])
    return [Need(name="importance", collections=("feature_importance",), regex=rf"(^|/){kind}$", source="values",
                 kernel=LastRows(n=1), rows=1, what=f"feature importances of type {kind!r}")]


@rule(
    id="FeatureImportanceOverweight",
    problem_class="trees",
    severity="info",
    needs=_importance_needs,
    title="Low feature importance",
    ranges={"threshold": Range(gt=0, le=1), "nfeatures": Range(ge=1)},
    check=lambda p: None if p["importance_type"] in IMPORTANCE_TYPES else
    f"importance_type={p['importance_type']!r} is not allowed: expected one of {', '.join(IMPORTANCE_TYPES)}",
    problem="A few features carry almost all the model's importance: it may rely on a leak or ignore most inputs.",
    fix="Check the top features for target leakage; drop or engineer the features that carry no importance.",
)
def feature_importance_overweight(ctx: RuleContext, *, threshold: float = 0.8, nfeatures: int = 3,
                                  importance_type: str = "gain") -> Finding:
    """The top nfeatures features hold > threshold of the normalised importance sum_top I_f / sum_all I_f
    (importance of type importance_type, at the last saved round); features with zero importance are
    reported too.

    Defaults from smdebug's ``FeatureImportanceOverweight`` (threshold=0.8, nfeatures=3, gain).
    """
    data = ctx.with_result("importance")
    if not data:
        return ctx.missing("importance")
    t = data[0]
    step, mode, vec = t.result[-1]
    v = np.nan_to_num(np.asarray(vec, dtype=np.float64).reshape(-1), nan=0.0)
    v = np.maximum(v, 0.0)
    labels = list(t.meta.meta.get("labels") or [f"f{i}" for i in range(len(v))])
    if len(labels) != len(v):
        labels = [f"f{i}" for i in range(len(v))]
    total = float(v.sum())
    if len(v) <= nfeatures or total <= 0:
        return ctx.not_evaluable(f"The model has {len(v)} feature(s) with total importance {g(total)}; "
                                 f"the rule needs more than nfeatures={nfeatures} and a positive total.")
    share = v / total
    order = np.argsort(-share)
    top = float(share[order[:nfeatures]].sum())
    zero = [labels[i] for i in range(len(v)) if share[i] <= 1e-3]
    shown = order[:50]
    evidence = {"top_share": top, "shares": {labels[i]: float(share[i]) for i in order},
                "near_zero": zero,
                "plots": [_plots.bars(f"Feature importance ({importance_type}), normalised",
                                      [labels[i] for i in shown], [float(share[i]) for i in shown],
                                      x_label="feature", y_label="share")]}
    top_names = [labels[i] for i in order[:nfeatures]]
    zero_txt = f"; {len(zero)} feature(s) carry (almost) no importance: {names(zero)}" if zero else ""
    if top > threshold:
        return ctx.triggered(
            f"The top {nfeatures} features ({names(top_names)}) hold {pct(top)} of the {importance_type} importance "
            f"> threshold={g(threshold)}{zero_txt}.",
            first_step=ctx.step_ref(int(step), int(mode)), steps=[[int(step), int(step)]],
            tensors=top_names + zero, evidence=evidence)
    return ctx.ok(f"The top {nfeatures} features hold {pct(top)} of the {importance_type} importance "
                  f"(<= threshold={g(threshold)}){zero_txt}.", tensors=top_names, evidence=evidence)
