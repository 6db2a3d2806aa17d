"""Tensors: AllZero, TensorVariance, UnchangedTensor (any selected collections).

AllZero reads the per-step zero counts; TensorVariance the per-step statistics, replaced by the
exact two-pass variance of the saved values wherever those exist (the sum-of-squares formula
cancels for tensors far from zero); UnchangedTensor only the last ``num_steps`` saved values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, step_runs
from .._findings import Finding
from .._kernels import LastRows, StepMoments, StepQuantiles
from .._plan import Need, TensorMeta
from ._common import g, names


def _zero_needs(p: Mapping[str, Any]) -> list[Need]:
    cols = tuple(p["collections"])
    return [Need(name="tensors", collections=cols, source="stats", what=" / ".join(cols))]


@rule(
    id="AllZero",
    problem_class="tensors",
    severity="warning",
    needs=_zero_needs,
    title="All values zero",
    ranges={"threshold": Range(gt=0, le=100)},
    problem="A tensor is entirely zero: a dead layer, a disconnected parameter or a gradient that never flows.",
    fix="Check the layer is connected to the loss (requires_grad, detach() calls), its initialisation, and "
        "whether its inputs are all zero (dead ReLUs upstream).",
)
def all_zero(ctx: RuleContext, *, threshold: float = 100.0,
             collections: Sequence[str] = ("outputs", "gradients", "weights")) -> Finding:
    """At some step, zero / count >= threshold % for a selected tensor (count of all elements).

    Reads per-step statistics. Defaults from smdebug's ``AllZero`` (threshold=100 %, collections
    outputs, gradients and weights).
    """
    ts = ctx.with_stats("tensors")
    if not ts:
        return ctx.missing("tensors")
    hits = []
    all_steps: set[int] = set()
    bad_steps: set[int] = set()
    for t in ts:
        st = t.stats
        assert st is not None
        all_steps.update(int(s) for s in st.steps)
        count = st.field("count")
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(count > 0, st.field("zero") / count, 0.0)
        bad = share * 100 >= threshold
        if bad.any():
            i = int(np.argmax(bad))
            hits.append((int(st.steps[i]), t.name, int(np.count_nonzero(bad)), len(st), int(st.modes[i])))
            bad_steps.update(int(s) for s in st.steps[bad])
    if hits:
        hits.sort()
        s, name, k, n, mode = hits[0]
        allst = sorted(all_steps)
        by_count = sorted(hits, key=lambda h: -h[2])
        return ctx.triggered(
            f"{len(hits)} tensor(s) were >= {g(threshold)}% zero, first {name} at step {s} ({k} of its {n} steps); "
            f"tensors: {names([h[1] for h in by_count])}.",
            first_step=ctx.step_ref(s, mode), steps=step_runs(allst, [x in bad_steps for x in allst]),
            tensors=[h[1] for h in by_count],
            evidence={"steps_all_zero": {h[1]: h[2] for h in by_count},
                      "plots": [_plots.bars("Steps with all-zero values", [h[1] for h in by_count][:50],
                                            [h[2] for h in by_count][:50], x_label="tensor", y_label="steps")]})
    return ctx.ok(f"No tensor of {len(ts)} was >= {g(threshold)}% zero at any of {len(all_steps)} steps.")


# ---------------------------------------------------------------------------------------------


def _skip_norm(t: TensorMeta) -> bool:
    """Norm layers' 1-D scales start as all ones: constant by design, not a problem."""
    return not (len(t.shape) <= 1 and "norm" in t.module_type.lower())


def _variance_needs(p: Mapping[str, Any]) -> list[Need]:
    cols = tuple(p["collections"])
    return [
        Need(name="stats", collections=cols, where=_skip_norm, source="stats", what=" / ".join(cols)),
        Need(name="values", collections=cols, where=_skip_norm, source="values", kernel=StepMoments(),
             what=" / ".join(cols)),
    ]


