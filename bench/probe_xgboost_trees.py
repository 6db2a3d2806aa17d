"""What reading the new trees costs the XGBoost callback, part by part, inside a real training.

Trains ``xgboost.train`` (5,000 rows, 20 features, depth 6, ``nthread=1``, eval sets ``train``
and ``valid``) with a callback that, every ``--batch`` rounds, times on the training thread
(``time.thread_time``): the slice of the new rounds (``model[a:b]``), ``get_dump`` of the slice
with stats and its JSON parse, and ``save_raw("json")`` of the slice with its parse (how
``XGBoostCallback`` reads them). Prints milliseconds per slice and per tree. This is the probe
behind the per-part numbers in docs/BENCHMARKS.md ("XGBoost capture") and
docs/CAPTURE_XGBOOST.md; the callback's whole cost is measured by ``bench_xgboost.py``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_xgboost_trees.py [--rounds 300] [--batch 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402


class TimedReads(xgb.callback.TrainingCallback):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.ns: collections.Counter[str] = collections.Counter()
        self.slices = self.trees = 0

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        rounds = model.num_boosted_rounds()
        if rounds % self.batch:
            return False
        t0 = time.thread_time_ns()
        part = model[rounds - self.batch : rounds]
        t1 = time.thread_time_ns()
        dumps = part.get_dump(dump_format="json", with_stats=True)
        t2 = time.thread_time_ns()
        for text in dumps:
            json.loads(text)
        t3 = time.thread_time_ns()
        json.loads(part.save_raw("json"))
        t4 = time.thread_time_ns()
        self.ns.update({"slice model[a:b]": t1 - t0, "get_dump (with stats)": t2 - t1, "its JSON parse": t3 - t2,
                        "save_raw('json') + parse": t4 - t3})
        self.slices += 1
        self.trees += len(dumps)
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1, help="rounds per slice")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5_000, 20))
    y = (x[:, 0] + rng.standard_normal(5_000) > 0).astype(int)
    xv = rng.standard_normal((1_000, 20))
    dtrain, dvalid = xgb.DMatrix(x, label=y), xgb.DMatrix(xv, label=(xv[:, 0] > 0).astype(int))
    reads = TimedReads(args.batch)
    xgb.train({"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, dtrain, args.rounds,
              evals=[(dtrain, "train"), (dvalid, "valid")], verbose_eval=False, callbacks=[reads])
    print(f"{reads.slices} slices of {args.batch} round(s), {reads.trees} trees (training thread CPU):")
    for part, ns in reads.ns.items():
        print(f"  {part:26s} {ns / reads.slices / 1e6:7.3f} ms a slice, {ns / reads.trees / 1e6:7.3f} ms a tree")


if __name__ == "__main__":
    main()
