"""XGBoostCallback with real xgboost (xgboost.train and the sklearn API) on small data: what the
run holds is compared with what training had (evals_log, the trees read independently through
``trees_to_dataframe``, ``get_score``, ``predict``)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
xgb = pytest.importorskip("xgboost")

from trainaudit.capture import (  # noqa: E402
    CaptureConfig,
    InvalidParameterError,
    XGBoostCallback,
    _xgboost,  # noqa: E402
    open_run,
    request_stop,
)
from trainaudit.capture._xgboost import (  # noqa: E402
    IMPORTANCE_TYPES,
    MAX_FAILURES,
    _flatten_params,
    _loss_metric,
    _model_trees,
    model_tree_summary,
    tree_summary,
)

ROUNDS = 12


# ---------------------------------------------------------------------------------------------
# data and independent references


def classification(n: int = 300, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8).astype(int)
    return x, y


def regression(n: int = 300, d: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, x[:, 0] * 2.0 - x[:, 1] + 0.1 * rng.normal(size=n)


def reference_trees(booster: Any) -> dict[int, tuple[int, int, float, float]]:
    """Per tree: (depth, leaves, gain, cover) from ``trees_to_dataframe``, following the
    Yes / No links from each root (leaves carry their value in the Gain column)."""
    df = booster.trees_to_dataframe()
    rows = {r.ID: r for r in df.itertuples()}
    out = {}
    for tree in sorted(df["Tree"].unique()):
        depth = leaves = 0
        gain = cover = 0.0
        stack = [(f"{tree}-0", 0)]
        while stack:
            node_id, d = stack.pop()
            r = rows[node_id]
            if r.Feature == "Leaf":
                leaves += 1
                depth = max(depth, d)
            else:
                gain += r.Gain
                cover += r.Cover
                stack += [(r.Yes, d + 1), (r.No, d + 1)]
        out[int(tree)] = (depth, leaves, gain, cover)
    return out


def dense_scores(booster: Any, kind: str, names: list[str]) -> np.ndarray:
    s = booster.get_score(importance_type=kind)
    return np.array([s.get(f, 0.0) for f in names])


def scalar_series(run: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    st = run.stats(name)
    return st.step, st.field("sum")


@pytest.fixture()
def memory_uri() -> str:
    return f"memory://xgb-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# xgboost.train


def test_train_multiclass_round_trip(run_uri: str) -> None:
    x, y = classification()
    dtrain = xgb.DMatrix(x[:200], label=y[:200])
    dvalid = xgb.DMatrix(x[200:], label=y[200:])
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1,
              "eval_metric": ["mlogloss", "merror"]}
    evals_result: dict[str, Any] = {}
    cb = XGBoostCallback(run_uri, eval_data={"valid": dvalid})
    booster = xgb.train(params, dtrain, ROUNDS, evals=[(dtrain, "train"), (dvalid, "valid")],
                        evals_result=evals_result, verbose_eval=False, callbacks=[cb])

    run = open_run(run_uri)
    assert run.status == "complete"
    assert run.framework == "xgboost"
    assert run.errors == []
    steps = run.steps()
    assert steps.global_step.tolist() == list(range(ROUNDS))
    assert set(steps.mode.tolist()) == {0}

    # Eval metrics: every set, every metric, every round, equal to evals_log.
    for data_name, metrics in evals_result.items():
        for metric, history in metrics.items():
            name = f"metrics/{data_name}-{metric}"
            step, value = scalar_series(run, name)
            assert step.tolist() == list(range(ROUNDS))
            np.testing.assert_allclose(value, history, rtol=1e-12)
            info = run.tensor(name)
            assert info.collection == "metrics"
            assert info.meta["eval_set"] == data_name and info.meta["metric"] == metric
    # The loss mirror: the first loss metric of each set, with its role.
    for data_name, role in (("train", "train"), ("valid", "eval")):
        info = run.tensor(f"losses/{data_name}")
        assert info.collection == "losses"
        assert dict(info.meta) == {"eval_set": data_name, "metric": "mlogloss", "role": role}
        np.testing.assert_allclose(scalar_series(run, f"losses/{data_name}")[1], evals_result[data_name]["mlogloss"])

    # Trees: num_class new trees per round, equal to an independent walk of the model.
    ref = np.array([v for _, v in sorted(reference_trees(booster).items())]).reshape(ROUNDS, 3, 4)
    for col, name in enumerate(("depth", "leaves", "gain", "cover")):
        values, shapes, block_steps, _ = run.values_block(f"trees/{name}", 0, ROUNDS)
        assert block_steps.tolist() == list(range(ROUNDS)) and shapes.tolist() == [[3]] * ROUNDS
        np.testing.assert_allclose(values, ref[:, :, col], rtol=1e-6)
    assert ref[:, :, 0].max() <= 3

    # Feature importances: dense over all features; at the end equal to get_score.
    names = [f"f{i}" for i in range(x.shape[1])]
    for kind in IMPORTANCE_TYPES:
        info = run.tensor(f"feature_importance/{kind}")
        assert info.meta["labels"] == names and info.meta["importance_type"] == kind
        assert info.n_values == ROUNDS
        np.testing.assert_allclose(run.values(f"feature_importance/{kind}", ROUNDS - 1),
                                   dense_scores(booster, kind, names), rtol=1e-5)
    # get_score omits unused features: they are 0 here.
    weight = run.values("feature_importance/weight", 0)
    assert set(booster[0:1].get_score(importance_type="weight")) == {names[i] for i in np.nonzero(weight)[0]}

    # Labels and predictions on the schedule (round 0, every 10th) and at the last round.
    assert run.value_steps("predictions/valid").step.tolist() == [0, 10, ROUNDS - 1]
    assert run.value_steps("labels/valid").step.tolist() == [0, 10, ROUNDS - 1]
    np.testing.assert_array_equal(run.values("labels/valid", ROUNDS - 1), y[200:].astype(np.float32))
    final = run.values("predictions/valid", ROUNDS - 1)
    assert final.shape == (100, 3)
    np.testing.assert_allclose(final, booster.predict(dvalid), rtol=1e-6)
    np.testing.assert_allclose(run.values("predictions/valid", 0), booster.predict(dvalid, iteration_range=(0, 1)), rtol=1e-6)
    assert run.tensor("predictions/valid").meta["objective"] == "multi:softprob"

    # The booster's parameters: numeric ones as a vector, the whole config in the attributes.
    params_info = run.tensor("other/params")
    labels = params_info.meta["labels"]
    vec = run.values("other/params", 0)
    assert vec[labels.index("max_depth")] == 3 and vec[labels.index("num_class")] == 3
    xgb_attrs = run.attrs["xgboost"]
    assert xgb_attrs["params"]["objective"] == "multi:softprob"
    assert xgb_attrs["config"]["learner"]["learner_train_param"]["booster"] == "gbtree"


class _SlowRounds(xgb.callback.TrainingCallback):
    """Makes every boosting round take at least ``seconds`` (runs before the capture's callback)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        time.sleep(self.seconds)
        return False


@pytest.mark.parametrize(("batch_rounds", "batch_seconds", "round_seconds", "slices", "from_dump"), [
    (5, 1e9, 0.0, 3, False), (1000, 0.0, 0.0, ROUNDS, False), (1000, 1e9, 0.0, 1, False), (5, 1e9, 0.0, 3, True),
    (16, 0.5, 0.05, ROUNDS, False)],
    ids=["batches-of-5", "time-up-each-round", "one-batch", "batches-of-5-from-dump", "slow-rounds-one-by-one"])
def test_trees_are_read_for_several_rounds_at_once_into_each_rounds_step(
        memory_uri: str, monkeypatch: pytest.MonkeyPatch, batch_rounds: int, batch_seconds: float, round_seconds: float,
        slices: int, from_dump: bool) -> None:
    """The new trees are read TREE_BATCH_ROUNDS rounds at a time (one ``model[a:b]``: ~1 ms
    of the training thread whatever it holds), or sooner when TREE_BATCH_SECONDS passed, or at
    the end, and one by one when rounds are slow (a slice is then a small part of a round);
    each round's trees, running importances, metrics and predictions still land in that
    round's step, equal to the model read round by round. ``from_dump``: a JSON model of a
    layout the callback does not know, read through ``get_dump`` instead."""
    if from_dump:
        monkeypatch.setattr(_xgboost, "_model_trees", lambda booster: None)
    monkeypatch.setattr(_xgboost, "TREE_BATCH_ROUNDS", batch_rounds)
    monkeypatch.setattr(_xgboost, "TREE_BATCH_SECONDS", batch_seconds)
    sliced = []
    getitem = xgb.Booster.__getitem__

    def counting_getitem(self: Any, val: Any) -> Any:
        sliced.append(val)
        return getitem(self, val)

    monkeypatch.setattr(xgb.Booster, "__getitem__", counting_getitem)
    x, y = classification()
    dtrain = xgb.DMatrix(x[:200], label=y[:200])
    dvalid = xgb.DMatrix(x[200:], label=y[200:])
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1, "eval_metric": ["mlogloss"]}
    evals_result: dict[str, Any] = {}
    cb = XGBoostCallback(memory_uri, eval_data={"valid": dvalid})
    booster = xgb.train(params, dtrain, ROUNDS, evals=[(dvalid, "valid")], evals_result=evals_result,
                        verbose_eval=False, callbacks=[_SlowRounds(round_seconds), cb])
    assert len(sliced) == slices, sliced
    monkeypatch.setattr(xgb.Booster, "__getitem__", getitem)

    run = open_run(memory_uri)
    assert run.errors == [] and run.steps().global_step.tolist() == list(range(ROUNDS))
    np.testing.assert_allclose(scalar_series(run, "metrics/valid-mlogloss")[1], evals_result["valid"]["mlogloss"], rtol=1e-12)
    ref = np.array([v for _, v in sorted(reference_trees(booster).items())]).reshape(ROUNDS, 3, 4)
    values, _, block_steps, _ = run.values_block("trees/depth", 0, ROUNDS)
    assert block_steps.tolist() == list(range(ROUNDS))
    np.testing.assert_array_equal(values, ref[:, :, 0])
    names = [f"f{i}" for i in range(x.shape[1])]
    for r in range(ROUNDS):  # the importances after each round, not after its batch
        for kind in ("weight", "total_gain"):
            np.testing.assert_allclose(run.values(f"feature_importance/{kind}", r), dense_scores(booster[0 : r + 1], kind, names),
                                       rtol=1e-5, err_msg=f"{kind} after round {r}")
    assert run.value_steps("predictions/valid").step.tolist() == [0, 10, ROUNDS - 1]
    np.testing.assert_allclose(run.values("predictions/valid", 10), booster.predict(dvalid, iteration_range=(0, 11)), rtol=1e-6)


