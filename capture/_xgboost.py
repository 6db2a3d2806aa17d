"""XGBoost capture: :class:`XGBoostCallback`, a ``TrainingCallback`` for ``xgboost.train`` and
the scikit-learn API (``XGBClassifier(callbacks=[cb])``).

One **step per boosting round**, mode ``train``; the step number is the booster's round index
(``epoch`` for a model trained from scratch, continuing the count when training resumes from
``xgb_model``). Per round:

* ``metrics/<set>-<metric>``: every eval metric of every eval set (meta ``eval_set``, ``metric``,
  ``role``), equal to xgboost's ``evals_log``;
* ``losses/<set>``: the set's loss-like metric mirrored for the loss rules (meta ``eval_set``,
  ``metric``, ``role``). All sets are recorded in mode ``train`` at the round's step: the
  ``role`` meta says which is which. A set is ``"train"`` when its name contains ``train``
  (``xgb.train(evals=[(dtrain, "train"), ...])``) or is listed in ``train_sets``
  (the sklearn API names every set ``validation_<i>``: pass ``train_sets=("validation_0",)``
  when the first one is the training data); every other set is ``"eval"``;
* ``trees/depth``, ``trees/leaves``, ``trees/gain``, ``trees/cover``: one value per tree grown
  this round (``num_class x num_parallel_tree`` trees). Depth is the longest root-to-leaf
  path, found by walking the child links; gain and cover are summed over the tree's split
  nodes (so, summed over trees and features, they equal ``total_gain`` / ``total_cover``);
* ``feature_importance/<type>`` for ``weight``, ``gain``, ``cover``, ``total_gain``,
  ``total_cover``: a dense vector over all features (meta ``labels``: the feature names;
  unused features are 0, where ``get_score`` omits them);

and, once, before the first round: ``other/params`` (the booster's numeric parameters, meta
``labels``), with the full ``save_config()`` in the run's root attributes under ``"xgboost"``.
On the ``labels`` / ``predictions`` value schedule, and at the last round, for every set given in
``eval_data``: ``labels/<set>`` and ``predictions/<set>`` (``Booster.predict`` over the rounds so
far, as xgboost returns it: ``(n, num_class)`` probabilities for ``multi:softprob``).

Cost. Reading the whole model every round is quadratic (NOTES.md: 27 s at 300 rounds), so the
callback reads only the new rounds' trees, from a slice of the model (``model[a:b]``: ~1 ms of
the training thread whatever it holds, as xgboost copies and reconfigures the learner), up to
:data:`TREE_BATCH_ROUNDS` rounds at once and at least every :data:`TREE_BATCH_SECONDS` (slow
rounds one by one); a round's records wait in the callback until then and reach the recorder in round order. The
trees come from the slice's JSON model (``save_raw``, 2.5x cheaper than ``get_dump``), and the
importances are running sums of the rounds' splits. Predictions are the one part that grows
with the model (each walks all trees so far): the default schedule makes them every
``PREDICTION_EVERY`` rounds. ``bench/bench_xgboost.py`` measures it (docs/BENCHMARKS.md,
"XGBoost capture"): the callback costs the training thread 1-1.6 ms a round and the writer's
threads ~2 ms more (300 rounds, depth 6, 20 features, two eval sets, 1,000 rows of eval_data,
nthread=1); boosting itself took 4 ms a round at 5,000 rows (x1.55 wall with capture), 12.5 ms
at 50,000 rows (x1.19). docs/CAPTURE_XGBOOST.md has more.

Capture never crashes training: every callback body is guarded, a failure is recorded in the
run (``run.errors``) and, after ``MAX_FAILURES`` failures, that part stops being captured.

Stop requests: once a watcher asks the run to stop (``request_stop(uri, reason=...)``, noticed
by the writer within 2 s), ``after_iteration`` returns True
and xgboost ends boosting cleanly after the current round; the run is closed with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xgboost as xgb
from xgboost.callback import TrainingCallback

from . import _format as F
from ._config import CaptureConfig, SaveSchedule
from ._errors import InvalidParameterError
from ._recorder import Recorder

__all__ = ["XGBoostCallback", "IMPORTANCE_TYPES", "PREDICTION_EVERY", "default_config", "tree_summary"]

log = logging.getLogger("trainaudit.capture")

IMPORTANCE_TYPES: tuple[str, ...] = ("weight", "gain", "cover", "total_gain", "total_cover")
#: Labels and predictions every 10 rounds (plus round 0 and the last round) by default: a
#: prediction walks every tree so far, so saving it every round would make capture quadratic.
PREDICTION_EVERY = 10
#: Rounds per write at most (``flush_seconds`` still bounds how late a live audit sees them).
FLUSH_ROUNDS = 1000
#: A part of the capture (trees, importances, one eval set's predictions) that failed this many
#: times is not tried again in this training.
MAX_FAILURES = 3
#: The new trees are read for up to this many rounds at once: ``model[a:b]`` costs ~1 ms of the
#: training thread whatever the number of rounds it holds (xgboost copies and reconfigures the
#: learner), on rounds of a few milliseconds. A round's records wait in the callback until its
#: trees are read ...
TREE_BATCH_ROUNDS = 16
#: ... and not much longer than this (seconds), so a live audit sees them this much later at
#: most. Rounds that take longer than TREE_BATCH_SECONDS / TREE_BATCH_ROUNDS each (where a
#: slice is a small part of a round) are read at once, one by one.
TREE_BATCH_SECONDS = 0.5


# xgboost's own list of metrics to maximise (EarlyStopping); these are never mirrored as a loss.
_MAXIMIZE = ("auc", "aucpr", "pre", "map", "ndcg", "interval-regression-accuracy")
# Metrics that are losses proper: preferred over other lower-is-better metrics ("error").
_LOSSES = (
    "rmse", "rmsle", "mae", "mape", "mphe", "logloss", "mlogloss", "poisson-nloglik",
    "gamma-nloglik", "cox-nloglik", "gamma-deviance", "tweedie-nloglik", "aft-nloglik",
    "quantile", "expectile",
)

EvalData = Mapping[str, Any] | Sequence[Any]


class _PendingRound:
    """One round's records, waiting in the callback for its trees (see TREE_BATCH_ROUNDS)."""

    __slots__ = ("step", "trees", "records")

    def __init__(self, step: int, trees: bool) -> None:
        self.step = step
        self.trees = trees  # its trees are still to be read
        self.records: list[tuple[str, Any, str, Mapping[str, Any] | None, bool | None]] = []