@rule(
    id="TensorVariance",
    problem_class="tensors",
    severity="warning",
    needs=_variance_needs,
    title="Variance of values too small",
    ranges={"min_threshold": Range(ge=0), "max_threshold": Range(gt=0)},
    problem="A tensor has (almost) no spread: its values are (nearly) identical, so it carries no information.",
    fix="Check the layer's initialisation and inputs; for gradients, see VanishingGradient; for weights, see "
        "UnchangedTensor.",
)
def tensor_variance(ctx: RuleContext, *, min_threshold: float = 1e-10, max_threshold: float | None = None,
                    collections: Sequence[str] = ("weights", "outputs")) -> Finding:
    """At some step, var(tensor) < min_threshold, or var > max_threshold when set (population variance
    of the finite values; the exact value of the saved values where saved, else the per-step
    statistics, skipping steps where their rounding error exceeds min_threshold). Norm-layer
    scales (1-D) are skipped.

    Defaults from smdebug's ``TensorVariance`` (min_threshold=1e-10 in practice; max unset).

    Changed (scenario suite): ``collections`` was (weights, gradients); it is (weights, outputs).
    A gradient's variance scales with the loss, so it shrinks below any absolute threshold as a
    model converges: the healthy CNN's gradients/head.bias (5.4e-11 at step 68) and the healthy
    text model's gradients/embed.weight (9.2e-11, a sparse embedding gradient) fired. Gradient
    scale is VanishingGradient's business (per-layer and depth-relative). A weight or a module
    output with (almost) no spread carries no information whatever the loss does: constant
    weights (the poor_weight_init / constant_weights scenario) and a layer whose outputs are
    constant (all_zero) still fire. Biases are left out: zero-initialised biases are common
    practice, not a problem (select them explicitly with collections=[..., "biases"]).
    """
    ts = ctx.with_stats("stats")
    exact = {t.name: t.result for t in ctx.with_result("values")}
    if not ts and not exact:
        return ctx.missing("stats")
    hits = []
    all_steps: set[int] = set()
    bad_steps: set[int] = set()
    undecided = 0
    for t in ts:
        st = t.stats
        assert st is not None
        var = st.var()
        n = st.finite_count()
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(n > 0, 1e-12 * st.field("sumsq") / n, np.inf)
        known = err < min_threshold if min_threshold > 0 else np.ones(len(var), bool)
        ex = exact.get(t.name)
        if ex is not None and len(ex.records):
            idx = np.searchsorted(st.steps, ex.steps)
            ok = (idx < len(st.steps)) & (st.steps[np.clip(idx, 0, len(st.steps) - 1)] == ex.steps)
            var = var.copy()
            known = known.copy()
            for j, (i, good) in enumerate(zip(idx, ok, strict=True)):
                if good:
                    var[i] = ex.records[j]["var"]
                    known[i] = True
        small = (var < min_threshold) & known & (n > 1)
        undecided += int(np.count_nonzero((var < min_threshold) & ~known & (n > 1)))
        large = var > max_threshold if max_threshold is not None else np.zeros(len(var), bool)
        bad = small | large
        all_steps.update(int(s) for s in st.steps)
        if bad.any():
            i = int(np.argmax(bad))
            hits.append((int(st.steps[i]), t.name, float(var[i]), "small" if small[i] else "large",
                         int(np.count_nonzero(bad)), int(st.modes[i])))
            bad_steps.update(int(s) for s in st.steps[bad])
    evidence: dict[str, Any] = {"undecided_steps": undecided}
    if hits:
        hits.sort()
        s, name, v, kind, k, mode = hits[0]
        thr = f"min_threshold={g(min_threshold)}" if kind == "small" else f"max_threshold={g(max_threshold or 0)}"
        allst = sorted(all_steps)
        evidence["first_per_tensor"] = {h[1]: {"step": h[0], "var": h[2]} for h in hits}
        return ctx.triggered(
            f"var({name}) = {g(v)} at step {s} is too {kind} ({thr}); {len(hits)} tensor(s): "
            f"{names([h[1] for h in hits])}.",
            first_step=ctx.step_ref(s, mode), steps=step_runs(allst, [x in bad_steps for x in allst]),
            tensors=[h[1] for h in sorted(hits, key=lambda h: -h[4])], evidence=evidence)
    rng = f"[{g(min_threshold)}, {g(max_threshold)}]" if max_threshold is not None else f">= {g(min_threshold)}"
    return ctx.ok(f"The variance of {len(ts)} tensor(s) stayed {rng} over {len(all_steps)} steps.", evidence=evidence)


