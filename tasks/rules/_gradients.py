"""Gradients: VanishingGradient, ExplodingTensor.

Both read only the per-step statistics capture writes for every tensor every step (L1, sum of
squares, NaN and Inf counts), so they see every step, not just the steps with saved values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, TensorData, step_runs
from .._findings import Finding
from .._plan import Need
from ._common import g, names


def _grad_needs(p: Mapping[str, Any]) -> list[Need]:
    return [Need(name="gradients", collections=("gradients",), source="stats", what="gradients")]


def _depth_order(ts: list[TensorData]) -> list[TensorData]:
    return sorted(ts, key=lambda t: (t.meta.depth, 0 if t.meta.meta.get("param", "weight") == "weight" else 1, t.name))


def _grid(ts: list[TensorData], value: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, matrix layer x step) of a per-step statistic (NaN where a layer has no row)."""
    steps = np.unique(np.concatenate([t.stats.steps for t in ts if t.stats is not None]))
    z = np.full((len(ts), len(steps)), np.nan)
    for i, t in enumerate(ts):
        st = t.stats
        assert st is not None
        v = st.mean_abs() if value == "mean_abs" else st.l2()
        z[i, np.searchsorted(steps, st.steps)] = v
    return steps, z


@rule(
    id="VanishingGradient",
    problem_class="gradients",
    severity="critical",
    needs=_grad_needs,
    title="Vanishing gradients",
    ranges={"threshold": Range(gt=0), "ratio_threshold": Range(gt=0, le=1)},
    problem="Gradients shrink to (almost) nothing on their way back: the early layers stop learning.",
    fix="Use ReLU-family activations, He/Xavier initialisation, normalisation layers or residual connections; "
        "check for a learning rate or loss scale that is too small.",
)
def vanishing_gradient(ctx: RuleContext, *, threshold: float = 1e-7, ratio_threshold: float = 1e-3) -> Finding:
    """At some step, mean |g| < threshold for some layer (mean |g| = L1 / finite count); or
    ||g_first layer||_2 / ||g_last layer||_2 < ratio_threshold (first/last in forward order).

    Reads gradient statistics. Default threshold=1e-7 from smdebug's ``VanishingGradient``;
    ratio_threshold=1e-3 (three orders of magnitude lost between the ends) is ours.
    """
    ts = _depth_order(ctx.with_stats("gradients"))
    if not ts:
        return ctx.missing("gradients")
    steps, mabs = _grid(ts, "mean_abs")
    _, l2 = _grid(ts, "l2")
    small = mabs < threshold  # NaN compares False
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = l2[0] / l2[-1] if len(ts) >= 2 else np.full(len(steps), np.nan)
    dies = (ratio < ratio_threshold) & np.isfinite(ratio)
    hit = small.any(axis=0) | dies
    evidence: dict[str, Any] = {
        "min_mean_abs_per_layer": {t.layer: float(np.nanmin(mabs[i])) if np.isfinite(mabs[i]).any() else None
                                   for i, t in enumerate(ts)},
        "first_last_ratio_min": float(np.nanmin(ratio)) if np.isfinite(ratio).any() else None,
        "layers_in_depth_order": [t.layer for t in ts],
    }
    if hit.any():
        j = int(np.argmax(hit))
        s = int(steps[j])
        layers = [ts[i].layer for i in range(len(ts)) if small[i].any()]
        evidence["plots"] = [_plots.heatmap("Mean |gradient| per layer", steps.tolist(), [t.layer for t in ts],
                                            mabs.tolist(), log=True, markers=[{"x": s, "label": "vanishing"}])]
        parts = []
        if small[:, j].any():
            i = int(np.argmax(small[:, j]))
            parts.append(f"mean |g| of {ts[i].layer} is {g(mabs[i, j])} < threshold={g(threshold)}")
        if dies[j]:
            parts.append(f"||g|| of the first layer ({ts[0].layer}) is {g(ratio[j])}x that of the last "
                         f"({ts[-1].layer}) < ratio_threshold={g(ratio_threshold)}")
        if dies.any() and ts[0].layer not in layers:
            layers = [ts[0].layer] + layers
        mode = int(ts[0].stats.modes[0]) if ts[0].stats is not None and len(ts[0].stats) else 0
        return ctx.triggered(
            f"Vanishing gradients from step {s}: {'; '.join(parts)}; {int(hit.sum())} of {len(steps)} steps affected"
            + (f", layers {names(layers)}" if layers else "") + ".",
            first_step=ctx.step_ref(s, mode),
            steps=step_runs(steps, hit),
            tensors=layers,
            evidence=evidence,
        )
    return ctx.ok(f"Gradients of {len(ts)} layer(s) stayed above threshold={g(threshold)} over {len(steps)} steps"
                  + (f" (first/last norm ratio >= {g(float(np.nanmin(ratio)))})" if np.isfinite(ratio).any() else "")
                  + ".", evidence=evidence)