def test_train_regressor_depth_bound_names_and_roles(memory_uri: str) -> None:
    x, y = regression()
    names = ["age", "income", "height", "weight", "score"]
    dtrain = xgb.DMatrix(x[:200], label=y[:200], feature_names=names)
    dvalid = xgb.DMatrix(x[200:], label=y[200:], feature_names=names)
    cb = XGBoostCallback(memory_uri, eval_data={"holdout": (x[200:], y[200:])}, train_sets=("fit",))
    evals_result: dict[str, Any] = {}
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3, "nthread": 1, "eval_metric": ["mae", "rmse"]},
                        dtrain, 20, evals=[(dtrain, "fit"), (dvalid, "holdout")], evals_result=evals_result,
                        verbose_eval=False, callbacks=[cb])
    run = open_run(memory_uri)
    assert run.errors == []
    depths = run.values_block("trees/depth", 0, 20)[0]
    assert depths.max() == 3 and depths.min() >= 1  # depthwise growth bounded by max_depth
    # The first *loss* metric is mirrored; the train_sets parameter decides the role.
    assert dict(run.tensor("losses/fit").meta) == {"eval_set": "fit", "metric": "mae", "role": "train"}
    assert run.tensor("losses/holdout").meta["role"] == "eval"
    np.testing.assert_allclose(scalar_series(run, "metrics/holdout-rmse")[1], evals_result["holdout"]["rmse"])
    # Feature names label the importances.
    assert run.tensor("feature_importance/total_gain").meta["labels"] == names
    np.testing.assert_allclose(run.values("feature_importance/total_gain", 19),
                               dense_scores(booster, "total_gain", names), rtol=1e-5)
    # eval_data given as (X, y): labels and predictions of the last round.
    np.testing.assert_allclose(run.values("predictions/holdout", 19), booster.predict(dvalid), rtol=1e-6)
    np.testing.assert_allclose(run.values("labels/holdout", 19), y[200:].astype(np.float32))


