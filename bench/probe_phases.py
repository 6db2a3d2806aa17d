"""Where the capture overhead of the benchmark's MLP step lands: forward, backward, optimizer.

Trains two identical MLPs in one process (one without capture, one with a TorchHook at the
default configuration), alternating blocks of 25 steps, and prints per arm the median wall and
training-thread CPU time of each phase of a step: ``zero_grad`` + forward + loss, ``backward()``,
``optimizer.step()`` (with the hook's pre- and post-hooks). Wall minus CPU is time the training
thread did not run: waiting for the GIL, mostly. Also counts CPython's cyclic garbage
collections by thread and generation over the measured steps, with their time (a collection
holds the GIL: whichever thread runs it, training waits).

This is the probe behind the per-phase numbers in docs/BENCHMARKS.md; the overhead target
itself is measured by ``bench_capture.py``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_phases.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import statistics
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from bench_capture import MLPTraining  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import TorchHook  # noqa: E402

PHASES = ("forward", "backward", "optimizer")


def timed_step(tr: MLPTraining) -> tuple[float, ...]:
    """One training step; the wall and CPU seconds of its three phases."""
    t0, c0 = time.perf_counter(), time.thread_time()
    tr.optimizer.zero_grad()
    loss = tr.loss_fn(tr.model(tr.x), tr.y)
    t1, c1 = time.perf_counter(), time.thread_time()
    loss.backward()
    t2, c2 = time.perf_counter(), time.thread_time()
    tr.optimizer.step()
    t3, c3 = time.perf_counter(), time.thread_time()
    return t1 - t0, t2 - t1, t3 - t2, c1 - c0, c2 - c1, c3 - c2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    collections_run: collections.Counter[tuple[str, int]] = collections.Counter()
    collection_seconds: collections.Counter[tuple[str, int]] = collections.Counter()
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        thread = threading.current_thread().name
        if phase == "start":
            collections_run[(thread, info["generation"])] += 1
            started[thread] = time.perf_counter()
        elif thread in started:
            collection_seconds[(thread, info["generation"])] += time.perf_counter() - started.pop(thread)

    with tempfile.TemporaryDirectory() as tmp:
        plain, captured = MLPTraining.make(), MLPTraining.make()
        hook = TorchHook(os.path.join(tmp, "run")).register(captured.model, captured.optimizer, captured.loss_fn)
        arms = {"no capture": (plain, []), "defaults": (captured, [])}
        for tr, _ in arms.values():
            for _ in range(100):
                tr.step()
        gc.callbacks.append(on_gc)
        for _ in range(args.rounds):
            for tr, out in arms.values():
                out.extend(timed_step(tr) for _ in range(args.block))
        gc.callbacks.remove(on_gc)
        hook.close()
    base = None
    for name, (_, out) in arms.items():
        med = [1e3 * statistics.median(col) for col in zip(*out, strict=True)]
        total = sum(med[:3])
        base = base or total
        phases = ", ".join(f"{p} {w:.2f} ({c:.2f})" for p, w, c in zip(PHASES, med[:3], med[3:], strict=True))
        print(f"{name:>10}: ms wall (CPU): {phases}; sum {total:.2f} = {total / base:.3f}x")
    steps = args.rounds * args.block * len(arms)
    print(f"cyclic GC collections over {steps} steps (both arms):")
    for (thread, generation), n in sorted(collections_run.items()):
        ms = 1e3 * collection_seconds[(thread, generation)]
        print(f"  {thread:>28} generation {generation}: {n:4d}, {ms:8.1f} ms ({ms / steps:.3f} ms a step)")
    if not collections_run:
        print("  none")


if __name__ == "__main__":
    main()