# ---------------------------------------------------------------------------------------------

_ORDER = {"inputs": 0, "outputs": 1, "activation_inputs": 1, "losses": 2, "gradients": 3, "weights": 4, "biases": 4}


def _exploding_needs(p: Mapping[str, Any]) -> list[Need]:
    return [
        Need(name="tensors", collections=tuple(p["collections"]), source="stats", ranks="all",
             what=" / ".join(p["collections"])),
        Need(name="inputs", collections=("inputs",), source="stats", ranks="all", what="model inputs"),
    ]


def _causal_key(t: TensorData) -> tuple[float, float, str]:
    """Order tensors of one step from cause to effect: inputs, then the forward pass by depth,
    the loss, the backward pass from the last layer, then the weights (updated last)."""
    c = _ORDER.get(t.meta.collection, 5)
    d = t.meta.depth if np.isfinite(t.meta.depth) else 1e9
    return (c, -d if t.meta.collection == "gradients" else d, t.name)


@rule(
    id="ExplodingTensor",
    problem_class="gradients",
    severity="critical",
    needs=_exploding_needs,
    title="Exploding tensors (NaN / Inf, exploding gradients)",
    ranges={"growth_factor": Range(gt=1), "window": Range(ge=1), "max_norm": Range(gt=0)},
    problem="A tensor went non-finite (NaN or Inf) or a gradient norm exploded: training diverges from that step on.",
    fix="Lower the learning rate, clip gradients (clip_grad_norm_), check the loss for log(0) or division by zero, "
        "use a loss scaler with mixed precision, and check the inputs of the first non-finite tensor.",
)
def exploding_tensor(ctx: RuleContext, *, only_nan: bool = False, growth_factor: float = 100.0, window: int = 10,
                     max_norm: float = 1e6,
                     collections: Sequence[str] = ("gradients", "weights", "losses", "outputs")) -> Finding:
    """Some selected tensor has a NaN (or, unless only_nan, a +-Inf) at some step; or a gradient's L2
    norm g_s > max_norm, or g_s / g_(s - window) > growth_factor. Reports the first (step, rank,
    tensor) that went non-finite in causal order, and whether the model inputs were finite then.

    Reads per-step statistics (NaN/Inf counts, sums of squares) of every rank. Defaults: smdebug's
    ``ExplodingTensor`` (only_nan=False); growth_factor=100 over window=10 steps and max_norm=1e6
    are ours (AUTOTRAINER's explosion check).
    """
    ts = ctx.with_stats("tensors")
    if not ts:
        return ctx.missing("tensors")
    first: tuple[int, tuple[float, float, str], TensorData, int] | None = None
    bad_steps: set[int] = set()
    all_steps: set[int] = set()
    nonfinite_tensors: dict[str, int] = {}
    for t in ts:
        st = t.stats
        assert st is not None
        all_steps.update(int(s) for s in st.steps)
        nf = st.field("nan") if only_nan else st.nonfinite()
        bad = nf > 0
        if bad.any():
            i = int(np.argmax(bad))
            s = int(st.steps[i])
            nonfinite_tensors[t.name] = s
            bad_steps.update(int(x) for x in st.steps[bad])
            cand = (s, _causal_key(t), t, int(st.modes[i]))
            if first is None or (cand[0], cand[1]) < (first[0], first[1]):
                first = cand
    # gradient norm growth and ceiling
    growth: list[tuple[int, str, float, str, int]] = []
    for t in ts:
        if t.meta.collection != "gradients":
            continue
        st = t.stats
        assert st is not None
        l2 = np.where(st.nonfinite() > 0, np.nan, st.l2())
        over = l2 > max_norm
        j = np.searchsorted(st.steps, st.steps - window, side="right") - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(j >= 0, l2 / l2[np.clip(j, 0, None)], np.nan)
        jump = (rel > growth_factor) & np.isfinite(rel)
        hit = over | jump
        if hit.any():
            i = int(np.argmax(hit))
            kind = (f"L2 norm {g(l2[i])} > max_norm={g(max_norm)}" if over[i]
                    else f"L2 norm grew {g(rel[i])}x in {window} steps > growth_factor={g(growth_factor)}")
            growth.append((int(st.steps[i]), t.name, float(l2[i]), kind, int(st.modes[i])))
            bad_steps.update(int(x) for x in st.steps[hit])
    evidence: dict[str, Any] = {"nonfinite_first_step": nonfinite_tensors,
                                "norm_events": [{"step": s, "tensor": n, "l2": v, "what": k} for s, n, v, k, _ in growth[:50]]}
    grads = sorted([t for t in ts if t.meta.collection == "gradients" and t.rank == min(x.rank for x in ts)],
                   key=lambda t: (t.meta.depth, t.name))
    if grads:
        steps = np.unique(np.concatenate([t.stats.steps for t in grads if t.stats is not None]))
        z = np.full((len(grads), len(steps)), np.nan)
        for i, t in enumerate(grads):
            st = t.stats
            assert st is not None
            z[i, np.searchsorted(steps, st.steps)] = np.where(st.nonfinite() > 0, np.inf, st.l2())
        markers = [{"x": first[0], "label": f"first non-finite: {first[2].name}"}] if first else []
        markers += [{"x": s, "label": f"{n}: {k}"} for s, n, _, k, _ in sorted(growth)[:3]]
        evidence["plots"] = [_plots.heatmap("Gradient L2 norm per layer", steps.tolist(), [t.layer for t in grads],
                                            z.tolist(), log=True, markers=markers)]
    allst = sorted(all_steps)
    if first is not None:
        s, _, t, mode = first
        inputs = [x for x in ctx.with_stats("inputs") if x.rank == t.rank]
        inputs_finite: bool | None = None
        for x in inputs:
            st = x.stats
            assert st is not None
            m = st.steps == s
            if m.any():
                ok = bool((st.nonfinite()[m] == 0).all())
                inputs_finite = ok if inputs_finite is None else inputs_finite and ok
        evidence.update({"first_nonfinite": {"step": s, "rank": t.rank, "tensor": t.name},
                         "inputs_finite": inputs_finite})
        same_step = sorted((n for n, st_ in nonfinite_tensors.items() if st_ == s))
        inp = {True: "the model inputs were finite", False: "the model inputs were already non-finite",
               None: "the model inputs were not captured"}[inputs_finite]
        what = "NaN" if only_nan else "NaN/Inf"
        return ctx.triggered(
            f"{t.name} went {what} first, at step {s}" + (f" on rank {t.rank}" if t.rank else "")
            + f" ({len(same_step)} tensor(s) non-finite at that step, {len(nonfinite_tensors)} in all; {inp}).",
            first_step=ctx.step_ref(s, mode, t.rank),
            steps=step_runs(allst, [x in bad_steps for x in allst]),
            tensors=[t.name] + [n for n in sorted(nonfinite_tensors, key=lambda n: nonfinite_tensors[n]) if n != t.name],
            evidence=evidence,
        )
    if growth:
        growth.sort()
        s, name, _, kind, mode = growth[0]
        return ctx.triggered(
            f"Exploding gradient: {name} {kind} at step {s}; {len(growth)} gradient(s) affected.",
            first_step=ctx.step_ref(s, mode), steps=step_runs(allst, [x in bad_steps for x in allst]),
            tensors=[x[1] for x in growth], evidence=evidence)
    return ctx.ok(f"All {len(ts)} tensor(s) stayed finite over {len(allst)} steps and no gradient norm exceeded "
                  f"max_norm={g(max_norm)} or grew more than growth_factor={g(growth_factor)}x in {window} steps.",
                  evidence=evidence)