def test_resumed_training_continues_steps_and_importances(memory_uri: str) -> None:
    x, y = regression()
    dtrain = xgb.DMatrix(x, label=y)
    params = {"objective": "reg:squarederror", "max_depth": 2, "nthread": 1}
    first = xgb.train(params, dtrain, 5)
    booster = xgb.train(params, dtrain, 4, xgb_model=first, callbacks=[XGBoostCallback(memory_uri)])
    run = open_run(memory_uri)
    assert run.steps().global_step.tolist() == [5, 6, 7, 8]
    ref = reference_trees(booster)
    assert run.values_block("trees/depth", 0, 4)[0][:, 0].tolist() == [ref[t][0] for t in range(5, 9)]
    names = [f"f{i}" for i in range(x.shape[1])]
    np.testing.assert_allclose(run.values("feature_importance/weight", 8), dense_scores(booster, "weight", names))


# ---------------------------------------------------------------------------------------------
# the sklearn API


def test_sklearn_classifier(memory_uri: str) -> None:
    pytest.importorskip("sklearn")
    x, y = classification(seed=3)
    xt, yt, xv, yv = x[:200], y[:200], x[200:], y[200:]
    cb = XGBoostCallback(memory_uri, eval_data={"validation_1": (xv, yv)}, train_sets=("validation_0",))
    clf = xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=3, n_jobs=1, callbacks=[cb])
    clf.fit(xt, yt, eval_set=[(xt, yt), (xv, yv)], verbose=False)
    run = open_run(memory_uri)
    assert run.status == "complete" and run.errors == []
    history = clf.evals_result()
    for data_name in ("validation_0", "validation_1"):
        np.testing.assert_allclose(scalar_series(run, f"metrics/{data_name}-mlogloss")[1], history[data_name]["mlogloss"])
    assert run.tensor("losses/validation_0").meta["role"] == "train"
    assert run.tensor("losses/validation_1").meta["role"] == "eval"
    np.testing.assert_allclose(run.values("predictions/validation_1", ROUNDS - 1), clf.predict_proba(xv), rtol=1e-6)
    assert run.values("trees/depth", 0).shape == (3,)


