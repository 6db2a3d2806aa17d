"""What a second thread costs a training loop, by what it does: computing without the GIL,
streaming memory without the GIL, or running Python.

Trains the benchmark's MLP (one torch thread) in blocks of 10 steps while a background thread
idles, runs the statistics kernel on a 256 KB array (in cache), on a 64 MB array (streaming
memory), or spins a Python loop; all four alternate in every round, and each reports the median
over rounds of (its block time / the idle block's). This is the probe behind "the GIL, not the
second core" in docs/BENCHMARKS.md (section Capture). Needs the ``_fastats`` extension.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_gil.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from bench_capture import MLPTraining  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import _fastats  # type: ignore[attr-defined]  # noqa: E402

MODES = ("idle", "C in cache", "C streaming", "Python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    step = MLPTraining.make().step
    small = np.random.default_rng(0).standard_normal(65536).astype(np.float32)
    big = np.random.default_rng(1).standard_normal(16 << 20).astype(np.float32)
    mode = ["idle"]

    def background() -> None:
        while mode[0] != "stop":
            if mode[0] == "C in cache":
                _fastats.stats(small)  # releases the GIL for the whole pass
            elif mode[0] == "C streaming":
                _fastats.stats(big)
            elif mode[0] == "Python":
                total = 0
                for i in range(200):
                    total += i
            else:
                time.sleep(0.001)

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    for _ in range(20):
        step()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for m in MODES:
            mode[0] = m
            time.sleep(0.01)
            t0 = time.perf_counter()
            for _ in range(10):
                step()
            times[m].append(time.perf_counter() - t0)
    mode[0] = "stop"
    thread.join()
    for m in MODES:
        ratio = statistics.median(a / b for a, b in zip(times[m], times["idle"], strict=True))
        print(f"{m:12s} {ratio:6.3f}x the idle block's time")


if __name__ == "__main__":
    main()
