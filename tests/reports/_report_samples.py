"""Audit results for the report tests, built from the real findings model.

Until the rule engine lands these stand in for the scenario runs of the rule catalog: every one
of the twenty rule ids of RULES.md, mixed statuses, and the plot specs each rule family produces
(loss curves with markers, per-layer gradient-norm heatmaps, dead-unit shares, update ratios,
weight distributions, a confusion matrix, class counts, input statistics, token shares, tree
depths and feature importances).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainaudit.tasks._findings import AuditResult, Finding, StepRef

RULE_IDS = (
    "ClassImbalance", "DataNotNormalized", "TokenRatio", "LossNotDecreasing", "Overfit",
    "Underfit", "Overtraining", "Confusion", "PoorWeightInitialization", "WeightUpdateRatio",
    "VanishingGradient", "ExplodingTensor", "AllZero", "TensorVariance", "UnchangedTensor",
    "TanhSaturation", "SigmoidSaturation", "DeadRelu", "TreeDepth", "FeatureImportanceOverweight",
)

HOSTILE_LAYERS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
HOSTILE_FEATURE = "feat \"quoted\" & 'single' && <b>bold</b>"

SEVERITY = {
    "ExplodingTensor": "critical", "VanishingGradient": "critical", "LossNotDecreasing": "warning",
    "Overfit": "warning", "Underfit": "warning", "Overtraining": "info", "Confusion": "warning",
    "ClassImbalance": "warning", "DataNotNormalized": "warning", "TokenRatio": "warning",
    "PoorWeightInitialization": "warning", "WeightUpdateRatio": "warning", "AllZero": "warning",
    "TensorVariance": "info", "UnchangedTensor": "warning", "TanhSaturation": "warning",
    "SigmoidSaturation": "warning", "DeadRelu": "warning", "TreeDepth": "info",
    "FeatureImportanceOverweight": "info",
}

FIX = {
    "ExplodingTensor": ("A gradient grew without bound until it overflowed; the weights it "
                        "updated are now NaN and training cannot recover.",
                        "Lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                        "check the loss for log(0) or division by zero, use a warm-up."),
    "VanishingGradient": ("Gradients shrink on their way back through the layers, so the early "
                          "layers stop learning.",
                          "Use ReLU-family activations, residual connections, normalisation "
                          "layers, and He or Xavier initialisation."),
    "DeadRelu": ("Most units of the layer output zero for every input: they pass no gradient "
                 "and cannot recover.",
                 "Lower the learning rate, use LeakyReLU or GELU, check the bias initialisation."),
    "Overfit": ("The model fits the training data better and better while validation gets worse.",
                "Add regularisation (weight decay, dropout), augment the data, stop earlier."),
}


def _j(a: np.ndarray) -> list[Any]:
    """Plain JSON list (non-finite values as the strings the contract uses)."""
    return [("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v)
            else v for v in np.asarray(a, dtype=np.float64).tolist()]


def _f(rule: str, status: str, message: str, **kw: Any) -> Finding:
    problem, fix = FIX.get(rule, ("", ""))
    kw.setdefault("problem", problem if status == "triggered" else "")
    kw.setdefault("fix", fix if status == "triggered" else "")
    return Finding(rule=rule, status=status, severity=SEVERITY[rule],  # type: ignore[arg-type]
                   message=message, **kw)


def loss_spec(steps: int, *, rng: np.random.Generator, markers: list[dict[str, Any]] | None = None,
              nan_from: int | None = None) -> dict[str, Any]:
    x = np.arange(steps)
    train = 2.3 * np.exp(-x / (steps / 5)) + 0.1 + rng.normal(0, 0.03, steps)
    if nan_from is not None:
        train[nan_from:] = np.nan
    ex = np.arange(0, steps, max(1, steps // 40))
    ev = 2.3 * np.exp(-ex / (steps / 5)) + 0.25 + 0.4 * np.maximum(0, ex / steps - 0.4) ** 1.5
    return {"kind": "line", "title": "Loss, train and eval", "x_label": "step",
            "y_label": "loss (cross-entropy, nats)", "log_y": False,
            "series": [{"name": "train", "x": x.tolist(), "y": _j(train)},
                       {"name": "eval", "x": ex.tolist(), "y": _j(ev)}],
            "markers": markers or []}


def grad_heatmap(steps: int, layers: list[str], *, rng: np.random.Generator,
                 nonfinite_from: int | None = None, as_numpy: bool = False) -> dict[str, Any]:
    depth = np.arange(len(layers))[:, None]
    z = 10.0 ** (-0.8 * depth - 1 + 0.2 * rng.standard_normal((len(layers), steps)))
    marks = []
    if nonfinite_from is not None:
        z[-1, nonfinite_from:] = np.inf
        z[:-1, nonfinite_from + 1:] = np.nan
        marks.append({"x": nonfinite_from, "label": f"first non-finite: step {nonfinite_from}"})
    return {"kind": "heatmap", "title": "Gradient L2 norm per layer (depth order)",
            "x_label": "step", "y_label": "layer (input → output)",
            "x": np.arange(steps) if as_numpy else list(range(steps)),
            "y": layers, "z": z if as_numpy else [_j(r) for r in z], "log": True,
            "markers": marks}


def mlp_result(*, steps: int = 1000, layers: list[str] | None = None, run_id: str = "mlp-exploding-7",
               seed: int = 0, hostile: bool = False) -> AuditResult:
    """A PyTorch MLP that overfits, then explodes at step 812: mixed statuses, all 20 rules."""
    rng = np.random.default_rng(seed)
    layers = layers or [f"net.{i}.weight" for i in range(0, 12, 2)]
    features = [f"x{i}" for i in range(6)] + ([HOSTILE_FEATURE] if hostile else [])
    classes = ["cat", "dog", "bird", "fish"] + (list(HOSTILE_LAYERS) if hostile else [])
    boom = int(steps * 0.812)
    overfit_at = int(steps * 0.45)
    best = int(steps * 0.42)
    heat = grad_heatmap(steps, layers, rng=rng, nonfinite_from=boom)
    norms = np.asarray(heat["z"][-1], dtype=float)
    dead = np.array([0.05, 0.12, 0.71, 0.93, 0.2, 0.0][: len(layers)] + [0.1] * max(0, len(layers) - 6))
    upd_x = np.arange(0, steps, max(1, steps // 200))
    bands_x = np.arange(0, steps, max(1, steps // 50))
    spread = 0.05 + 0.3 * bands_x / steps
    conf = [[410, 40, 35, 15], [30, 380, 60, 30], [25, 90, 300, 85], [10, 20, 70, 400]]
    if hostile:
        conf = [r + [3, 1] for r in conf] + [[1, 2, 3, 4, 50, 2], [0, 1, 0, 2, 3, 40]]
    counts = [4800, 4500, 700, 310] + ([25, 12] if hostile else [])
    findings = [
        _f("ExplodingTensor", "triggered",
           f"Gradient of {layers[-1]} became +inf at step {boom} (train, rank 1); its inputs were "
           f"finite; {len(layers)} tensors non-finite afterwards.",
           first_step=StepRef(step=boom, mode="train", mode_step=boom, rank=1),
           steps=[[boom, steps - 1]], tensors=[layers[-1], *layers[:-1]],
           evidence={"first_nonfinite": {"step": boom, "rank": 1, "tensor": layers[-1],
                                         "inputs_finite": True, "value": "inf"},
                     "max_norm_before": 8.3e5, "growth": 412.0, "plots": [
                         heat,
                         {"kind": "line", "title": f"Gradient L2 norm of {layers[-1]}",
                          "x_label": "step", "y_label": "‖g‖₂", "log_y": True,
                          "series": [{"name": layers[-1], "x": list(range(steps)), "y": _j(norms)}],
                          "markers": [{"x": boom, "label": "first non-finite"}]}]},
           params={"only_nan": False, "growth_factor": 100, "window": 10, "max_norm": 1e6}),
        _f("VanishingGradient", "triggered",
           f"Mean |g| of {layers[0]} is 3.1e-08 < threshold 1e-07; ‖g_first‖/‖g_last‖ = 2.0e-05.",
           first_step=StepRef(step=3, mode="train", mode_step=3), steps=[[3, boom - 1]],
           tensors=layers[:2],
           evidence={"per_layer_mean_abs": {n: 10.0 ** (-8 + i) for i, n in enumerate(layers)},
                     "ratio_first_last": 2.0e-5, "threshold": 1e-7, "plots": [
                         {"kind": "bars", "title": "Mean |gradient| per layer (median over steps)",
                          "x_label": "layer", "y_label": "mean |g| (log10)",
                          "labels": layers, "values": [-8 + i for i in range(len(layers))],
                          "threshold": -7}]},
           params={"threshold": 1e-7, "ratio_threshold": 1e-3}),
        _f("DeadRelu", "triggered",
           f"{int(dead.max() * 100)}% of the units of {layers[3 % len(layers)]} are dead "
           "(active in < 1% of inputs); threshold 50%.",
           first_step=StepRef(step=240, mode="train", mode_step=240), steps=[[240, steps - 1]],
           tensors=[layers[3 % len(layers)], layers[2 % len(layers)]],
           evidence={"dead_share": dict(zip(layers, dead.tolist(), strict=False)), "plots": [
               {"kind": "bars", "title": "Dead ReLU units per layer", "x_label": "layer",
                "y_label": "share of units dead (%)", "labels": layers,
                "values": (dead * 100).tolist(), "threshold": 50}]},
           params={"threshold_inactivity": 1, "threshold_layer": 50}),
        _f("Overfit", "triggered",
           f"Eval loss exceeds train loss by 38% (ratio threshold 10%) from step {overfit_at}.",
           first_step=StepRef(step=overfit_at, mode="eval", mode_step=overfit_at // 25),
           steps=[[overfit_at, boom]], evidence={"ratio": 0.38, "ratio_threshold": 0.1, "plots": [
               loss_spec(steps, rng=rng, markers=[
                   {"x": overfit_at, "label": "overfit from here"},
                   {"x": best, "label": "best eval loss"}], nan_from=boom)]},
           params={"ratio_threshold": 0.1, "patience": 1, "start_step": 0}),
        _f("Overtraining", "triggered",
           f"Eval loss has not improved since step {best} (best 0.412); "
           f"{steps - best} steps trained after it.",
           first_step=StepRef(step=best + 250, mode="eval", mode_step=(best + 250) // 25),
           evidence={"best_step": best, "best_eval_loss": 0.412, "wasted_steps": steps - best}),
        _f("WeightUpdateRatio", "triggered",
           f"Update ratio of {layers[0]} is 4.2e-09 < 1e-08 (updates too small) from step 100.",
           first_step=StepRef(step=100, mode="train", mode_step=100), steps=[[100, 400]],
           tensors=[layers[0]], evidence={"plots": [
               {"kind": "line", "title": "Weight update ratio ‖ΔW‖/‖W‖ per layer",
                "x_label": "step", "y_label": "update ratio (per optimizer step)", "log_y": True,
                "series": [{"name": n, "x": upd_x.tolist(),
                            "y": _j(10.0 ** (-8.4 + i * 0.9 + 0.1 * rng.standard_normal(len(upd_x))))}
                           for i, n in enumerate(layers)],
                "markers": []}]},
           params={"small_threshold": 1e-8, "large_threshold": 10, "epsilon": 1e-9}),
        _f("ClassImbalance", "triggered",
           f"Largest class {classes[0]} has {counts[0]} labels, smallest {classes[-1]} "
           f"{counts[-1]}: ratio {counts[0] / counts[-1]:.1f} > 10.",
           first_step=StepRef(step=4, mode="train", mode_step=4), tensors=[classes[0], classes[-1]],
           evidence={"counts": dict(zip(classes, counts, strict=False)), "plots": [
               {"kind": "bars", "title": "Labels per class", "x_label": "class",
                "y_label": "labels seen (count)", "labels": classes, "values": counts,
                "threshold": None}]}),
        _f("Confusion", "triggered",
           f"Precision of {classes[2]} is 0.64 < 0.9; {classes[1]} is predicted as "
           f"{classes[2]} 18% of the time.",
           first_step=StepRef(step=900, mode="eval", mode_step=36), tensors=classes[1:3],
           evidence={"precision": {c: 0.64 + 0.05 * i for i, c in enumerate(classes)},
                     "never_predicted": [], "plots": [
                         {"kind": "matrix", "title": "Confusion matrix (eval)",
                          "row_label": "label", "col_label": "prediction", "rows": classes,
                          "cols": classes, "values": conf}]}),
        _f("DataNotNormalized", "triggered",
           f"Input channel 2 ({features[2]}) has mean 3.8 (|mean| > 0.2) and std 12.1 (> 5).",
           first_step=StepRef(step=5, mode="train", mode_step=5), tensors=[features[2], features[-1]],
           evidence={"per_channel": [{"channel": f, "mean": m, "std": s} for f, m, s in
                                     zip(features, [0.01, -0.1, 3.8, 0.0, 0.05, 0.3, 0.0],
                                         [1.0, 0.9, 12.1, 1.1, 0.95, 1.2, "nan"], strict=False)],
                     "plots": [
                         {"kind": "bars", "title": "Input mean per channel", "x_label": "channel",
                          "y_label": "mean", "labels": features,
                          "values": [0.01, -0.1, 3.8, 0.0, 0.05, 0.3, 0.0][: len(features)],
                          "threshold": 0.2},
                         {"kind": "bars", "title": "Input std per channel", "x_label": "channel",
                          "y_label": "standard deviation", "labels": features,
                          "values": [1.0, 0.9, 12.1, 1.1, 0.95, 1.2, "nan"][: len(features)],
                          "threshold": 5}]}),
        _f("PoorWeightInitialization", "ok",
           "Weights at step 0 follow the fan-in rule within 10x in every layer; no identical rows.",
           evidence={"plots": [
               {"kind": "bands", "title": f"Weights of {layers[1]} over time (percentiles)",
                "x_label": "step", "y_label": "weight value", "x": bands_x.tolist(),
                "median": _j(0.01 * rng.standard_normal(len(bands_x))),
                "bands": [{"name": "p1–p99", "lo": _j(-2.5 * spread), "hi": _j(2.5 * spread)},
                          {"name": "p25–p75", "lo": _j(-0.7 * spread), "hi": _j(0.7 * spread)}]}]}),
        _f("LossNotDecreasing", "ok", "Train loss fell by 4.1% or more in every window of 10 steps.",
           params={"num_steps": 10, "window": 5, "diff_percent": 0.1}),
        _f("Underfit", "ok", "Train loss fell to 6% of its initial value."),
        _f("AllZero", "ok", f"No tensor of {len(layers) * 3} checked is all zero."),
        _f("TensorVariance", "ok", "Every tensor's variance is above 1e-10."),
        _f("SigmoidSaturation", "ok", "The one sigmoid layer (head.1) has 0% saturated units."),
        _f("UnchangedTensor", "error",
           f"Could not read the values of {layers[1]} at step 500: chunk 4 is corrupt "
           "(CorruptRunError).", tensors=[layers[1]],
           evidence={"exception": "CorruptRunError", "chunk": "rank_0/tensors/t3/values/c/4/0"}),
        _f("TanhSaturation", "not_evaluable", "No tanh module inputs or outputs were captured.",
           evidence={"missing": ["activation_inputs of Tanh modules"]}),
        _f("TokenRatio", "not_evaluable", "No token inputs were captured (collection tokens)."),
        _f("TreeDepth", "not_evaluable", "Not an XGBoost run: no trees were captured."),
        _f("FeatureImportanceOverweight", "not_evaluable",
           "Not an XGBoost run: no feature importances were captured."),
    ]
    series = {"loss": loss_spec(steps, rng=rng, nan_from=boom,
                                markers=[{"x": boom, "label": "first non-finite"}]),
              "gradient_norms": grad_heatmap(steps, layers, rng=rng, nonfinite_from=boom)}
    return AuditResult(
        run={"uri": f"s3://bucket/runs/{run_id}", "run_id": run_id, "framework": "pytorch",
             "status": "complete", "steps": steps, "modes": ["train", "eval"], "ranks": [0, 1],
             "created": "2026-11-27T05:12:00Z",
             "config": {"save_interval": {"weights": 10, "gradients": 1}, "hooks": ["module"]}},
        findings=findings,
        coverage={"collections": {"weights": len(layers), "biases": len(layers),
                                  "gradients": len(layers), "outputs": len(layers) + 2,
                                  "losses": 2, "labels": 1, "predictions": 1, "inputs": 1},
                  "missing": ["tokens", "trees", "feature_importance", "activation_inputs"],
                  "steps": {"train": steps, "eval": steps // 25},
                  "errors": [{"kind": "queue_full", "message": "writer queue full: 3 steps of "
                              "outputs dropped", "steps": [511, 512, 513]}],
                  "lost": {"outputs": 3}},
        series=series,
        timings={"plan": 0.04, "scan": 3.2, "evaluate": 0.41, "report": 0.2},
        created="2026-11-27T06:00:00Z", trainaudit_version="0.1.0",
    )


def xgb_result(*, rounds: int = 300, seed: int = 1) -> AuditResult:
    """An XGBoost booster with deep trees and one dominant feature."""
    rng = np.random.default_rng(seed)
    feats = ["income", "age", "zip_code", "tenure", "n_orders", "score_a", "score_b", "flag_x"]
    depths = rng.integers(5, 13, size=40)
    imp = np.array([0.71, 0.12, 0.06, 0.04, 0.03, 0.02, 0.02, 0.0])
    x = np.arange(rounds)
    train = 0.69 * np.exp(-x / 60) + 0.05
    valid = 0.69 * np.exp(-x / 60) + 0.12 + 0.0004 * np.maximum(0, x - 120)
    best = 120
    fired = {"TreeDepth", "FeatureImportanceOverweight", "Overtraining"}
    findings = [
        _f("TreeDepth", "triggered", f"{int((depths > 8).sum())} of 40 trees are deeper than 8 "
           f"(deepest {int(depths.max())}).", first_step=StepRef(step=3, mode="train", mode_step=3),
           tensors=[f"tree {i}" for i in np.flatnonzero(depths > 8)[:10].tolist()],
           evidence={"max_depth": int(depths.max()), "plots": [
               {"kind": "bars", "title": "Depth of each tree (last 40 rounds)", "x_label": "tree",
                "y_label": "depth (levels)", "labels": [f"tree {i}" for i in range(40)],
                "values": depths.tolist(), "threshold": 8}]},
           params={"depth": 8}),
        _f("FeatureImportanceOverweight", "triggered",
           "The top 3 features hold 89% of the total gain (> 80%); flag_x has none.",
           first_step=StepRef(step=10, mode="train", mode_step=10),
           tensors=["income", "age", "zip_code", "flag_x"],
           evidence={"top_share": 0.89, "zero_importance": ["flag_x"], "plots": [
               {"kind": "bars", "title": "Feature importance (gain, normalised)",
                "x_label": "feature", "y_label": "share of total gain", "labels": feats,
                "values": imp.tolist(), "threshold": None}]},
           params={"threshold": 0.8, "nfeatures": 3, "importance_type": "gain"}),
        _f("Overtraining", "triggered",
           f"validation_0 logloss has not improved since round {best}; {rounds - best} rounds "
           "trained after it.", first_step=StepRef(step=best + 10, mode="eval", mode_step=best + 10),
           evidence={"best_step": best, "plots": [
               {"kind": "line", "title": "logloss per round", "x_label": "boosting round",
                "y_label": "logloss", "log_y": False,
                "series": [{"name": "train", "x": x.tolist(), "y": train.tolist()},
                           {"name": "validation_0", "x": x.tolist(), "y": valid.tolist()}],
                "markers": [{"x": best, "label": "best validation_0"}]}]}),
    ]
    for rule in RULE_IDS:
        if rule in fired:
            continue
        if rule in ("ClassImbalance", "Confusion", "Overfit", "LossNotDecreasing", "Underfit"):
            findings.append(_f(rule, "ok", f"{rule}: nothing unusual over {rounds} rounds."))
        else:
            findings.append(_f(rule, "not_evaluable",
                               f"{rule} needs tensors an XGBoost capture does not record."))
    return AuditResult(
        run={"uri": "/data/runs/xgb-churn", "run_id": "xgb-churn", "framework": "xgboost",
             "status": "complete", "steps": rounds, "modes": ["train", "eval"], "ranks": [0],
             "created": "2026-11-27T04:00:00Z"},
        findings=findings,
        coverage={"collections": {"metrics": 2, "trees": 1, "feature_importance": 1, "labels": 1,
                                  "predictions": 1},
                  "missing": ["weights", "gradients", "outputs"], "errors": [], "lost": {}},
        series={"loss": {"kind": "line", "title": "Eval metrics", "x_label": "boosting round",
                         "y_label": "logloss", "log_y": False,
                         "series": [{"name": "validation_0 logloss", "x": x.tolist(),
                                     "y": valid.tolist()}], "markers": []}},
        timings={"scan": 0.8}, created="2026-11-27T06:01:00Z", trainaudit_version="0.1.0",
    )


def healthy_result() -> AuditResult:
    """A run where every rule that could look passed."""
    rng = np.random.default_rng(2)
    findings = []
    for rule in RULE_IDS:
        if rule in ("TreeDepth", "FeatureImportanceOverweight", "TokenRatio"):
            findings.append(_f(rule, "not_evaluable", f"{rule}: the data it needs was not captured."))
        else:
            findings.append(_f(rule, "ok", f"{rule}: passed."))
    return AuditResult(
        run={"uri": "/tmp/runs/healthy", "run_id": "healthy-cnn", "framework": "pytorch",
             "status": "complete", "steps": 400, "modes": ["train", "eval"], "ranks": [0]},
        findings=findings,
        coverage={"collections": {"weights": 4, "gradients": 4, "losses": 2}, "missing": [],
                  "errors": [], "lost": {}},
        series={"loss": loss_spec(400, rng=rng)},
    )


def hostile_result() -> AuditResult:
    """Hostile names everywhere a run's strings reach the page."""
    layers = [*HOSTILE_LAYERS, HOSTILE_FEATURE, "net.3.weight"]
    base = mlp_result(steps=300, layers=layers, run_id=HOSTILE_LAYERS[1] + HOSTILE_LAYERS[0],
                      hostile=True)
    extra = _f("AllZero", "triggered", f"{HOSTILE_LAYERS[0]} is all zero",
               first_step=StepRef(step=1, mode=HOSTILE_LAYERS[1]), tensors=list(HOSTILE_LAYERS),
               evidence={HOSTILE_LAYERS[0]: HOSTILE_LAYERS[1], HOSTILE_FEATURE: [HOSTILE_LAYERS[1]],
                         "records": [{HOSTILE_LAYERS[1]: HOSTILE_LAYERS[0]}], "plots": [
                             {"kind": HOSTILE_LAYERS[0], "title": HOSTILE_LAYERS[1]},
                             {"kind": "bars", "title": HOSTILE_LAYERS[0], "x_label": HOSTILE_LAYERS[1],
                              "y_label": HOSTILE_FEATURE, "labels": list(HOSTILE_LAYERS),
                              "values": [1, 2], "threshold": 1},
                             {"kind": "line", "title": HOSTILE_FEATURE, "x_label": HOSTILE_LAYERS[0],
                              "y_label": HOSTILE_LAYERS[1], "series": [
                                  {"name": HOSTILE_LAYERS[0], "x": [0, 1, 2], "y": [1, "nan", 2]}],
                              "markers": [{"x": 1, "label": HOSTILE_LAYERS[1]}]}]},
               params={HOSTILE_LAYERS[1]: HOSTILE_LAYERS[0]},
               problem=HOSTILE_LAYERS[0], fix=HOSTILE_LAYERS[1])
    findings = [extra if f.rule == "AllZero" else f for f in base.findings]
    findings.append(Finding(rule=HOSTILE_LAYERS[1], status="error", severity="info",
                            message=HOSTILE_LAYERS[0]))  # a custom rule with a hostile id
    cov = dict(base.coverage)
    cov["collections"] = {HOSTILE_LAYERS[0]: 1, **cov["collections"]}
    cov["missing"] = [HOSTILE_LAYERS[1]]
    cov["errors"] = [{"kind": HOSTILE_LAYERS[0], "message": HOSTILE_LAYERS[1],
                      HOSTILE_FEATURE: HOSTILE_LAYERS[0]}]
    cov[HOSTILE_LAYERS[0]] = {HOSTILE_LAYERS[1]: HOSTILE_FEATURE}
    run = dict(base.run)
    run["framework"] = HOSTILE_LAYERS[0]
    run[HOSTILE_LAYERS[1]] = HOSTILE_LAYERS[0]
    return AuditResult(run=run, findings=findings, coverage=cov, series=base.series,
                       timings=base.timings, created=HOSTILE_LAYERS[0],
                       trainaudit_version=HOSTILE_LAYERS[1])


