"""Datasets: ClassImbalance, DataNotNormalized, TokenRatio.

These read the data the model was fed (labels, inputs, token ids) through small per-step
kernels; each condition is evaluated on the *cumulative* statistics in step order, so the
finding's first step is the first step at which enough data had been seen and the condition
held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _plots
from .._catalog import Range, rule
from .._context import RuleContext, step_runs
from .._findings import Finding
from .._kernels import (
    ChannelMoments,
    ClassCounts,
    ConfusionCounts,
    TokenCounts,
    moments_finalize,
    moments_merge,
)
from .._plan import Need, TensorMeta
from ._common import final_streak, g, names, pct, trailing_windows

_PCT = Range(ge=0, le=100)


def _class_needs(p: Mapping[str, Any]) -> list[Need]:
    return [
        Need(name="labels", collections=("labels",), source="values", kernel=ClassCounts(), what="labels"),
        Need(name="pairs", collections=("predictions",), source="values", kernel=ConfusionCounts(),
             pair="labels", what="predictions"),
    ]


@rule(
    id="ClassImbalance",
    problem_class="datasets",
    severity="warning",
    needs=_class_needs,
    title="Class imbalance",
    ranges={"threshold_imbalance": Range(ge=1), "threshold_misprediction": Range(ge=0, le=1),
            "samples": Range(ge=1)},
    problem="Some classes are far rarer than others (or almost always mispredicted): the model learns to ignore them.",
    fix="Resample or reweight the classes (class weights in the loss, a balanced sampler), collect more data "
        "of the rare classes, and judge the model on per-class metrics.",
)
def class_imbalance(ctx: RuleContext, *, threshold_imbalance: float = 10.0, threshold_misprediction: float = 0.7,
                    samples: int = 500) -> Finding:
    """Once >= samples labels are seen: count(largest class) / count(smallest class) > threshold_imbalance;
    or, with predictions, some class j has misprediction fraction 1 - C[j][j] / sum_k C[j][k] >
    threshold_misprediction over the *recent* predictions (the newest saved steps holding >= samples
    pairs) at the last saved step.

    Reads saved labels (and predictions) per step. Defaults from smdebug's ``ClassImbalance``
    (threshold_imbalance=10, threshold_misprediction=0.7, samples=500).

    Changed (scenario suite): the misprediction test used to run on the counts summed from step 0
    and fired as soon as >= samples pairs were seen with some class > 70 % wrong, i.e. on the
    untrained model's first predictions, while the message quoted the final fraction ("class 0
    is mispredicted in 6.0 % of its labels > threshold_misprediction=0.7" on healthy_cnn, which
    looked like a percent-vs-fraction slip but was a stale first step). Counting from step 0 also
    blamed every training for its start (it fired on 16 of the 25 runs of the scenario table,
    healthy_cnn and healthy_text among them). Now the fraction is
    measured on a sliding window of the newest >= samples pairs, and the rule fires only when the
    model as trained (the last window) still mispredicts the class; the threshold is unchanged.
    """
    label_data = [t for t in ctx.with_result("labels") if any(r is not None for r in t.result.records)]
    pair_data = ctx.with_result("pairs")
    if not label_data:
        if ctx.with_result("labels"):
            return ctx.not_evaluable("The captured labels are not class ids (regression targets?); "
                                     "ClassImbalance applies to classification.")
        return ctx.missing("labels")
    best: dict[str, Any] | None = None
    plots = []
    evidence: dict[str, Any] = {}
    for t in label_data:
        cum: Counter[int] = Counter()
        hit_steps = []
        first = None
        steps = t.result.steps
        for i, rec in enumerate(t.result.records):
            if rec is None:
                hit_steps.append(False)
                continue
            cum.update(rec)
            n = sum(cum.values())
            ratio = max(cum.values()) / min(cum.values()) if len(cum) > 1 else 1.0
            hit = n >= samples and ratio > threshold_imbalance
            hit_steps.append(hit)
            if hit and first is None:
                first = (int(steps[i]), int(t.result.modes[i]))
        classes = sorted(cum)
        n = sum(cum.values())
        ratio = max(cum.values()) / min(cum.values()) if len(cum) > 1 else 1.0
        evidence[t.name] = {"counts": {str(c): cum[c] for c in classes}, "samples": n, "ratio": ratio}
        plots.append(_plots.bars(f"Class counts ({t.layer})", classes, [cum[c] for c in classes],
                                 x_label="class", y_label="labels"))
        if first is not None and (best is None or ratio > best["ratio"]):
            rare = sorted(classes, key=lambda c: cum[c])
            best = {"kind": "imbalance", "tensor": t.name, "ratio": ratio, "first": first,
                    "steps": step_runs(steps, hit_steps), "classes": [str(c) for c in rare],
                    "text": f"in {t.name}, the largest class ({max(classes, key=lambda c: cum[c])}: "
                            f"{max(cum.values())} labels) outnumbers the smallest ({rare[0]}: {cum[rare[0]]}) "
                            f"{g(ratio)}x > threshold_imbalance={g(threshold_imbalance)} over {n} labels"}
    # misprediction per class, over the recent predictions: the newest saved steps holding at
    # least `samples` (label, prediction) pairs, at each saved step; it fires when the condition
    # holds for the model as trained (the last window), from the start of that streak
    for t in pair_data:
        windows = trailing_windows(t.result.records, samples)
        hits = []
        worst: tuple[float, int, int] = (0.0, -1, 0)
        for cm in windows:
            if cm is None:
                hits.append(False)
                continue
            rows: Counter[int] = Counter()
            for (lab, _), c in cm.items():
                rows[lab] += c
            fracs = {lab: 1 - cm.get((lab, lab), 0) / rows[lab] for lab in rows if rows[lab]}
            lab, frac = max(fracs.items(), key=lambda kv: kv[1]) if fracs else (-1, 0.0)
            hits.append(frac > threshold_misprediction)
            worst = (frac, lab, int(sum(cm.values())))
        k0 = final_streak(hits)
        evidence[f"misprediction:{t.name}"] = {"worst_class": worst[1], "fraction": worst[0], "recent_pairs": worst[2]}
        if k0 is not None and best is None:
            steps = t.result.steps
            best = {"kind": "misprediction", "tensor": t.name, "ratio": worst[0],
                    "first": (int(steps[k0]), int(t.result.modes[k0])), "steps": step_runs(steps, hits),
                    "classes": [str(worst[1])],
                    "text": f"class {worst[1]} is mispredicted in {pct(worst[0])} of its labels among the last "
                            f"{worst[2]} predictions > threshold_misprediction={pct(threshold_misprediction)} "
                            f"({t.name}, since step {int(steps[k0])})"}
    evidence["plots"] = plots
    if best is not None:
        return ctx.triggered(f"Class imbalance: {best['text']}.",
                             first_step=ctx.step_ref(*best["first"]), steps=best["steps"],
                             tensors=best["classes"], evidence=evidence)
    total = sum(v["samples"] for k, v in evidence.items() if isinstance(v, dict) and "samples" in v)
    if total < samples:
        return ctx.not_evaluable(f"Only {total} labels were saved; ClassImbalance needs samples={samples}. "
                                 f"Save labels more often (the 'labels' collection's save interval).")
    worst_ratio = max(v["ratio"] for k, v in evidence.items() if isinstance(v, dict) and "ratio" in v and "samples" in v)
    return ctx.ok(f"Classes are balanced within threshold_imbalance={g(threshold_imbalance)} "
                  f"(largest/smallest = {g(worst_ratio)} over {total} labels).", evidence=evidence)


# ---------------------------------------------------------------------------------------------


def _is_float(t: TensorMeta) -> bool:
    return "float" in t.dtype


def _channel_axis(t: TensorMeta, channel: int | None) -> int:
    if channel is not None:
        return channel
    return 1 if len(t.shape) >= 3 else -1


def _normal_needs(p: Mapping[str, Any]) -> list[Need]:
    ch = p["channel"]
    return [Need(name="inputs", collections=("inputs",), where=_is_float, source="values",
                 kernel=lambda t: ChannelMoments(axis=_channel_axis(t, ch)), what="model inputs")]


@rule(
    id="DataNotNormalized",
    problem_class="datasets",
    severity="warning",
    needs=_normal_needs,
    title="Data not normalized",
    ranges={"threshold_mean": Range(ge=0), "std_min": Range(ge=0), "std_max": Range(gt=0), "samples": Range(ge=1)},
    check=lambda p: None if p["std_min"] < p["std_max"] else f"std_min={p['std_min']!r} must be < std_max={p['std_max']!r}",
    problem="Inputs far from zero mean / unit variance slow down or destabilise training.",
    fix="Standardise the inputs per channel (subtract the mean, divide by the std computed on the training set), "
        "e.g. transforms.Normalize or a StandardScaler.",
)
def data_not_normalized(ctx: RuleContext, *, threshold_mean: float = 0.2, std_min: float = 0.2, std_max: float = 5.0,
                        samples: int = 500, channel: int | None = None) -> Finding:
    """Once >= samples samples are seen, for some channel c: |mean_c| > threshold_mean or std_c not in
    [std_min, std_max], over all values of the channel seen so far.

    Channel axis ``channel`` (auto: 1 for >= 3-D inputs, the last axis for 2-D). Reads saved
    ``inputs`` (float tensors only). Defaults from smdebug's ``NotNormalizedData`` (mean 0.2, std
    in [0.2, 5]) with a samples floor so a single small batch does not decide.
    """
    data = ctx.with_result("inputs")
    if not data:
        return ctx.missing("inputs")
    fired = None
    evidence: dict[str, Any] = {}
    plots = []
    seen_total = 0
    for t in data:
        cum = None
        n = 0
        hit = []
        first = None
        stats: list[dict[str, float]] = []
        for i, (batch, states) in enumerate(t.result.records):
            cum = states if cum is None or cum.shape != states.shape else moments_merge(cum, states)
            n += batch
            stats = [moments_finalize(s) for s in cum]
            bad = [c for c, s in enumerate(stats)
                   if abs(s["mean"]) > threshold_mean or not std_min <= s["std"] <= std_max]
            h = n >= samples and bool(bad)
            hit.append(h)
            if h and first is None:
                first = (int(t.result.steps[i]), int(t.result.modes[i]), bad)
        seen_total += n
        means = [s["mean"] for s in stats]
        stds = [s["std"] for s in stats]
        evidence[t.name] = {"samples": n, "mean": means, "std": stds}
        labels = list(range(len(stats)))
        plots.append(_plots.bars(f"Mean per channel ({t.layer})", labels, means, x_label="channel", y_label="mean",
                                 threshold=threshold_mean))
        plots.append(_plots.bars(f"Std per channel ({t.layer})", labels, stds, x_label="channel", y_label="std",
                                 threshold=std_max))
        if first is not None and fired is None:
            c = first[2][0]
            fired = (t, first, step_runs(t.result.steps, hit),
                     f"channel {c} of {t.name} has mean {g(means[c])} and std {g(stds[c])} over {n} samples "
                     f"(expected |mean| <= threshold_mean={g(threshold_mean)} and std in "
                     f"[{g(std_min)}, {g(std_max)}]); {len(first[2])} channel(s) out of range")
    evidence["plots"] = plots
    if fired is not None:
        t, first, steps, text = fired
        return ctx.triggered(f"Inputs are not normalized: {text}.", first_step=ctx.step_ref(first[0], first[1]),
                             steps=steps, tensors=[t.name], evidence=evidence)
    if seen_total < samples:
        return ctx.not_evaluable(f"Only {seen_total} input samples were saved; DataNotNormalized needs "
                                 f"samples={samples}. Save inputs more often.")
    return ctx.ok(f"Inputs are normalized: every channel has |mean| <= {g(threshold_mean)} and std in "
                  f"[{g(std_min)}, {g(std_max)}] over {seen_total} samples.", evidence=evidence)


# ---------------------------------------------------------------------------------------------


def _is_tokens(t: TensorMeta) -> bool:
    return t.collection == "tokens" or ("int" in t.dtype and t.collection == "inputs")


def _token_needs(p: Mapping[str, Any]) -> list[Need]:
    return [Need(name="tokens", collections=("tokens", "inputs"), where=_is_tokens, source="values",
                 kernel=TokenCounts(token_values=tuple(int(v) for v in p["token_values"])),
                 what="token ids")]


def _token_check(p: Mapping[str, Any]) -> str | None:
    if len(p["token_values"]) != len(p["thresholds_percent"]):
        return (f"token_values={p['token_values']!r} and thresholds_percent={p['thresholds_percent']!r} "
                f"must have the same length")
    if not p["token_values"]:
        return "token_values=[] is empty: expected at least one token value"
    return None


@rule(
    id="TokenRatio",
    problem_class="datasets",
    severity="warning",
    needs=_token_needs,
    title="Ratio of tokens in sequence",
    ranges={"thresholds_percent": _PCT},
    check=_token_check,
    problem="Most positions of the sequences are padding or unknown tokens: the model learns from little real text.",
    fix="Bucket sequences by length (or pack them) to cut padding, fix the tokenizer/vocabulary that maps "
        "words to the unknown token, or lower the maximum sequence length.",
)
def token_ratio(ctx: RuleContext, *, token_values: tuple[int, ...] = (0,),
                thresholds_percent: tuple[float, ...] = (50.0,)) -> Finding:
    """For some i, the share of positions equal to token_values[i] over the batches seen so far is >
    thresholds_percent[i] %.

    Reads saved token ids (``tokens``, or integer ``inputs``). Defaults from smdebug's NLP
    ``TokenRatio`` rule idea: padding id 0, 50 %.
    """
    data = ctx.with_result("tokens")
    if not data:
        return ctx.missing("tokens")
    fired = None
    evidence: dict[str, Any] = {}
    plots = []
    for t in data:
        pos = 0
        counts = np.zeros(len(token_values), dtype=np.int64)
        hit = []
        first = None
        for i, (n, c) in enumerate(t.result.records):
            pos += n
            counts += np.asarray(c, dtype=np.int64)
            shares = counts / max(1, pos)
            over = [j for j in range(len(token_values)) if shares[j] * 100 > thresholds_percent[j]]
            hit.append(bool(over))
            if over and first is None:
                first = (int(t.result.steps[i]), int(t.result.modes[i]))
        shares = counts / max(1, pos)
        evidence[t.name] = {"positions": pos, "shares": {str(v): float(s) for v, s in zip(token_values, shares, strict=True)}}
        plots.append(_plots.bars(f"Share of listed tokens ({t.layer})", [str(v) for v in token_values],
                                 [100 * s for s in shares], x_label="token", y_label="% of positions"))
        over = [j for j in range(len(token_values)) if shares[j] * 100 > thresholds_percent[j]]
        if over and fired is None:
            j = over[0]
            fired = (t, first, step_runs(t.result.steps, hit),
                     f"token {token_values[j]} fills {pct(shares[j])} of the {pos} positions of {t.name} "
                     f"(> {g(thresholds_percent[j])}%)")
    evidence["plots"] = plots
    if fired is not None:
        t, first, steps, text = fired
        return ctx.triggered(f"Token ratio too high: {text}.",
                             first_step=ctx.step_ref(*first) if first else None,
                             steps=steps, tensors=[t.name], evidence=evidence)
    return ctx.ok(f"No listed token ({names(token_values)}) exceeds its threshold in {len(data)} token tensor(s).",
                  evidence=evidence)