def test_sklearn_regressor_with_dataframe_and_list_eval_data(memory_uri: str) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    x, y = regression()
    cols = [f"c_{i}" for i in range(x.shape[1])]
    xt, xv = pd.DataFrame(x[:200], columns=cols), pd.DataFrame(x[200:], columns=cols)
    cb = XGBoostCallback(memory_uri, eval_data=[(xv, y[200:])])
    reg = xgb.XGBRegressor(n_estimators=15, max_depth=2, n_jobs=1, callbacks=[cb])
    reg.fit(xt, y[:200], eval_set=[(xv, y[200:])], verbose=False)
    run = open_run(memory_uri)
    assert run.errors == []
    assert run.tensor("feature_importance/gain").meta["labels"] == cols
    assert run.tensor("losses/validation_0").meta == {"eval_set": "validation_0", "metric": "rmse", "role": "eval"}
    np.testing.assert_allclose(run.values("predictions/validation_0", 14), reg.predict(xv), rtol=1e-6)
    assert run.values_block("trees/depth", 0, 15)[0].max() <= 2


# ---------------------------------------------------------------------------------------------
# stop requests, failures, lifecycle


def test_stop_request_from_another_thread_stops_boosting(local_dir: str) -> None:
    uri = os.path.join(local_dir, "stopped")
    x, y = regression()
    dtrain = xgb.DMatrix(x, label=y)
    reached = threading.Event()

    class Signal(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            if epoch == 3:
                reached.set()
            threading.Event().wait(0.005)  # rounds of a few ms, like real training
            return False

    def watcher() -> None:
        reached.wait(30)
        request_stop(uri, reason="Overfit fired")

    t = threading.Thread(target=watcher)
    t.start()
    cb = XGBoostCallback(uri, config=CaptureConfig(flush_steps=1, flush_seconds=0.05))
    booster = xgb.train({"max_depth": 2, "nthread": 1}, dtrain, 2000, callbacks=[cb, Signal()])
    t.join()
    rounds = booster.num_boosted_rounds()
    assert 4 <= rounds < 2000
    assert cb.stop_requested and cb.stop_reason == "Overfit fired"
    run = open_run(uri)
    assert run.status == "complete"
    assert run.steps().global_step.tolist() == list(range(rounds))
    assert "Overfit fired" in run.rank_record(0)["close_reason"]


def test_failing_eval_data_is_recorded_and_training_finishes(memory_uri: str) -> None:
    x, y = regression()
    dtrain = xgb.DMatrix(x, label=y)
    bad = xgb.DMatrix(np.hstack([x, x]), label=y)  # 10 features; the model has 5
    cb = XGBoostCallback(memory_uri, eval_data={"bad": bad, "good": xgb.DMatrix(x[:50], label=y[:50])})
    booster = xgb.train({"max_depth": 2, "nthread": 1}, dtrain, 35, evals=[(dtrain, "train")], callbacks=[cb],
                        verbose_eval=False)
    assert booster.num_boosted_rounds() == 35
    run = open_run(memory_uri)
    assert run.status == "complete"
    errors = [e for e in run.errors if e.get("tensor") == "predictions/bad"]
    assert len(errors) == MAX_FAILURES  # rounds 0, 10, 20 failed; then it was given up
    assert "no longer captured" in errors[-1]["message"]
    assert "predictions/bad" not in [t.name for t in run.tensors()]
    assert run.value_steps("predictions/good").step.tolist() == [0, 10, 20, 30, 34]
    assert len(run.steps()) == 35


def test_close_on_end_false_keeps_the_run_open(memory_uri: str) -> None:
    x, y = regression()
    cb = XGBoostCallback(memory_uri, close_on_end=False)
    xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), 3, callbacks=[cb])
    run = open_run(memory_uri)
    assert run.status == "running" and len(run.steps()) == 3
    cb.close()
    assert open_run(memory_uri).status == "complete"


