"""What the XGBoost callback costs a boosting round, on CPU with one thread.

Each case trains the same booster (``xgboost.train``, ``nthread=1``, depth 6, 20 features, eval
sets ``train`` and ``valid``) ``--repeats`` times without and with an ``XGBoostCallback`` writing
a local run (with 1,000 rows of ``eval_data``, so predictions are captured on their default
schedule), the two alternating so that both see the same machine load. Per round it reports the
process's CPU time (every thread: boosting, the callback, the writer and zarr's I/O threads),
the training thread's CPU time (boosting and the callback; with ``nthread=1`` XGBoost boosts on
the calling thread) and the wall time, each the best of the repeats; the wall ratio is the
median over the repeats of (with / without) in each alternating pair, and so are the callback's
part (the training thread's CPU with minus without) and the other threads' CPU. The callback's
``close()`` (the last flush) is inside the timed call: a run's whole cost is counted, its
fixed part (opening the run, the last flush) spread over the rounds.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_xgboost.py            # writes docs/BENCHMARKS.md
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_xgboost.py --quick    # a smoke run, no file

The table goes into ``docs/BENCHMARKS.md`` under ``## XGBoost capture``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402
from _sections import publish  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import XGBoostCallback  # noqa: E402

SECTION = "## XGBoost capture"

#: (training rows, objective, classes)
CASES = [(5_000, "binary:logistic", 2), (5_000, "multi:softprob", 3), (50_000, "binary:logistic", 2)]


@dataclass
class Timing:
    wall: float
    process_cpu: float
    thread_cpu: float


@dataclass
class Result:
    rows: int
    objective: str
    rounds: int
    without: Timing  # best of the repeats, seconds per round
    with_capture: Timing
    wall_ratio: float
    callback_cpu: float  # seconds per round: median over the pairs of the training thread's CPU difference
    other_cpu: float  # seconds per round: median over the pairs of the other threads' CPU with capture


def _data(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 20))
    score = x[:, 0] + 0.5 * x[:, 1] + rng.standard_normal(rows)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])) if classes > 2 else (score > 0).astype(int)
    return x, y


def _train(params: dict, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix, rounds: int, callback: XGBoostCallback | None) -> Timing:
    t0, p0, c0 = time.perf_counter(), time.process_time(), time.thread_time()
    xgb.train(params, dtrain, rounds, evals=[(dtrain, "train"), (dvalid, "valid")], verbose_eval=False,
              callbacks=[callback] if callback is not None else None)
    return Timing(time.perf_counter() - t0, time.process_time() - p0, time.thread_time() - c0)


def bench_case(rows: int, objective: str, classes: int, *, rounds: int, repeats: int, workdir: str) -> Result:
    x, y = _data(rows, classes, seed=0)
    xv, yv = _data(1_000, classes, seed=1)
    dtrain, dvalid = xgb.DMatrix(x, label=y), xgb.DMatrix(xv, label=yv)
    params = {"objective": objective, "max_depth": 6, "nthread": 1, "eval_metric": ["logloss" if classes == 2 else "mlogloss"]}
    if classes > 2:
        params["num_class"] = classes
    # Warm-up: XGBoost's first call builds its caches, the first capture imports zarr.
    _train(params, dtrain, dvalid, 5, None)
    _train(params, dtrain, dvalid, 5, XGBoostCallback(os.path.join(workdir, f"warm-{objective.replace(':', '-')}-{rows}")))
    without, with_capture = [], []
    for i in range(repeats):
        without.append(_train(params, dtrain, dvalid, rounds, None))
        uri = os.path.join(workdir, f"{objective.replace(':', '-')}-{rows}-{i}")
        with_capture.append(_train(params, dtrain, dvalid, rounds, XGBoostCallback(uri, eval_data={"valid": (xv, yv)})))

    def best(ts: list[Timing]) -> Timing:
        return Timing(*(min(getattr(t, f) for t in ts) / rounds for f in ("wall", "process_cpu", "thread_cpu")))

    pairs = list(zip(without, with_capture, strict=True))
    ratio = statistics.median(c.wall / b.wall for b, c in pairs)
    callback = statistics.median(c.thread_cpu - b.thread_cpu for b, c in pairs) / rounds
    other = statistics.median(c.process_cpu - c.thread_cpu for _, c in pairs) / rounds
    return Result(rows, objective, rounds, best(without), best(with_capture), ratio, callback, other)


def table(results: list[Result]) -> str:
    lines = [
        "| training rows | objective | no capture: CPU ms / round | with capture: process CPU | with capture: training thread CPU | callback on the training thread | other threads | wall ms / round (no capture -> capture) | wall ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, c = r.without, r.with_capture
        lines.append(
            f"| {r.rows:,} | {r.objective} | {1e3 * b.process_cpu:.2f} | {1e3 * c.process_cpu:.2f} | {1e3 * c.thread_cpu:.2f} "
            f"| {1e3 * r.callback_cpu:.2f} | {1e3 * r.other_cpu:.2f} "
            f"| {1e3 * b.wall:.2f} -> {1e3 * c.wall:.2f} | {r.wall_ratio:.2f}x |"
        )
    return "\n".join(lines)


def section(results: list[Result], command: str, repeats: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rounds = results[0].rounds if results else 0
    return (
        f"{SECTION}\n\n"
        f"Measured {datetime.date.today().isoformat()} with `{command}`: xgboost {xgb.__version__}, `nthread=1`, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores (load average {load:.1f} at the end of the run).\n"
        f"Each case: {rounds} rounds, depth 6, 20 features, eval sets `train` and `valid`, `eval_data` of 1,000 rows; "
        f"{repeats} trainings without and {repeats} with the callback, alternating; the best of them per column, "
        "the wall ratio, the callback's CPU and the other threads' the medians over the alternating pairs.\n\n"
        f"{table(results)}\n\n"
        "- *callback on the training thread* is the training thread's CPU with capture minus without: the callback's\n"
        "  own work (reading the new trees, metrics, importances, predictions on their schedule); *other threads* is the\n"
        "  writer and zarr's I/O threads (statistics, compression, store writes, the last flush at `close()`).\n"
        "- Neither grows with the training rows, so the relative cost falls as rounds get longer.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="30 rounds, one repeat; print only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.repeats = 30, 1
    workdir = tempfile.mkdtemp(prefix="trainaudit-bench-xgboost-")
    results = []
    try:
        for rows, objective, classes in CASES:
            r = bench_case(rows, objective, classes, rounds=args.rounds, repeats=args.repeats, workdir=workdir)
            print(f"{rows:>7,} {objective:<16} CPU {1e3 * r.without.process_cpu:.2f} -> {1e3 * r.with_capture.process_cpu:.2f} ms/round, "
                  f"wall {r.wall_ratio:.2f}x", flush=True)
            results.append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish(args.out, SECTION, table(results), lambda command: section(results, command, args.repeats), quick=args.quick)


if __name__ == "__main__":
    main()
