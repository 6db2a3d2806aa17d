"""Every rule on hand-made finalized statistics: fires, does not fire, not evaluable."""

from __future__ import annotations

import numpy as np
import pytest
from _tasks_helpers import meta, run_rule, scalar_stats, stats_from, td

from trainaudit.tasks import (
    Block,
    ChannelMoments,
    ClassCounts,
    ConfusionCounts,
    FirstRowChecks,
    UnitBand,
)
from trainaudit.tasks._kernels import TokenCounts
from trainaudit.tasks.rules import BUILTIN_RULES


def _kernel_result(kernel, rows, steps=None, partner=None):  # type: ignore[no-untyped-def]
    b = Block.from_rows(rows, steps=steps)
    p = Block.from_rows(partner, steps=steps) if partner is not None else None
    return kernel.finalize(kernel.chunk(b, p))


@pytest.mark.parametrize("rule_id", BUILTIN_RULES)
def test_every_rule_is_not_evaluable_without_data(rule_id: str) -> None:
    f = run_rule(rule_id, {})
    assert f.status == "not_evaluable", f.message
    assert f.message


# -- activations ----------------------------------------------------------------------------

def _relu(rows: list[np.ndarray]) -> dict:  # type: ignore[type-arg]
    res = _kernel_result(UnitBand(lo=0.0, hi=np.inf, axis=1), rows)
    return {"outputs": [td(meta("outputs/relu1", shape=rows[0].shape, activation="relu", module="relu1"), result=res)]}


def test_dead_relu_fires_and_reports_first_step() -> None:
    rng = np.random.default_rng(0)
    alive = np.maximum(rng.normal(size=(32, 10)), 0)
    dead = alive.copy()
    dead[:, :6] = 0
    f = run_rule("DeadRelu", _relu([alive, alive, dead, dead]))
    assert f.status == "triggered"
    assert f.first_step is not None and f.first_step.step == 2
    assert f.tensors == ["relu1"] and "60.0%" in f.message
    assert f.evidence["plots"][0]["kind"] == "bars"
    assert run_rule("DeadRelu", _relu([alive, alive])).status == "ok"
    assert run_rule("DeadRelu", _relu([dead]), {"threshold_layer": 70}).status == "ok"


def test_tanh_and_sigmoid_saturation() -> None:
    x = np.full((16, 4), 20.0)
    x[:, 0] = 0.1
    for rule_id, lo, hi in (("TanhSaturation", -9.4999, 9.4999), ("SigmoidSaturation", -23, 16.99999)):
        act = "tanh" if rule_id == "TanhSaturation" else "sigmoid"
        res = _kernel_result(UnitBand(lo=lo, hi=hi, axis=1), [x])
        data = {"preacts": [td(meta("activation_inputs/act", shape=x.shape, activation=act), result=res)]}
        f = run_rule(rule_id, data)
        assert f.status == "triggered", f.message
        assert "75.0%" in f.message
        ok = _kernel_result(UnitBand(lo=lo, hi=hi, axis=1), [np.zeros((16, 4))])
        assert run_rule(rule_id, {"preacts": [td(meta("activation_inputs/act", shape=x.shape), result=ok)]}).status == "ok"


# -- datasets --------------------------------------------------------------------------------

def test_class_imbalance() -> None:
    rows = [np.array([0] * 95 + [1] * 5)] * 6
    res = _kernel_result(ClassCounts(), rows)
    f = run_rule("ClassImbalance", {"labels": [td(meta("labels/labels"), result=res)]})
    assert f.status == "triggered" and f.first_step is not None and f.first_step.step == 4  # 500 labels at step 4
    assert f.tensors[0] == "1" and "19x" in f.message
    bal = _kernel_result(ClassCounts(), [np.array([0, 1] * 50)] * 6)
    assert run_rule("ClassImbalance", {"labels": [td(meta("labels/labels"), result=bal)]}).status == "ok"
    few = _kernel_result(ClassCounts(), [np.array([0] * 95 + [1] * 5)])
    assert run_rule("ClassImbalance", {"labels": [td(meta("labels/labels"), result=few)]}).status == "not_evaluable"
    reg = _kernel_result(ClassCounts(), [np.array([0.3, 1.7])])
    f = run_rule("ClassImbalance", {"labels": [td(meta("labels/labels"), result=reg)]})
    assert f.status == "not_evaluable" and "regression" in f.message


