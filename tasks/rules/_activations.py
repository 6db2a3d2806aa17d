"""Activation functions: TanhSaturation, SigmoidSaturation, DeadRelu.

All three measure, per unit (a feature or channel, over the batch and any spatial axes), the
*active share*: the share of the unit's entries inside the band where the function still has a
useful derivative. A unit whose active share is below ``threshold_inactivity`` % is dead /
saturated; a layer is flagged when more than ``threshold_layer`` % of its units are. The rules
read full values (the :class:`~trainaudit.tasks.UnitBand` kernel, one pass per block).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, TensorData
from .._findings import Finding
from .._kernels import UnitBand
from .._plan import Need, TensorMeta
from ._common import g, pct, unit_axis

_PCT = Range(ge=0, le=100)


def _band_need(name: str, collection: str, act: str, lo: float, hi: float, *, what: str,
               fallback_of: tuple[str, ...] = (), followed_by: bool = False) -> Need:
    def where(t: TensorMeta) -> bool:
        if followed_by:
            return str(t.meta.get("followed_by", "")).lower() == act and not t.activation
        return t.activation == act

    def kernel(t: TensorMeta) -> UnitBand:
        return UnitBand(lo=lo, hi=hi, axis=unit_axis(t))

    return Need(name=name, collections=(collection,), where=where, source="values", kernel=kernel,
                what=what, fallback_of=fallback_of)


def _layer_shares(t: TensorData, threshold_inactivity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per saved step: (steps, modes, share of the layer's units whose active share is below
    ``threshold_inactivity`` %)."""
    res = t.result
    shares = []
    for per_unit, counts in res.records:
        active = np.asarray(counts, dtype=np.float64) / max(1, per_unit)
        shares.append(float(np.mean(active < threshold_inactivity / 100)) if active.size else 0.0)
    return res.steps, res.modes, np.asarray(shares)


def _saturation(ctx: RuleContext, data: list[TensorData], *, label: str, threshold_inactivity: float,
                threshold_layer: float, evidence_extra: Mapping[str, Any]) -> Finding:
    first: tuple[int, int, int, str] | None = None  # (step, mode, rank, layer)
    worst: dict[str, float] = {}
    last: dict[str, float] = {}
    fired_steps: set[int] = set()
    for t in data:
        steps, modes, share = _layer_shares(t, threshold_inactivity)
        if not len(share):
            continue
        worst[t.layer] = max(worst.get(t.layer, 0.0), float(share.max()))
        last[t.layer] = float(share[-1])
        hit = share > threshold_layer / 100
        fired_steps.update(int(s) for s in steps[hit])
        if hit.any():
            i = int(np.argmax(hit))
            cand = (int(steps[i]), int(modes[i]), t.rank, t.layer)
            if first is None or cand[0] < first[0]:
                first = cand
    if not worst:
        return ctx.not_evaluable(f"No saved values of {label} layers were found.")
    order = sorted(worst, key=lambda k: -worst[k])
    plot = _plots.bars(f"Share of {label} units ({'dead' if label == 'ReLU' else 'saturated'}), worst step",
                       order, [100 * worst[k] for k in order], x_label="layer", y_label="% of units",
                       threshold=threshold_layer)
    evidence = {"worst_share_per_layer": {k: worst[k] for k in order},
                "last_share_per_layer": {k: last[k] for k in order}, **evidence_extra, "plots": [plot]}
    adjective = "dead" if label == "ReLU" else "saturated"
    flagged = [k for k in order if worst[k] > threshold_layer / 100]
    if first is not None:
        steps_sorted = sorted(fired_steps)
        all_steps = sorted({int(s) for t in data for s in t.result.steps})
        mask = [s in fired_steps for s in all_steps]
        from .._context import step_runs

        return ctx.triggered(
            f"{len(flagged)} {label} layer(s) had more than {g(threshold_layer)}% {adjective} units "
            f"(active share < {g(threshold_inactivity)}%), worst {flagged[0]} with {pct(worst[flagged[0]])} "
            f"{adjective}; first at step {first[0]} in {first[3]}.",
            first_step=ctx.step_ref(first[0], first[1], first[2]),
            steps=step_runs(all_steps, mask) if steps_sorted else [],
            tensors=flagged,
            evidence=evidence,
        )
    return ctx.ok(
        f"No {label} layer had more than {g(threshold_layer)}% {adjective} units; the worst, "
        f"{order[0]}, peaked at {pct(worst[order[0]])} over {len(data)} layer(s).",
        tensors=order[:5],
        evidence=evidence,
    )


def _pick(ctx: RuleContext, *needs: str) -> tuple[str, list[TensorData]] | None:
    for n in needs:
        data = ctx.with_result(n)
        if data:
            return n, data
    return None


# ---------------------------------------------------------------------------------------------


def _tanh_needs(p: Mapping[str, Any]) -> list[Need]:
    x = float(p["x_max"])
    y = math.tanh(x)
    return [
        _band_need("preacts", "activation_inputs", "tanh", -x, x, what="input of tanh modules"),
        _band_need("outputs", "outputs", "tanh", -y, y, what="output of tanh modules", fallback_of=("preacts",)),
    ]