# ---------------------------------------------------------------------------------------------


def _unchanged_needs(p: Mapping[str, Any]) -> list[Need]:
    cols = tuple(p["collections"])
    n = int(p["num_steps"])
    return [
        Need(name="last", collections=cols, source="values", kernel=LastRows(n=n), rows=n, what=" / ".join(cols)),
        Need(name="bands", collections=cols, source="values", kernel=StepQuantiles(), what=" / ".join(cols)),
    ]


@rule(
    id="UnchangedTensor",
    problem_class="tensors",
    severity="warning",
    needs=_unchanged_needs,
    title="Values not changing across steps",
    ranges={"num_steps": Range(ge=2), "rtol": Range(ge=0), "atol": Range(ge=0)},
    problem="A tensor that should train did not change over its last saves, e.g. a frozen layer or a parameter "
            "missing from the optimizer.",
    fix="Check requires_grad and that the parameter is in the optimizer's param groups; check the learning rate "
        "(schedulers that decay to 0) and that the gradient reaches the layer.",
)
def unchanged_tensor(ctx: RuleContext, *, num_steps: int = 3, rtol: float = 1e-5, atol: float = 1e-8,
                     collections: Sequence[str] = ("weights",)) -> Finding:
    """The last num_steps saved values x_1..x_n of a tensor satisfy allclose(x_k, x_(k+1), rtol, atol) for
    every k (|a - b| <= atol + rtol |b| elementwise).

    Reads the last ``num_steps`` saved values (the planner reads no other rows). Defaults from
    smdebug's ``UnchangedTensor`` (num_steps=3, rtol=1e-5, atol=1e-8, weights).
    """
    data = ctx.with_result("last")
    if not data:
        return ctx.missing("last")
    enough = [t for t in data if len(t.result) >= num_steps]
    if not enough:
        most = max(len(t.result) for t in data)
        return ctx.not_evaluable(f"At most {most} saved value(s) per tensor; UnchangedTensor needs num_steps="
                                 f"{num_steps}. Save the collection more often or lower num_steps.")
    hits = []
    for t in enough:
        rows = t.result
        same = all(
            a[2].shape == b[2].shape and np.allclose(a[2], b[2], rtol=rtol, atol=atol, equal_nan=True)
            for a, b in zip(rows, rows[1:], strict=False)
        )
        if same:
            hits.append((rows[0][0], t, rows[0][1], rows[-1][0]))
    evidence: dict[str, Any] = {"checked": [t.name for t in enough]}
    bands = {t.name: t.result for t in ctx.with_result("bands")}
    plots = []
    for _, t, _, _ in sorted(hits, key=lambda h: h[0])[:3] if hits else []:
        q = bands.get(t.name)
        if q is not None and len(q.records):
            recs = np.asarray(q.records, dtype=np.float64)
            plots.append(_plots.bands(f"Distribution of {t.layer}", q.steps.tolist(), recs[:, 2].tolist(),
                                      [{"name": "5-95%", "lo": recs[:, 0].tolist(), "hi": recs[:, 4].tolist()},
                                       {"name": "25-75%", "lo": recs[:, 1].tolist(), "hi": recs[:, 3].tolist()}]))
    evidence["plots"] = plots
    if hits:
        hits.sort(key=lambda h: h[0])
        s, t, mode, last = hits[0]
        return ctx.triggered(
            f"{len(hits)} of {len(enough)} tensor(s) did not change over their last {num_steps} saves "
            f"(allclose rtol={g(rtol)}, atol={g(atol)}), e.g. {t.name} from step {s} to {last}: "
            f"{names([h[1].name for h in hits])}.",
            first_step=ctx.step_ref(s, mode), steps=[[int(s), int(max(h[3] for h in hits))]],
            tensors=[h[1].name for h in hits], evidence=evidence)
    return ctx.ok(f"All {len(enough)} tensor(s) changed over their last {num_steps} saves.", evidence=evidence)