def default_config(**kwargs: Any) -> CaptureConfig:
    """The capture configuration the callback uses when given none: the defaults, but labels
    and predictions every :data:`PREDICTION_EVERY` rounds (and round 0), and writes batched by
    time (``flush_seconds``) rather than every 50 rounds: a round's records are a few hundred
    bytes, and each flush costs the writer thread the same whatever it holds."""
    every = SaveSchedule(every=PREDICTION_EVERY, first=1)
    values = {"labels": every, "predictions": every, **dict(kwargs.pop("values", {}))}
    kwargs.setdefault("flush_steps", FLUSH_ROUNDS)
    return CaptureConfig(values=values, **kwargs)


class XGBoostCallback(TrainingCallback):
    """Record an XGBoost training into a trainaudit run.

    Args:
        uri: where the run goes (local path, ``file://``, ``s3://bucket/prefix``, ``memory://``).
        config: what to save and how often; :func:`default_config` when None. The
            ``predictions`` collection's value schedule decides when eval predictions are made.
        eval_data: data to record labels and predictions on: ``{name: DMatrix or (X, y)}``, or
            a list of ``(X, y)`` pairs named ``validation_0``, ``validation_1``, ... like the
            sklearn API's eval sets. (A callback never sees xgboost's own eval DMatrices.)
        train_sets: names of eval sets that hold training data (role ``"train"``); by default
            every set whose name contains ``train``.
        importance_types: the feature importances to record each round.
        close_on_end: close the run (mark it complete) when training ends; with False, call
            :meth:`close` yourself (e.g. after more training with the same run).
        rank, world_size: for distributed training; default xgboost's collective rank / size.
        run_id, storage_options: as for :class:`Recorder`.

    Example::

        cb = XGBoostCallback("s3://bucket/runs/exp1", eval_data={"valid": dvalid})
        booster = xgb.train(params, dtrain, 300, evals=[(dtrain, "train"), (dvalid, "valid")],
                            callbacks=[cb])

    The run is created when training starts (the booster's configuration goes into its root
    attributes); one callback records one training. ``after_iteration`` returns True (xgboost
    then stops boosting) once a stop was requested for the run.
    """

    def __init__(
        self,
        uri: str,
        *,
        config: CaptureConfig | None = None,
        eval_data: EvalData | None = None,
        train_sets: Iterable[str] | None = None,
        importance_types: Iterable[str] = IMPORTANCE_TYPES,
        close_on_end: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        run_id: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.uri = F.normalize_uri(uri)  # a bad URI fails here, not inside training
        self.config = config or default_config()
        self.importance_types = tuple(importance_types)
        for t in self.importance_types:
            if t not in IMPORTANCE_TYPES:
                raise InvalidParameterError(f"importance_types contains {t!r}: expected names from {IMPORTANCE_TYPES}")
        self.eval_data = _name_eval_data(eval_data)
        self.train_sets = None if train_sets is None else frozenset(train_sets)
        self.close_on_end = close_on_end
        self._rank, self._world_size = rank, world_size
        self._run_id = run_id
        self._storage_options = dict(storage_options or {})
        self.recorder: Recorder | None = None
        self._reset()

    def _reset(self) -> None:
        self._dmatrices: dict[str, xgb.DMatrix] = {}
        self._booster_type = "gbtree"
        self._objective = ""
        self._num_class = 0
        self._features: list[str] = []
        self._feature_index: dict[str, int] = {}
        self._split_count = np.zeros(0)
        self._split_gain = np.zeros(0)
        self._split_cover = np.zeros(0)
        self._loss_metric: dict[str, str | None] = {}
        self._last_step: int | None = None
        self._saved_predictions: dict[str, int] = {}
        self._model: xgb.Booster | None = None
        self._pending: list[_PendingRound] = []
        self._pending_since = 0.0
        self._round_ended = time.monotonic()  # when the previous round's after_iteration ran
        self._mode_step0 = 0  # the recorder's train step at the first round of this training
        self._rounds_seen = 0
        self._failures: dict[str, int] = {}
        self._stopped_at: int | None = None

    # ------------------------------------------------------------------ public API
    @property
    def stop_requested(self) -> bool:
        """True once a watcher asked this run to stop."""
        return self.recorder is not None and self.recorder.stop_requested

    @property
    def stop_reason(self) -> str | None:
        return None if self.recorder is None else self.recorder.writer.stop_reason

    def close(self) -> None:
        """Flush and mark the run complete. Idempotent."""
        rec = self.recorder
        if rec is None:
            return
        try:
            self._drain()
            if self._stopped_at is not None:
                rec.end_step()
                rec.writer.close(reason=f"training stopped on request after round {self._stopped_at}: {self.stop_reason}")
            rec.close()
        except Exception as exc:  # pragma: no cover - closing never raises into training
            log.warning("trainaudit: could not close run %s: %s", self.uri, exc)

    # ------------------------------------------------------------------ TrainingCallback
    def before_training(self, model: Any) -> Any:
        if self.recorder is not None:
            log.warning("trainaudit: XGBoostCallback for %s is used for a second training; "
                        "it records into the same run", self.uri)
            self.close()
        self._reset()
        try:
            self._start(model)
        except Exception as exc:
            if self.recorder is None:
                log.warning("trainaudit: capture to %s could not start: %s", self.uri, exc)
            else:
                self._error("before_training", exc)
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: Mapping[str, Mapping[str, Any]]) -> bool:
        rec = self.recorder
        if rec is None or not isinstance(model, xgb.Booster):
            return False
        try:
            step = model.num_boosted_rounds() - 1
            self._model = model
            mode_step = self._mode_step0 + self._rounds_seen  # the step this round will be
            self._rounds_seen += 1
            self._last_step = step
            pending = self._pending_round(step, trees=self._booster_type != "gblinear")
        except Exception as exc:
            self._error("after_iteration", exc)
            return False
        self._guard("metrics", self._record_metrics, evals_log, pending)
        for name, dm in self._dmatrices.items():
            _, due = self.config.due("predictions", "train", mode_step)
            if due and self.config.wants("predictions", f"predictions/{name}"):
                self._guard(f"predictions/{name}", self._record_predictions, model, name, dm, pending)
        now = time.monotonic()
        round_seconds, self._round_ended = now - self._round_ended, now
        if (len(self._pending) >= TREE_BATCH_ROUNDS or now - self._pending_since >= TREE_BATCH_SECONDS
                or round_seconds >= TREE_BATCH_SECONDS / TREE_BATCH_ROUNDS):
            self._drain()
        try:
            if rec.stop_requested:
                self._stopped_at = step
                log.warning("trainaudit: stopping boosting after round %d on request: %s", step, self.stop_reason)
                return True
        except Exception as exc:  # pragma: no cover - defensive
            self._error("stop", exc)
        return False

    def after_training(self, model: Any) -> Any:
        rec = self.recorder
        if rec is None:
            return model
        try:
            booster = self._model  # (the booster trained; ``model`` may be a slice of it)
            if booster is not None and self._last_step is not None:
                step = self._last_step
                last = self._pending_round(step, trees=False)
                for name, dm in self._dmatrices.items():
                    if self._saved_predictions.get(name) != step:
                        self._guard(f"predictions/{name}", self._record_predictions, booster, name, dm, last)
                if isinstance(model, xgb.Booster):
                    self._guard("best_iteration", self._record_best, model, last)
            self._drain()
            if self.close_on_end:
                self.close()
            else:
                rec.flush()
        except Exception as exc:
            self._error("after_training", exc)
        return model

    # ------------------------------------------------------------------ parts
    def _start(self, model: Any) -> None:
        rank, world = self._rank, self._world_size
        if rank is None or world is None:
            dist = xgb.collective.is_distributed()
            rank = (xgb.collective.get_rank() if dist else 0) if rank is None else rank
            world = (xgb.collective.get_world_size() if dist else 1) if world is None else world
        if not isinstance(model, xgb.Booster):  # xgboost.cv hands callbacks a packed booster
            self.recorder = self._recorder(rank, world, {"xgboost": {"version": xgb.__version__}})
            raise TypeError(f"XGBoostCallback records xgboost.train and the sklearn API; got a {type(model).__name__} (xgboost.cv is not supported)")
        cfg = json.loads(model.save_config())
        learner = cfg.get("learner", {})
        params = _flatten_params(learner)
        self.recorder = self._recorder(rank, world, {"xgboost": {"version": xgb.__version__, "config": cfg, "params": params}})
        self._booster_type = str(learner.get("learner_train_param", {}).get("booster", "gbtree"))
        self._objective = str(learner.get("learner_train_param", {}).get("objective", ""))
        self._num_class = int(float(learner.get("learner_model_param", {}).get("num_class", 0) or 0))
        n = model.num_features()
        self._features = list(model.feature_names or [f"f{i}" for i in range(n)])
        self._feature_index = {f: i for i, f in enumerate(self._features)}
        self._split_count = np.zeros(len(self._features))
        self._split_gain = np.zeros(len(self._features))
        self._split_cover = np.zeros(len(self._features))
        rounds = model.num_boosted_rounds()
        if rounds and self._booster_type != "gblinear":
            # Resumed training (xgb_model=...): seed the running sums with the model so far.
            for arr, kind in ((self._split_count, "weight"), (self._split_gain, "total_gain"), (self._split_cover, "total_cover")):
                for f, v in model.get_score(importance_type=kind).items():
                    i = self._feature_index.get(f)
                    if i is not None:
                        arr[i] = float(np.sum(v))
        numeric = {k: float(v) for k, v in params.items() if _is_number(v)}
        self.recorder.record("other/params", np.array(list(numeric.values()), dtype=np.float64), collection="other",
                             step=rounds, meta={"labels": list(numeric)}, save_values=True)
        self._last_step = rounds
        self._mode_step0 = self.recorder.mode_step
        for name, data in self.eval_data.items():
            try:
                self._dmatrices[name] = _as_dmatrix(data, model.feature_names)
            except Exception as exc:
                self._error(f"eval_data/{name}", exc)

    def _recorder(self, rank: int, world: int, attrs: Mapping[str, Any]) -> Recorder:
        return Recorder(self.uri, framework="xgboost", config=self.config, rank=rank, world_size=world,
                        run_id=self._run_id, storage_options=self._storage_options, extra_attrs=attrs)

    def _record_metrics(self, evals_log: Mapping[str, Mapping[str, Any]], pending: _PendingRound) -> None:
        put = pending.records.append
        for data_name, metrics in evals_log.items():
            role = self._role(data_name)
            if data_name not in self._loss_metric:
                self._loss_metric[data_name] = _loss_metric(list(metrics))
            for metric, history in metrics.items():
                if not history:
                    continue
                meta = {"eval_set": data_name, "metric": metric, "role": role}
                value = float(history[-1])
                put((f"metrics/{data_name}-{metric}", value, "metrics", meta, None))
                if metric == self._loss_metric[data_name]:
                    put((f"losses/{data_name}", value, "losses", meta, None))

    def _role(self, data_name: str) -> str:
        if self.train_sets is not None:
            return "train" if data_name in self.train_sets else "eval"
        return "train" if "train" in data_name.lower() else "eval"

    def _pending_round(self, step: int, *, trees: bool) -> _PendingRound:
        """The waiting round of ``step`` (a new one when the last waiting round is another)."""
        if self._pending and self._pending[-1].step == step:
            return self._pending[-1]
        if not self._pending:
            self._pending_since = time.monotonic()
        pending = _PendingRound(step, trees)
        self._pending.append(pending)
        return pending

    def _drain(self) -> None:
        """Read the trees of the waiting rounds (one slice of the model), then hand every
        waiting record to the recorder, round by round."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        rec = self.recorder
        assert rec is not None
        need = [p for p in pending if p.trees]
        if need and self._model is not None:
            self._guard("trees", self._record_trees, self._model, need)
        for p in pending:
            for name, value, collection, meta, save in p.records:
                rec.record(name, value, collection=collection, step=p.step, meta=meta, save_values=save)

    def _record_trees(self, model: xgb.Booster, rounds: list[_PendingRound]) -> None:
        """The structure of the trees ``rounds`` grew, and the importances after each of them,
        into those rounds' records, from one ``model[a:b]`` (xgboost's rounds are consecutive)."""
        first, last = rounds[0].step, rounds[-1].step
        if last - first + 1 != len(rounds):  # pragma: no cover - a bug of ours, recorded by _guard
            raise ValueError(f"rounds {[p.step for p in rounds]} are not consecutive")
        part = model[first : last + 1]
        batches = _model_trees(part)
        if batches is None or len(batches) != len(rounds):  # a model layout we do not know: the dump
            dumps = part.get_dump(dump_format="json", with_stats=True)
            per_round = len(dumps) // len(rounds)
            if per_round * len(rounds) != len(dumps):
                raise ValueError(f"rounds {first}-{last} hold {len(dumps)} trees: not the same number each round")
            batches = [[json.loads(t) for t in dumps[i * per_round : (i + 1) * per_round]] for i in range(len(rounds))]
        for p, trees in zip(rounds, batches, strict=True):
            stats = np.zeros((len(trees), 4))
            for k, tree in enumerate(trees):
                if "left_children" in tree:
                    stats[k] = model_tree_summary(tree, self._split_at)
                else:
                    stats[k] = tree_summary(tree, self._split_feature)
            meta = {"trees_per_round": len(trees), "booster": self._booster_type}
            put = p.records.append
            put(("trees/depth", stats[:, 0].astype(np.int64), "trees", meta, None))
            put(("trees/leaves", stats[:, 1].astype(np.int64), "trees", meta, None))
            put(("trees/gain", stats[:, 2], "trees", meta, None))
            put(("trees/cover", stats[:, 3], "trees", meta, None))
            self._record_importances(p)

    def _split_at(self, feature: int, gain: float, cover: float) -> None:
        """Add one split on feature number ``feature`` to the running importances."""
        if not 0 <= feature < len(self._split_count):
            raise KeyError(f"split on unknown feature index {feature}")
        self._split_count[feature] += 1
        self._split_gain[feature] += gain
        self._split_cover[feature] += cover

    def _split_feature(self, feature: str, gain: float, cover: float) -> None:
        """:meth:`_split_at` for a split the dump names by feature (its name, or ``f<index>``)."""
        i = self._feature_index.get(feature)
        if i is None and feature.startswith("f") and feature[1:].isdigit():
            i = int(feature[1:])
        if i is None:
            raise KeyError(f"split on unknown feature {feature!r}")
        self._split_at(i, gain, cover)

    def _record_importances(self, pending: _PendingRound) -> None:
        count = self._split_count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_gain = np.where(count > 0, self._split_gain / np.maximum(count, 1), 0.0)
            mean_cover = np.where(count > 0, self._split_cover / np.maximum(count, 1), 0.0)
        # Copies: the running sums go on changing with the next rounds' splits.
        values = {"weight": count.copy(), "gain": mean_gain, "cover": mean_cover,
                  "total_gain": self._split_gain.copy(), "total_cover": self._split_cover.copy()}
        for t in self.importance_types:
            pending.records.append((f"feature_importance/{t}", values[t], "feature_importance",
                                    {"labels": self._features, "importance_type": t}, None))

    def _record_predictions(self, model: xgb.Booster, name: str, dm: xgb.DMatrix, pending: _PendingRound) -> None:
        rounds = pending.step + 1
        pred = model.predict(dm, iteration_range=(0, rounds))
        label = dm.get_label()
        if label.size and label.size != dm.num_row():
            label = label.reshape(dm.num_row(), -1)
        meta = {"eval_set": name, "objective": self._objective, "num_class": self._num_class}
        self._saved_predictions[name] = pending.step
        if label.size:
            pending.records.append((f"labels/{name}", label, "labels", meta, True))
        pending.records.append((f"predictions/{name}", pred, "predictions", meta, True))

    def _record_best(self, model: xgb.Booster, pending: _PendingRound) -> None:
        best = model.attr("best_iteration")
        if best is None:
            return
        # EarlyStopping watches the last metric of the last eval set by default.
        sets = list(self._loss_metric)
        meta: dict[str, Any] = {"best_score": _float_or_none(model.attr("best_score"))}
        if sets:
            meta["eval_set"] = sets[-1]
        pending.records.append(("other/best_iteration", int(best), "other", meta, True))

    # ------------------------------------------------------------------ errors
    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """Run one part of the capture; record (never raise) a failure, and give the part up
        after :data:`MAX_FAILURES` failures."""
        n = self._failures.get(what, 0)
        if n >= MAX_FAILURES:
            return
        try:
            fn(*args)
        except Exception as exc:
            self._failures[what] = n + 1
            self._error(what, exc, final=n + 1 == MAX_FAILURES)

    def _error(self, where: str, exc: BaseException, *, final: bool = False) -> None:
        text = str(exc).split("\nStack trace:")[0].strip()  # XGBoostError carries a C++ stack
        msg = f"{where}: {type(exc).__name__}: {text[:500]}"
        if final:
            msg += f" (failed {MAX_FAILURES} times: no longer captured in this training)"
        rec = self.recorder
        if rec is None:
            log.warning("trainaudit capture error: %s", msg)
            return
        rec.writer._record_error("hook", msg, tensor=where)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def _model_trees(booster: xgb.Booster) -> list[list[dict[str, Any]]] | None:
    """The trees of ``booster`` by round, from its JSON model (``save_raw``: ~0.26 ms a tree with
    the parse, against ~0.66 ms for ``get_dump`` with stats and its parse, by
    bench/probe_xgboost_trees.py on slices of 16 rounds); None when the layout is not the
    gbtree / dart one this reads."""
    try:
        gb = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
        model = gb["model"] if "model" in gb else gb["gbtree"]["model"]
        trees, indptr = model["trees"], model["iteration_indptr"]
        if not all(_TREE_ARRAYS.issubset(tree) for tree in trees):
            return None
        return [trees[indptr[i] : indptr[i + 1]] for i in range(len(indptr) - 1)]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


#: The node arrays of a tree in xgboost's JSON model that :func:`model_tree_summary` reads.
_TREE_ARRAYS = frozenset({"left_children", "right_children", "loss_changes", "sum_hessian", "split_indices"})


def model_tree_summary(tree: Mapping[str, Any], on_split: Callable[[int, float, float], None] | None = None) -> tuple[int, int, float, float]:
    """:func:`tree_summary` of one tree of the JSON model (``save_raw("json")``: node arrays
    ``left_children`` / ``right_children``, -1 at a leaf; ``loss_changes`` and ``sum_hessian``
    are the dump's gain and cover). Walks the child links from the root, so nodes a pruner
    deleted are not counted. ``on_split(feature_index, gain, cover)`` for every split node."""
    left, right = tree["left_children"], tree["right_children"]
    loss, hess, feature = tree["loss_changes"], tree["sum_hessian"], tree["split_indices"]
    depth = leaves = 0
    gain = cover = 0.0
    stack = [(0, 0)]
    while stack:
        i, d = stack.pop()
        if left[i] == -1:
            leaves += 1
            depth = max(depth, d)
            continue
        g, c = float(loss[i]), float(hess[i])
        gain += g
        cover += c
        if on_split is not None:
            on_split(int(feature[i]), g, c)
        stack.append((left[i], d + 1))
        stack.append((right[i], d + 1))
    return depth, leaves, gain, cover


def tree_summary(tree: Mapping[str, Any], on_split: Callable[[str, float, float], None] | None = None) -> tuple[int, int, float, float]:
    """``(depth, leaves, gain, cover)`` of one tree of ``get_dump(dump_format="json",
    with_stats=True)``, walking the child links (the dump's own ``depth`` field is not used).

    Depth counts edges on the longest root-to-leaf path (a single leaf has depth 0); gain and
    cover are summed over the split nodes. ``on_split(feature, gain, cover)`` is called for
    every split node.
    """
    depth = leaves = 0
    gain = cover = 0.0
    stack: list[tuple[Mapping[str, Any], int]] = [(tree, 0)]
    while stack:  # iterative: a lossguide tree may be deeper than Python's recursion limit
        node, d = stack.pop()
        children = node.get("children")
        if not children:
            leaves += 1
            depth = max(depth, d)
            continue
        g, c = float(node.get("gain", 0.0)), float(node.get("cover", 0.0))
        gain += g
        cover += c
        if on_split is not None:
            on_split(str(node["split"]), g, c)
        stack.extend((child, d + 1) for child in children)
    return depth, leaves, gain, cover


def _name_eval_data(eval_data: EvalData | None) -> dict[str, Any]:
    if eval_data is None:
        return {}
    if isinstance(eval_data, Mapping):
        return {str(k): v for k, v in eval_data.items()}
    if isinstance(eval_data, xgb.DMatrix) or (isinstance(eval_data, tuple) and len(eval_data) == 2 and not isinstance(eval_data[0], tuple)):
        raise InvalidParameterError(
            f"eval_data={type(eval_data).__name__}: expected {{name: DMatrix or (X, y)}} or a list of (X, y) pairs")
    return {f"validation_{i}": v for i, v in enumerate(eval_data)}


def _as_dmatrix(data: Any, feature_names: Sequence[str] | None) -> xgb.DMatrix:
    if isinstance(data, xgb.DMatrix):
        return data
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise InvalidParameterError(f"eval_data entries must be a DMatrix or an (X, y) pair; got {type(data).__name__}")
    x, y = data
    names = None if hasattr(x, "columns") else (list(feature_names) if feature_names else None)
    return xgb.DMatrix(x, label=y, feature_names=names, enable_categorical=True)


def _loss_metric(metrics: Sequence[str]) -> str | None:
    """The metric mirrored as the set's loss: the first proper loss, else the first metric that
    is not maximised, else None."""
    for m in metrics:
        if m.split("@")[0] in _LOSSES:
            return m
    for m in metrics:
        if m.split("@")[0] not in _MAXIMIZE:
            return m
    return None


def _flatten_params(learner: Mapping[str, Any]) -> dict[str, str]:
    """The learner's parameters as ``{name: value}``: leaf names where they are unambiguous,
    dotted paths where one name has different values in different places."""
    leaves: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")
        else:
            leaves.append((path, str(node)))

    walk(learner, "")
    by_leaf: dict[str, set[str]] = {}
    for path, value in leaves:
        by_leaf.setdefault(path.rsplit(".", 1)[-1], set()).add(value)
    out: dict[str, str] = {}
    for path, value in leaves:
        leaf = path.rsplit(".", 1)[-1]
        key = leaf if len(by_leaf[leaf]) == 1 and not leaf.isdigit() else path
        out.setdefault(key, value)
    return out


def _is_number(value: str) -> bool:
    try:
        return np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value is not None and _is_number(value) else None
