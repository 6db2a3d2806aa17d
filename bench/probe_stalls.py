"""Where the training thread stops running during a captured MLP training, and whether the
writer's flushes are when it does.

Trains the benchmark's MLP with a TorchHook at the default configuration (the writer flushing
on its own, every ``flush_seconds``) and times every step's wall and training-thread CPU time;
wall minus CPU is time the training thread did not run (waiting for the GIL, mostly). Prints
the distribution of that off-CPU time, the share of it in the steps that overlap one of the
writer's flushes (``RunWriter._flush`` is timed from outside), the flushes themselves, and
the total of the steps that stalled more than 2 ms. This is the probe behind the sustained
cost explained in docs/BENCHMARKS.md; ``bench_capture.py``'s sustained table measures it.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_stalls.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from bench_capture import MLPTraining  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import TorchHook, _writer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    flushes: list[tuple[float, float]] = []
    flush = _writer.RunWriter._flush

    @functools.wraps(flush)
    def timed_flush(self: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return flush(self, *a, **k)
        finally:
            flushes.append((t0, time.perf_counter()))

    _writer.RunWriter._flush = timed_flush  # type: ignore[method-assign]
    training = MLPTraining.make()
    with tempfile.TemporaryDirectory() as tmp:
        hook = TorchHook(os.path.join(tmp, "run")).register(training.model, training.optimizer, training.loss_fn)
        for _ in range(args.warmup):
            training.step()
        hook.flush()
        flushes.clear()
        starts, ends, off = [], [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.thread_time()
            training.step()
            t1 = time.perf_counter()
            starts.append(t0)
            ends.append(t1)
            off.append((t1 - t0) - (time.thread_time() - c0))
        hook.close()
    off_us = np.array(off) * 1e6
    in_flush = np.array([any(a < e and s < b for a, b in flushes) for s, e in zip(starts, ends, strict=True)])
    pct = np.percentile(off_us, [50, 90, 99, 100])
    print(f"{args.steps} steps, {1e3 * (ends[-1] - starts[0]) / args.steps:.2f} ms a step")
    print(f"off-CPU time a step: mean {off_us.mean():.0f} us; median {pct[0]:.0f}, p90 {pct[1]:.0f}, p99 {pct[2]:.0f}, max {pct[3]:.0f} us")
    print(f"steps overlapping a flush: {in_flush.sum()} of {len(off_us)}, holding {off_us[in_flush].sum() / off_us.sum():.0%} of the off-CPU time")
    print("flushes (start s, duration ms): " + ", ".join(f"({a - starts[0]:.2f}, {1e3 * (b - a):.0f})" for a, b in flushes))
    stalled = off_us > 2000
    print(f"steps stalled > 2 ms: {stalled.sum()}, {off_us[stalled].sum() / 1e3:.0f} ms in all")


if __name__ == "__main__":
    main()