def test_class_imbalance_misprediction() -> None:
    labels = [np.array([0, 1] * 50)] * 6
    preds = [np.zeros(100, dtype=int)] * 6  # class 1 always mispredicted
    lab = _kernel_result(ClassCounts(), labels)
    pairs = _kernel_result(ConfusionCounts(), preds, partner=labels)
    f = run_rule("ClassImbalance", {"labels": [td(meta("labels/labels"), result=lab)],
                                    "pairs": [td(meta("predictions/predictions"), result=pairs)]})
    assert f.status == "triggered" and "mispredicted" in f.message


def test_confusion() -> None:
    labels = [np.array([0, 1, 2] * 20)]
    good = [np.array([0, 1, 2] * 20)]
    bad = [np.array([0, 1, 1] * 20)]  # class 2 predicted as 1
    for preds, status in ((good, "ok"), (bad, "triggered")):
        res = _kernel_result(ConfusionCounts(), preds, partner=labels)
        f = run_rule("Confusion", {"pairs": [td(meta("predictions/predictions"), result=res)]})
        assert f.status == status, f.message
    assert "never predicted: 2" in f.message
    assert f.first_step is not None and f.first_step.step == 0
    assert f.evidence["plots"][0]["kind"] == "matrix"


def test_data_not_normalized() -> None:
    rng = np.random.default_rng(1)
    good = [rng.normal(0, 1, (128, 3)) for _ in range(5)]
    bad = [rng.normal(0, 1, (128, 3)) * [1, 1, 40] + [0, 3, 0] for _ in range(5)]
    for rows, status in ((good, "ok"), (bad, "triggered")):
        res = _kernel_result(ChannelMoments(axis=-1), rows)
        f = run_rule("DataNotNormalized", {"inputs": [td(meta("inputs/x", shape=(128, 3)), result=res)]})
        assert f.status == status, f.message
    assert f.first_step is not None and f.first_step.step == 3  # 512 samples
    assert "channel 1" in f.message
    res = _kernel_result(ChannelMoments(axis=-1), bad[:1])
    assert run_rule("DataNotNormalized", {"inputs": [td(meta("inputs/x"), result=res)]}).status == "not_evaluable"


def test_token_ratio() -> None:
    rows = [np.array([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]])] * 3
    res = _kernel_result(TokenCounts(token_values=(0,)), rows)
    f = run_rule("TokenRatio", {"tokens": [td(meta("tokens/emb", dtype="int64"), result=res)]})
    assert f.status == "triggered" and "70.0%" in f.message
    f = run_rule("TokenRatio", {"tokens": [td(meta("tokens/emb", dtype="int64"), result=res)]},
                 {"thresholds_percent": [80]})
    assert f.status == "ok"


# -- loss ------------------------------------------------------------------------------------

def _loss(ys, steps=None, modes=None):  # type: ignore[no-untyped-def]
    return {"losses": [td(meta("losses/loss"), stats=scalar_stats(ys, steps=steps, modes=modes))]}


def test_loss_not_decreasing() -> None:
    dec = [2.0 * np.exp(-s / 20) for s in range(60)]
    assert run_rule("LossNotDecreasing", _loss(dec)).status == "ok"
    flat = dec[:30] + [dec[29]] * 30
    f = run_rule("LossNotDecreasing", _loss(flat))
    assert f.status == "triggered" and "did not decrease" in f.message
    assert f.first_step is not None and 40 <= f.first_step.step <= 50
    up = dec[:30] + [dec[29] * (1 + 0.05 * k) for k in range(30)]
    f = run_rule("LossNotDecreasing", _loss(up))
    assert f.status == "triggered" and "increased" in f.message
    assert run_rule("LossNotDecreasing", _loss([1.0, 0.9])).status == "not_evaluable"


