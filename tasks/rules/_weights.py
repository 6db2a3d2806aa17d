"""Weights: PoorWeightInitialization, WeightUpdateRatio.

PoorWeightInitialization reads only the *first* saved value of each weight (the planner reads
one row) and the per-step statistics of the activation inputs of the first steps.
WeightUpdateRatio prefers the update norms capture computes every optimizer step (the
``updates`` collection, statistics only) and falls back to differencing consecutive saved
weights when those were not captured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, step_runs
from .._findings import Finding
from .._kernels import FirstRowChecks, StepDiffs
from .._plan import Need, TensorMeta
from ._common import g, names


def _matrix(t: TensorMeta) -> bool:
    return len(t.shape) >= 2


def _init_needs(p: Mapping[str, Any]) -> list[Need]:
    return [
        Need(name="weights", collections=("weights",), where=_matrix, source="values",
             kernel=FirstRowChecks(atol=float(p["atol"])), rows="first", what="weights"),
        Need(name="preacts", collections=("activation_inputs",), source="stats", what="layer inputs"),
    ]


def _fan_range(fan_in: int, fan_out: int) -> tuple[float, float]:
    """The std range the usual initialisers give: PyTorch's default (kaiming_uniform with
    a=sqrt(5): 1/sqrt(3 fan_in)), Xavier (sqrt(2/(fan_in+fan_out))) and He (sqrt(2/fan_in))."""
    cands = [1 / math.sqrt(3 * max(1, fan_in)), math.sqrt(2 / max(1, fan_in + fan_out)), math.sqrt(2 / max(1, fan_in))]
    return min(cands), max(cands)


@rule(
    id="PoorWeightInitialization",
    problem_class="weights",
    severity="warning",
    needs=_init_needs,
    title="Poor initialization",
    ranges={"atol": Range(ge=0), "max_variance": Range(gt=0), "fan_factor": Range(ge=1), "threshold": Range(ge=1),
            "steps": Range(ge=1)},
    problem="The weights start in a bad place: identical neurons never differentiate (symmetry), and a wrong scale "
            "makes activations and gradients explode or vanish through the layers.",
    fix="Use the framework's default or He (ReLU) / Xavier (tanh, sigmoid) initialisation with random values; never "
        "initialise a layer's weights to one constant.",
)
def poor_weight_initialization(ctx: RuleContext, *, atol: float = 1e-7, max_variance: float = 1.0,
                               fan_factor: float = 10.0, threshold: float = 10.0, steps: int = 10) -> Finding:
    """At the first saved step: (a) in a weight matrix, rows (neurons) equal within atol, or all weights one
    constant; (b) var(W) > max_variance, or std(W) outside [lo / fan_factor, hi x fan_factor] with
    [lo, hi] the stds of PyTorch-default, Xavier and He initialisation for the layer's fan-in/out
    (embeddings skip (b)); (c) max/min over layers of the mean variance of the activation inputs
    in the first ``steps`` steps > threshold.

    Defaults: threshold=10 and steps=10 from smdebug's ``PoorWeightInitialization``; atol,
    max_variance and fan_factor are ours (AUTOTRAINER's symmetry check made numeric).
    """
    weights = ctx.with_result("weights")
    pre = ctx.with_stats("preacts")
    if not weights and not pre:
        return ctx.missing("weights", "preacts")
    problems: list[tuple[str, str]] = []  # (layer, text)
    per_layer: dict[str, float] = {}
    first_step = None
    for t in weights:
        r = t.result
        first_step = r["step"] if first_step is None else min(first_step, r["step"])
        per_layer[t.layer] = r["std"]
        if r["constant"]:
            problems.append((t.layer, f"all weights of {t.layer} are one constant"))
            continue
        if r["duplicate_rows"]:
            problems.append((t.layer, f"{r['duplicate_rows']} of {r['rows']} neurons of {t.layer} have identical "
                                      f"weights (atol={g(atol)})"))
        if "embedding" in t.meta.module_type.lower():
            continue
        lo, hi = _fan_range(r["fan_in"], r["fan_out"])
        if r["var"] > max_variance:
            problems.append((t.layer, f"var(W) of {t.layer} is {g(r['var'])} > max_variance={g(max_variance)}"))
        elif not lo / fan_factor <= r["std"] <= hi * fan_factor:
            problems.append((t.layer, f"std(W) of {t.layer} is {g(r['std'])}, outside [{g(lo / fan_factor)}, "
                                      f"{g(hi * fan_factor)}] (fan-in {r['fan_in']}, fan_factor={g(fan_factor)})"))
    ratio = None
    if len(pre) >= 2:
        variances = {}
        for t in sorted(pre, key=lambda t: (t.meta.depth, t.name)):
            st = t.stats
            assert st is not None
            first = np.unique(st.steps)[:steps]
            m = np.isin(st.steps, first)
            v = float(np.nanmean(st.var()[m])) if m.any() else float("nan")
            if np.isfinite(v):
                variances[t.layer] = v
        if len(variances) >= 2 and min(variances.values()) > 0:
            ratio = max(variances.values()) / min(variances.values())
            if ratio > threshold:
                hi_l = max(variances, key=lambda k: variances[k])
                lo_l = min(variances, key=lambda k: variances[k])
                problems.append((hi_l, f"activation-input variance differs {g(ratio)}x across layers in the first "
                                       f"{steps} steps ({hi_l}: {g(variances[hi_l])}, {lo_l}: {g(variances[lo_l])}; "
                                       f"threshold={g(threshold)})"))
        evidence_var = variances
    else:
        evidence_var = {}
    evidence: dict[str, Any] = {"std_per_layer": per_layer, "input_variance_per_layer": evidence_var,
                                "input_variance_ratio": ratio}
    if per_layer:
        evidence["plots"] = [_plots.bars("Weight std at initialisation", list(per_layer), list(per_layer.values()),
                                         x_label="layer", y_label="std")]
    if problems:
        s = first_step if first_step is not None else 0
        return ctx.triggered(f"Poor initialisation: {problems[0][1]}" +
                             (f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else "") + ".",
                             first_step=ctx.step_ref(s), steps=[[s, s]],
                             tensors=list(dict.fromkeys(p[0] for p in problems)),
                             evidence={**evidence, "problems": [p[1] for p in problems]})
    return ctx.ok(f"The initial weights of {len(weights)} layer(s) are random and scaled within fan_factor="
                  f"{g(fan_factor)} of the usual initialisers" +
                  (f"; activation-input variances within {g(ratio)}x" if ratio is not None else "") + ".",
                  evidence=evidence)


# ---------------------------------------------------------------------------------------------


def _ratio_needs(p: Mapping[str, Any]) -> list[Need]:
    return [
        Need(name="updates", collections=("updates",), source="stats", what="update norms"),
        Need(name="norms", collections=("weights",), source="stats", what="weights"),
        Need(name="diffs", collections=("weights",), source="values", kernel=StepDiffs(), what="weights",
             fallback_of=("updates",)),
    ]


def _leaf(name: str) -> str:
    return name.split("/", 1)[-1]


@rule(
    id="WeightUpdateRatio",
    problem_class="weights",
    severity="warning",
    needs=_ratio_needs,
    title="Updates too small / too large",
    ranges={"small_threshold": Range(ge=0), "large_threshold": Range(gt=0), "epsilon": Range(gt=0)},
    check=lambda p: None if p["small_threshold"] < p["large_threshold"] else
    f"small_threshold={p['small_threshold']!r} must be < large_threshold={p['large_threshold']!r}",
    problem="The optimizer's steps are negligible (or enormous) relative to the weights: the layer does not "
            "train (or training is unstable).",
    fix="Too small: raise the learning rate, check that the layer's parameters are in the optimizer and not frozen. "
        "Too large: lower the learning rate, add warm-up or gradient clipping.",
)
def weight_update_ratio(ctx: RuleContext, *, small_threshold: float = 1e-8, large_threshold: float = 10.0,
                        epsilon: float = 1e-9) -> Finding:
    """ratio_s = ||W_s - W_prev||_2 / (||W_prev||_2 + epsilon) per layer and optimizer step (a gap of k train
    steps between saves divides by k); fires if ratio < small_threshold or > large_threshold at some step.
    Steps where ||W_prev|| = 0 (zero-initialised) are skipped.

    Reads update norms (``updates``) with the weight norms from the per-step stats, else full
    weights at consecutive saves. Defaults from smdebug's ``WeightUpdateRatio`` (1e-8, 10, 1e-9).
    """
    updates = ctx.with_stats("updates")
    norms = {_leaf(t.name): t for t in ctx.with_stats("norms")}
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []  # (layer, steps, modes, ratio)
    if updates:
        for u in updates:
            st = u.stats
            assert st is not None
            w = norms.get(_leaf(u.name))
            if w is None:
                continue  # biases and other parameters without weight stats
            wst = w.stats
            assert wst is not None
            upd = st.field("sum")
            # ||W_prev||: the weight norm at the newest stats row before the update's step
            wl2 = wst.l2()
            idx = np.searchsorted(wst.steps, st.steps, side="left") - 1
            prev = np.where(idx >= 0, wl2[np.clip(idx, 0, None)], np.nan) if len(wl2) else np.full(len(upd), np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(prev > 0, upd / (prev + epsilon), np.nan)
            rows.append((w.layer, st.steps, st.modes, ratio))
        source = "updates"
    else:
        diffs = ctx.with_result("diffs")
        if not diffs:
            return ctx.missing("updates", "diffs", extra=" at two or more steps")
        table = ctx.step_table
        for t in diffs:
            res = t.result
            if not len(res.records):
                continue
            d = np.array([r[0] for r in res.records])
            p = np.array([r[1] for r in res.records])
            prev_steps = np.array([r[2] for r in res.records])
            gap = np.ones(len(d))
            if table is not None:
                g_, m_, _ = table
                train = g_[m_ == 0]
                gap = np.maximum(1, np.searchsorted(train, res.steps, side="right")
                                 - np.searchsorted(train, prev_steps, side="right"))
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(p > 0, d / (p + epsilon) / gap, np.nan)
            rows.append((t.layer, res.steps, res.modes, ratio))
        source = "saved weights"
    rows = [r for r in rows if np.isfinite(r[3]).any()]
    if not rows:
        return ctx.not_evaluable("No weight update could be related to its weight norm; capture the 'updates' "
                                 "collection with the 'weights' statistics, or save weights at two or more steps.")
    hits = []
    all_steps: set[int] = set()
    for layer, steps, modes, ratio in rows:
        small = ratio < small_threshold
        large = ratio > large_threshold
        bad = np.isfinite(ratio) & (small | large)
        all_steps.update(int(s) for s in steps)
        if bad.any():
            i = int(np.argmax(bad))
            hits.append((int(steps[i]), layer, float(ratio[i]), "small" if small[i] else "large",
                         int(np.count_nonzero(bad)), steps[bad], int(modes[i])))
    series = [{"name": layer, "x": steps, "y": ratio} for layer, steps, _, ratio in rows[:20]]
    med = {layer: float(np.nanmedian(ratio)) for layer, _, _, ratio in rows}
    evidence = {"source": source, "median_ratio_per_layer": med,
                "plots": [_plots.line("Update / weight norm ratio", series, y_label="ratio", log_y=True,
                                      markers=[{"x": h[0], "label": f"{h[1]}: too {h[3]}"} for h in sorted(hits)[:5]])]}
    if hits:
        hits.sort()
        s, layer, r, kind, n, _, mode = hits[0]
        thr = f"small_threshold={g(small_threshold)}" if kind == "small" else f"large_threshold={g(large_threshold)}"
        bad_steps = sorted({int(x) for h in hits for x in h[5]})
        allst = sorted(all_steps)
        return ctx.triggered(
            f"Updates too {kind} in {len(hits)} layer(s): in {layer}, ||dW||/||W|| = {g(r)} at step {s} ({thr}); "
            f"layers: {names([h[1] for h in hits])}.",
            first_step=ctx.step_ref(s, mode),
            steps=step_runs(allst, [x in set(bad_steps) for x in allst]),
            tensors=[h[1] for h in sorted(hits, key=lambda h: -h[4])],
            evidence=evidence,
        )
    lo = min(med.values())
    hi = max(med.values())
    return ctx.ok(f"Update/weight ratios of {len(rows)} layer(s) stay within [{g(small_threshold)}, "
                  f"{g(large_threshold)}] (medians {g(lo)}-{g(hi)}).", evidence=evidence)
