"""Where sustained capture's cost lies: bench_capture.py's sustained measurement (short
alternating blocks in which the writer flushes on its own, a captured block going on until its
flush is over: :func:`bench_capture.sustained_case`) with parts of the capture taken away, all
arms in one process, the order rotated every round. Each captured arm's writer flushes every
as many steps as the uncaptured MLP trains in ``flush_seconds`` (5 s), measured first.

Arms (each its own identical MLP, SGD with momentum, batch 64): no hook; no hook again (A/A);
the defaults (the store in a store process); the store in the training process
(``store_process=False``); the store's writes and commits made no-ops on the writer's side
(nothing pickled, sent or written); the writer dropping each step as it arrives (the hooks
and the weight copier only); the weights' and biases' values every 500 steps; every sampled
collection's values every 500 steps. Per arm: the median over rounds of (its mean step / the
first arm's in that round), the middle half of those ratios, the ratio of the arms' mean
steps over the whole run (the sustained figure), its steps and its flushes.

This is the probe behind the "tenth look" paragraph of docs/BENCHMARKS.md (section Capture).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_sustained.py [--rounds 200] [--block 25]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from bench_capture import MLPTraining, WriterWatch, timed_steps  # noqa: E402  (bench/ is on sys.path)

from trainaudit.capture import CaptureConfig, TorchHook  # noqa: E402
from trainaudit.capture import _format as F  # noqa: E402
from trainaudit.capture._run_store import ResolvedStep  # noqa: E402


def mlp_step(training: MLPTraining, i: int) -> float:
    t0 = time.perf_counter()
    training.step()
    return time.perf_counter() - t0


def _store_noop(hook: TorchHook) -> None:
    writer = hook.recorder.writer
    writer.wait_ready(60)
    store = writer._store
    assert store is not None
    store.write_batch = lambda *args, **kwargs: []  # type: ignore[method-assign]
    store.commit = lambda *args, **kwargs: None  # type: ignore[method-assign]


def _writer_drops(hook: TorchHook) -> None:
    def drop(rec: Any) -> ResolvedStep:
        rec.items = []
        return ResolvedStep([], np.empty((0, F.N_STATS)), [])

    hook.recorder.writer._resolve = drop  # type: ignore[method-assign]
    _store_noop(hook)


def _defaults(**changes: Any) -> Callable[[], CaptureConfig]:
    return lambda: CaptureConfig(**changes)


#: name -> (a config or None for no hook, a change made to the registered hook or None)
ARMS: dict[str, tuple[Callable[[], CaptureConfig] | None, Callable[[TorchHook], None] | None]] = {
    "no hook": (None, None),
    "no hook (A/A)": (None, None),
    "defaults": (_defaults(), None),
    "store in process": (_defaults(store_process=False), None),
    "store no-op": (_defaults(), _store_noop),
    "writer drops steps": (_defaults(), _writer_drops),
    "weight values every 500": (lambda: CaptureConfig.with_values_every(500, collections=("weights", "biases")), None),
    "values every 500": (lambda: CaptureConfig.with_values_every(500), None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    args = ap.parse_args()
    names: list[str] = args.arms
    probe = MLPTraining.make()
    for _ in range(20):
        probe.step()
    flush_steps = round(CaptureConfig().flush_seconds / statistics.median(mlp_step(probe, 0) for _ in range(100)))
    print(f"each writer flushes every {flush_steps} steps", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        arms: dict[str, tuple[MLPTraining, TorchHook | None, WriterWatch | None]] = {}
        for i, name in enumerate(names):
            make_config, change = ARMS[name]
            training = MLPTraining.make()
            hook = watch = None
            if make_config is not None:
                config = dataclasses.replace(make_config(), flush_seconds=1e6, flush_steps=flush_steps)
                hook = TorchHook(os.path.join(tmp, f"run{i}"), config=config).register(
                    training.model, training.optimizer, training.loss_fn)
                if change is not None:
                    change(hook)
                watch = WriterWatch(hook.recorder.writer)
            arms[name] = (training, hook, watch)
        for training, hook, _ in arms.values():
            for _ in range(60):
                training.step()
            if hook is not None:
                hook.flush()
        wall: dict[str, list[float]] = {name: [] for name in names}
        total = {name: [0.0, 0] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                training, hook, watch = arms[name]
                dt, n = timed_steps(mlp_step, training, 0, args.block, watch)  # type: ignore[arg-type]
                wall[name].append(dt / n)
                total[name][0] += dt
                total[name][1] += n
            if (r + 1) % 50 == 0:
                print(f"round {r + 1}: " + "  ".join(
                    f"{name} {1e3 * statistics.median(wall[name][-50:]):.2f}" for name in names), flush=True)
        flushes = {name: (f"{w.flushes} ({1e3 * w.flush_seconds / max(1, w.flushes):.0f} ms each)"
                          if w is not None else "") for name, (_, _, w) in arms.items()}
        for _, hook, _ in arms.values():
            if hook is not None:
                hook.close()
    base = names[0]
    base_mean = total[base][0] / total[base][1]
    print(f"{'arm':>20}  mean step  ratio, median of rounds (middle half)  ratio of means  steps  flushes")
    for name in names:
        ratios = sorted(w / b for w, b in zip(wall[name], wall[base], strict=True))
        q = len(ratios) // 4
        mean = total[name][0] / total[name][1]
        print(f"{name:>20}  {1e3 * mean:6.2f} ms  {statistics.median(ratios):.3f} ({ratios[q]:.3f}-{ratios[-q - 1]:.3f})"
              f"                  {mean / base_mean:.3f}  {total[name][1]:6d}  {flushes[name]}")


if __name__ == "__main__":
    main()