def _train_eval(train: list[float], evals: list[float], every: int = 5):  # type: ignore[no-untyped-def]
    ys, steps, modes = [], [], []
    g = 0
    e = iter(evals)
    for i, y in enumerate(train):
        ys.append(y)
        steps.append(g)
        modes.append(0)
        g += 1
        if (i + 1) % every == 0:
            ys.append(next(e))
            steps.append(g)
            modes.append(1)
            g += 1
    return _loss(ys, steps, modes)


def test_overfit() -> None:
    train = [1.0 - 0.01 * i for i in range(50)]
    ok = _train_eval(train, [1.0 - 0.05 * k for k in range(10)])
    assert run_rule("Overfit", ok).status == "ok"
    bad = _train_eval(train, [1.0] * 5 + [1.5] * 5)
    f = run_rule("Overfit", bad)
    assert f.status == "triggered" and f.first_step is not None and f.first_step.mode == "eval"
    assert run_rule("Overfit", _loss([1.0, 0.9])).status == "not_evaluable"


def test_overtraining() -> None:
    train = [1.0 - 0.005 * i for i in range(100)]
    evals = [1.0 - 0.1 * k for k in range(4)] + [0.65] * 16
    f = run_rule("Overtraining", _train_eval(train, evals))
    assert f.status == "triggered" and f.evidence["best_step"] > 0
    assert f.evidence["wasted_train_steps"] > 0
    improving = [1.0 - 0.04 * k for k in range(20)]
    assert run_rule("Overtraining", _train_eval(train, improving)).status == "ok"
    assert run_rule("Overtraining", _train_eval(train[:20], improving[:4])).status == "not_evaluable"


def test_underfit() -> None:
    assert run_rule("Underfit", _loss([1.0 - 0.001 * i for i in range(40)])).status == "triggered"
    assert run_rule("Underfit", _loss([1.0 * np.exp(-i / 5) for i in range(40)])).status == "ok"
    assert run_rule("Underfit", _loss([1.0, 0.9])).status == "not_evaluable"


# -- weights ---------------------------------------------------------------------------------

def test_poor_weight_initialization() -> None:
    rng = np.random.default_rng(0)
    k = FirstRowChecks(atol=1e-7)
    good = _kernel_result(k, [rng.uniform(-1, 1, (64, 128)) / np.sqrt(128)])
    const = _kernel_result(k, [np.full((64, 128), 0.5)])
    huge = _kernel_result(k, [rng.normal(0, 3, (64, 128))])
    for res, status in ((good, "ok"), (const, "triggered"), (huge, "triggered")):
        f = run_rule("PoorWeightInitialization", {"weights": [td(meta("weights/fc.weight", shape=(64, 128), module="fc"),
                                                                result=res)]})
        assert f.status == status, f.message
    assert "var(W)" in f.message
    dup = rng.uniform(-1, 1, (8, 16)) / 4
    dup[2] = dup[6]
    res = _kernel_result(k, [dup])
    f = run_rule("PoorWeightInitialization", {"weights": [td(meta("weights/fc.weight", shape=(8, 16)), result=res)]})
    assert f.status == "triggered" and "identical" in f.message


def test_poor_weight_initialization_input_variance() -> None:
    pre = [td(meta(f"activation_inputs/r{i}", depth=i, module=f"r{i}"),
              stats=stats_from([np.random.default_rng(i).normal(0, 10.0 ** i, 100) for _ in range(3)]))
           for i in range(3)]
    f = run_rule("PoorWeightInitialization", {"preacts": pre})
    assert f.status == "triggered" and "across layers" in f.message


def test_weight_update_ratio_from_updates() -> None:
    w = [np.ones((4, 4))] * 10
    wst = stats_from(w)
    upd = td(meta("updates/fc.weight"), stats=scalar_stats([1e-3] * 10))
    frozen = td(meta("updates/fc.weight"), stats=scalar_stats([0.0] * 10))
    norms = [td(meta("weights/fc.weight", module="fc"), stats=wst)]
    assert run_rule("WeightUpdateRatio", {"updates": [upd], "norms": norms}).status == "ok"
    f = run_rule("WeightUpdateRatio", {"updates": [frozen], "norms": norms})
    assert f.status == "triggered" and "too small" in f.message and f.first_step is not None
    assert f.first_step.step == 1