def long_result(*, steps: int = 100_000, layers: int = 50) -> AuditResult:
    """A run of ``steps`` steps × ``layers`` layers whose specs were NOT downsampled by the
    producer (the report must enforce the budget on its own)."""
    rng = np.random.default_rng(3)
    names = [f"encoder.block{i}.mlp.fc.weight" for i in range(layers)]
    base = mlp_result(steps=2000, layers=names[:6])
    heat = grad_heatmap(steps, names, rng=rng, nonfinite_from=int(steps * 0.9), as_numpy=True)
    x = np.arange(steps)
    per_layer = {"kind": "line", "title": "update ratio per layer", "x_label": "step",
                 "y_label": "ratio", "log_y": True,
                 "series": [{"name": n, "x": x, "y": 10.0 ** (-3 + 0.3 * rng.standard_normal(steps))}
                            for n in names],
                 "markers": [{"x": int(i), "label": f"marker {i}"} for i in range(0, steps, 997)]}
    bands = {"kind": "bands", "title": "weights", "x_label": "step", "y_label": "w", "x": x,
             "median": rng.standard_normal(steps) * 0.01,
             "bands": [{"name": "p1-p99", "lo": -1 - rng.random(steps), "hi": 1 + rng.random(steps)}]}
    loss = {"kind": "line", "title": "loss", "x_label": "step", "y_label": "loss", "log_y": False,
            "series": [{"name": "train", "x": x, "y": np.exp(-x / 2e4) + rng.normal(0, .01, steps)},
                       {"name": "eval", "x": x[::100], "y": np.exp(-x[::100] / 2e4) + 0.1}],
            "markers": []}
    huge_ev = {"per_step": rng.standard_normal(steps), "per_layer": {n: list(range(1000)) for n in names},
               "plots": [heat, per_layer, bands, loss] * 3}
    findings = [
        Finding(rule=f.rule, status=f.status, severity=f.severity, message=f.message,
                first_step=f.first_step, steps=[[i, i + 1] for i in range(0, steps, 7)],
                tensors=names * 20, evidence=huge_ev if f.triggered else f.evidence,
                params=f.params, problem=f.problem, fix=f.fix)
        for f in base.findings
    ]
    return AuditResult(run={**base.run, "steps": steps}, findings=findings, coverage=base.coverage,
                       series={"loss": loss, "gradient_norms": heat}, timings=base.timings)