def test_cv_is_refused_in_the_run_not_raised(memory_uri: str) -> None:
    x, y = regression()
    cb = XGBoostCallback(memory_uri)
    xgb.cv({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), 3, nfold=2, callbacks=[cb])
    run = open_run(memory_uri)
    assert any("xgboost.cv is not supported" in e["message"] for e in run.errors)


def test_early_stopping_records_the_best_iteration(memory_uri: str) -> None:
    x, y = regression()
    dtrain = xgb.DMatrix(x[:150], label=y[:150])
    dvalid = xgb.DMatrix(x[150:], label=y[150:])
    booster = xgb.train({"max_depth": 6, "eta": 1.0, "nthread": 1}, dtrain, 200,
                        evals=[(dtrain, "train"), (dvalid, "valid")], early_stopping_rounds=3,
                        verbose_eval=False, callbacks=[XGBoostCallback(memory_uri)])
    run = open_run(memory_uri)
    last = booster.num_boosted_rounds() - 1
    assert last < 199
    info = run.tensor("other/best_iteration")
    assert info.meta["eval_set"] == "valid"
    assert run.values("other/best_iteration", last) == booster.best_iteration


# ---------------------------------------------------------------------------------------------
# parts


def test_tree_summary_walks_child_links() -> None:
    leaf = {"leaf": 0.1, "cover": 1.0}
    tree = {"split": "a", "gain": 5.0, "cover": 10.0, "depth": 99, "children": [
        leaf,
        {"split": "b", "gain": 2.0, "cover": 6.0, "children": [
            leaf,
            {"split": "a", "gain": 1.0, "cover": 3.0, "children": [leaf, leaf]},
        ]},
    ]}
    splits: list[tuple[str, float, float]] = []
    assert tree_summary(tree, lambda f, g, c: splits.append((f, g, c))) == (3, 4, 8.0, 19.0)
    assert sorted(splits) == [("a", 1.0, 3.0), ("a", 5.0, 10.0), ("b", 2.0, 6.0)]
    assert tree_summary({"leaf": 0.3, "cover": 4.0}) == (0, 1, 0.0, 0.0)