def test_weight_update_ratio_from_saved_weights() -> None:
    from trainaudit.tasks import StepDiffs

    rows = [np.ones((4, 4)) * (1 + 1e-3 * i) for i in range(5)]
    res = _kernel_result(StepDiffs(), rows, steps=[0, 10, 20, 30, 40])
    table = (np.arange(41), np.zeros(41, dtype=np.int64), np.arange(41))
    f = run_rule("WeightUpdateRatio", {"diffs": [td(meta("weights/fc.weight"), result=res)]}, step_table=table)
    assert f.status == "ok"
    ratio = f.evidence["median_ratio_per_layer"]["fc.weight"]
    assert ratio == pytest.approx(1e-4, rel=0.05)  # 1e-3 per save over 10 steps


# -- gradients -------------------------------------------------------------------------------

def _grads(scales: list[float], steps: int = 5):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    return {"gradients": [td(meta(f"gradients/fc{i}.weight", depth=i, module=f"fc{i}", param="weight"),
                             stats=stats_from([rng.normal(0, s, (8, 8)) for _ in range(steps)]))
                          for i, s in enumerate(scales)]}


def test_vanishing_gradient() -> None:
    assert run_rule("VanishingGradient", _grads([1e-2, 1e-2, 1e-2])).status == "ok"
    f = run_rule("VanishingGradient", _grads([1e-9, 1e-4, 1e-2]))
    assert f.status == "triggered" and f.tensors[0] == "fc0"
    f = run_rule("VanishingGradient", _grads([1e-6, 1e-3, 1e-2]))
    assert f.status == "triggered" and "first layer" in f.message


def test_exploding_tensor_first_nonfinite() -> None:
    rng = np.random.default_rng(0)

    def grads(nan_at: int | None, depth: int) -> np.ndarray:
        out = []
        for s in range(6):
            g = rng.normal(0, 1e-2, (4, 4))
            if nan_at is not None and s >= nan_at:
                g[0, 0] = np.nan
            out.append(g)
        return out

    data = {"tensors": [
        td(meta("gradients/fc0.weight", depth=0), stats=stats_from(grads(4, 0))),
        td(meta("gradients/fc1.weight", depth=1), stats=stats_from(grads(3, 1))),
        td(meta("losses/loss"), stats=scalar_stats([1.0] * 6)),
    ], "inputs": [td(meta("inputs/x"), stats=stats_from([np.ones(3)] * 6))]}
    f = run_rule("ExplodingTensor", data)
    assert f.status == "triggered"
    assert f.first_step is not None and f.first_step.step == 3
    assert f.tensors[0] == "gradients/fc1.weight"
    assert f.evidence["inputs_finite"] is True
    assert f.evidence["plots"][0]["kind"] == "heatmap"


def test_exploding_gradient_growth() -> None:
    ys = [np.full((4, 4), 1e-3 * (10 ** (s / 2))) for s in range(12)]
    data = {"tensors": [td(meta("gradients/fc0.weight"), stats=stats_from(ys))]}
    f = run_rule("ExplodingTensor", data)
    assert f.status == "triggered" and "grew" in f.message
    assert run_rule("ExplodingTensor", data, {"growth_factor": 1e9}).status == "ok"


# -- tensors ---------------------------------------------------------------------------------

def test_all_zero() -> None:
    data = {"tensors": [td(meta("outputs/relu0"), stats=stats_from([np.ones(4), np.zeros(4), np.zeros(4)]))]}
    f = run_rule("AllZero", data)
    assert f.status == "triggered" and f.first_step is not None and f.first_step.step == 1
    assert f.steps == [[1, 2]]
    assert run_rule("AllZero", {"tensors": [td(meta("outputs/x"), stats=stats_from([np.ones(4)]))]}).status == "ok"