@rule(
    id="TanhSaturation",
    problem_class="activations",
    severity="warning",
    needs=_tanh_needs,
    title="Tanh saturation",
    ranges={"x_max": Range(gt=0), "threshold_inactivity": _PCT, "threshold_layer": _PCT},
    problem="Tanh units whose inputs sit where tanh is flat pass (almost) no gradient: the layer stops learning.",
    fix="Normalise the layer's inputs (BatchNorm/LayerNorm), lower the learning rate, use Xavier initialisation, "
        "or replace tanh with a non-saturating activation.",
)
def tanh_saturation(ctx: RuleContext, *, x_max: float = 9.4999, threshold_inactivity: float = 1.0,
                    threshold_layer: float = 50.0) -> Finding:
    """A layer's share of units with active share < threshold_inactivity % exceeds threshold_layer %,
    where a unit's active share = #{|x| < x_max} / #entries over the batch (inputs of tanh modules;
    outputs: |y| < tanh(x_max)).

    Reads full values of ``activation_inputs`` (or ``outputs``) of tanh modules. Defaults from
    smdebug's ``TanhSaturation`` band (|x| < 9.4999, where tanh' < 1e-7) and AUTOTRAINER's
    thresholds (1 % activity per unit, 50 % of the layer).
    """
    picked = _pick(ctx, "preacts", "outputs")
    if picked is None:
        return ctx.missing("preacts", "outputs")
    need, data = picked
    return _saturation(ctx, data, label="tanh", threshold_inactivity=threshold_inactivity,
                       threshold_layer=threshold_layer, evidence_extra={"source": need})


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _sigmoid_needs(p: Mapping[str, Any]) -> list[Need]:
    lo, hi = float(p["x_min"]), float(p["x_max"])
    return [
        _band_need("preacts", "activation_inputs", "sigmoid", lo, hi, what="input of sigmoid modules"),
        _band_need("outputs", "outputs", "sigmoid", _sigmoid(lo), _sigmoid(hi),
                   what="output of sigmoid modules", fallback_of=("preacts",)),
    ]


@rule(
    id="SigmoidSaturation",
    problem_class="activations",
    severity="warning",
    needs=_sigmoid_needs,
    title="Sigmoid saturation",
    ranges={"threshold_inactivity": _PCT, "threshold_layer": _PCT},
    check=lambda p: None if p["x_min"] < p["x_max"] else f"x_min={p['x_min']!r} must be < x_max={p['x_max']!r}",
    problem="Sigmoid units whose inputs sit where the sigmoid is flat pass (almost) no gradient.",
    fix="Normalise the layer's inputs, lower the learning rate, or use ReLU-family activations in hidden layers.",
)
def sigmoid_saturation(ctx: RuleContext, *, x_min: float = -23.0, x_max: float = 16.99999,
                       threshold_inactivity: float = 1.0, threshold_layer: float = 50.0) -> Finding:
    """A layer's share of units with active share < threshold_inactivity % exceeds threshold_layer %,
    where a unit's active share = #{x_min < x < x_max} / #entries (inputs of sigmoid modules;
    outputs: sigmoid(x_min) < y < sigmoid(x_max)).

    Defaults: smdebug's ``SigmoidSaturation`` band (-23, 16.99999), where sigmoid' < 1e-7, and
    AUTOTRAINER's 1 % / 50 % thresholds.
    """
    picked = _pick(ctx, "preacts", "outputs")
    if picked is None:
        return ctx.missing("preacts", "outputs")
    need, data = picked
    return _saturation(ctx, data, label="sigmoid", threshold_inactivity=threshold_inactivity,
                       threshold_layer=threshold_layer, evidence_extra={"source": need})


def _relu_needs(p: Mapping[str, Any]) -> list[Need]:
    inf = float("inf")
    return [
        _band_need("outputs", "outputs", "relu", 0.0, inf, what="output of ReLU modules"),
        _band_need("preacts", "activation_inputs", "relu", 0.0, inf, what="input of ReLU modules",
                   fallback_of=("outputs",)),
        _band_need("followed", "outputs", "relu", 0.0, inf, what="output of layers followed by a ReLU",
                   fallback_of=("outputs", "preacts"), followed_by=True),
    ]


@rule(
    id="DeadRelu",
    problem_class="activations",
    severity="warning",
    needs=_relu_needs,
    title="Dying ReLU",
    ranges={"threshold_inactivity": _PCT, "threshold_layer": _PCT},
    problem="ReLU units that output zero for every input get no gradient and never recover: the layer loses capacity.",
    fix="Lower the learning rate, use He initialisation and a small positive bias, add normalisation, "
        "or switch to LeakyReLU/GELU.",
)
def dead_relu(ctx: RuleContext, *, threshold_inactivity: float = 1.0, threshold_layer: float = 50.0) -> Finding:
    """A layer's share of dead units exceeds threshold_layer %, where a unit is dead when
    #{x > 0} / #entries < threshold_inactivity % over the batch of a saved step.

    Reads outputs of ReLU modules (or their inputs, or outputs of layers followed by a ReLU:
    relu(x) > 0 exactly when x > 0). Defaults from smdebug's ``DeadRelu`` (1 % / 50 %).
    """
    picked = _pick(ctx, "outputs", "preacts", "followed")
    if picked is None:
        return ctx.missing("outputs", "preacts")
    need, data = picked
    return _saturation(ctx, data, label="ReLU", threshold_inactivity=threshold_inactivity,
                       threshold_layer=threshold_layer, evidence_extra={"source": need})