@pytest.mark.parametrize("params", [
    {"max_depth": 4},
    {"booster": "dart", "max_depth": 3, "rate_drop": 0.2},
    {"tree_method": "exact", "max_depth": 5, "gamma": 5.0},  # the exact updater prunes: deleted nodes
    {"grow_policy": "lossguide", "max_depth": 0, "max_leaves": 40},
    {"objective": "multi:softprob", "num_class": 3, "num_parallel_tree": 2, "max_depth": 3},
], ids=["depthwise", "dart", "pruned", "lossguide", "multiclass-forest"])
def test_trees_read_from_the_json_model_equal_the_dump_walk(params: dict[str, Any]) -> None:
    """The callback reads a batch's trees from the JSON model (``save_raw``, ~2.5x cheaper than
    ``get_dump``): per round, the same trees, and the same depth, leaves, gain, cover and
    splits as walking the dump."""
    x, y = classification(n=400)
    if params.get("objective") != "multi:softprob":
        y = (y > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1, **params}, xgb.DMatrix(x, label=y), 6)
    part = booster[2:5]
    rounds = _model_trees(part)
    dumps = part.get_dump(dump_format="json", with_stats=True)
    assert rounds is not None and len(rounds) == 3
    assert sum(len(r) for r in rounds) == len(dumps) and len({len(r) for r in rounds}) == 1
    names = [f"f{i}" for i in range(x.shape[1])]
    for tree, text in zip([t for r in rounds for t in r], dumps, strict=True):
        got: list[tuple[str, float, float]] = []
        want: list[tuple[str, float, float]] = []
        summary = model_tree_summary(tree, lambda i, g, c, out=got: out.append((names[i], g, c)))
        reference = tree_summary(json.loads(text), lambda f, g, c, out=want: out.append((f, g, c)))
        np.testing.assert_allclose(summary, reference, rtol=1e-6)
        assert [f for f, _, _ in sorted(got)] == [f for f, _, _ in sorted(want)]
        np.testing.assert_allclose([g for _, g, _ in sorted(got)], [g for _, g, _ in sorted(want)], rtol=1e-6)


def test_a_json_model_of_another_layout_is_not_read() -> None:
    """``_model_trees`` reads only the layout it knows; anything else sends the callback to
    ``get_dump`` (tested above with the whole training)."""
    x, y = classification()
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1, "max_depth": 2}, xgb.DMatrix(x, label=(y > 0)), 2)
    model = json.loads(booster.save_raw("json"))

    class Raw:
        def __init__(self, doc: Any) -> None:
            self.doc = doc

        def save_raw(self, raw_format: str) -> bytes:
            return json.dumps(self.doc).encode()

    assert _model_trees(Raw(model)) is not None
    del model["learner"]["gradient_booster"]["model"]["trees"][1]["loss_changes"]
    assert _model_trees(Raw(model)) is None
    assert _model_trees(Raw({"learner": {"gradient_booster": {"name": "gblinear", "model": {"weights": [0.1]}}}})) is None


@pytest.mark.parametrize(
    ("metrics", "want"),
    [
        (["rmse", "mae"], "rmse"),
        (["auc", "logloss"], "logloss"),
        (["error", "logloss"], "logloss"),
        (["auc", "error"], "error"),
        (["ndcg@5", "map@3"], None),
        (["my-custom"], "my-custom"),
    ],
    ids=["first-loss", "skip-auc", "prefer-loss-to-error", "error-when-no-loss", "only-maximised", "custom"],
)
def test_loss_metric_choice(metrics: list[str], want: str | None) -> None:
    assert _loss_metric(metrics) == want


def test_flatten_params_prefers_leaf_names() -> None:
    flat = _flatten_params({"a": {"eta": "0.3", "name": "x"}, "b": {"eta": "0.3", "name": "y"}, "c": [{"k": "1"}]})
    assert flat == {"eta": "0.3", "a.name": "x", "b.name": "y", "k": "1"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"importance_types": ("gain", "shap")}, "importance_types contains 'shap'"),
        ({"eval_data": (np.zeros((2, 2)), np.zeros(2))}, "eval_data=tuple"),
    ],
    ids=["unknown-importance", "bare-pair"],
)
def test_invalid_parameters(memory_uri: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        XGBoostCallback(memory_uri, **kwargs)


def test_bad_uri_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="Unsupported run URI scheme"):
        XGBoostCallback("ftp://host/run")