def test_tensor_variance_prefers_exact_values() -> None:
    from trainaudit.tasks import StepMoments

    # a tensor far from zero with a tiny spread: the sumsq formula cancels, the exact M2 does not
    rng = np.random.default_rng(0)
    rows = [1e4 + rng.normal(0, 1e-3, 1000) for _ in range(3)]
    st = stats_from(rows)
    exact = _kernel_result(StepMoments(), rows)
    f = run_rule("TensorVariance", {"stats": [td(meta("weights/w"), stats=st)],
                                    "values": [td(meta("weights/w"), result=exact)]})
    assert f.status == "ok", f.message
    const = [np.full(1000, 3.0)] * 3
    f = run_rule("TensorVariance", {"stats": [td(meta("weights/w"), stats=stats_from(const))],
                                    "values": [td(meta("weights/w"), result=_kernel_result(StepMoments(), const))]})
    assert f.status == "triggered"


def test_unchanged_tensor() -> None:
    from trainaudit.tasks import LastRows

    w = np.random.default_rng(0).normal(size=(4, 4))
    same = LastRows(n=3).chunk(Block.from_rows([w, w, w], steps=[10, 20, 30]))
    moving = LastRows(n=3).chunk(Block.from_rows([w, w + 1, w + 2], steps=[10, 20, 30]))
    f = run_rule("UnchangedTensor", {"last": [td(meta("weights/fc.weight"), result=same)]})
    assert f.status == "triggered" and f.first_step is not None and f.first_step.step == 10
    assert run_rule("UnchangedTensor", {"last": [td(meta("weights/fc.weight"), result=moving)]}).status == "ok"
    short = LastRows(n=3).chunk(Block.from_rows([w], steps=[0]))
    assert run_rule("UnchangedTensor", {"last": [td(meta("weights/fc.weight"), result=short)]}).status == "not_evaluable"


# -- trees -----------------------------------------------------------------------------------

def test_tree_depth() -> None:
    depths = [np.array([3, 4]), np.array([6, 9]), np.array([5])]
    data = {"depth": [td(meta("trees/depth"), stats=stats_from(depths))]}
    f = run_rule("TreeDepth", data)
    assert f.status == "triggered" and f.first_step is not None and f.first_step.step == 1
    assert run_rule("TreeDepth", data, {"depth": 10}).status == "ok"


def test_feature_importance_overweight() -> None:
    from trainaudit.tasks import LastRows

    v = np.array([50.0, 30.0, 15.0, 1.0, 0.0, 0.0])
    res = LastRows(n=1).chunk(Block.from_rows([v], steps=[9]))
    m = meta("feature_importance/gain", labels=["a", "b", "c", "d", "e", "f"])
    f = run_rule("FeatureImportanceOverweight", {"importance": [td(m, result=res)]})
    assert f.status == "triggered" and f.tensors[:3] == ["a", "b", "c"] and "e" in f.tensors
    flat = LastRows(n=1).chunk(Block.from_rows([np.ones(10)], steps=[9]))
    assert run_rule("FeatureImportanceOverweight", {"importance": [td(meta("feature_importance/gain"),
                                                                          result=flat)]}).status == "ok"


def test_loss_rules_read_xgboost_roles() -> None:
    """XGBoost logs every eval set in mode train at the round's step, with meta role."""
    rounds = list(range(40))
    train = [1.0 - 0.02 * r for r in rounds]
    valid = [0.9 - 0.02 * r if r < 10 else 0.7 + 0.01 * (r - 10) for r in rounds]
    data = {"losses": [
        td(meta("losses/train", role="train", eval_set="train"), stats=scalar_stats(train, steps=rounds)),
        td(meta("losses/valid", role="eval", eval_set="valid"), stats=scalar_stats(valid, steps=rounds)),
    ]}
    f = run_rule("Overfit", data)
    assert f.status == "triggered" and f.first_step is not None and f.first_step.mode == "eval"
    assert len(f.evidence["evaluations"]) == 40  # one evaluation per round
    f = run_rule("Overtraining", data)
    assert f.status == "triggered" and f.evidence["best_step"] == 10
    assert run_rule("LossNotDecreasing", data).status == "ok"
