"""What one steady-state flush of the benchmark's MLP costs, and on which threads.

Trains the MLP with a TorchHook at the default configuration, except that the writer never
flushes on its own (``flush_seconds`` and ``flush_steps`` out of reach): ``--steps`` steps, a
flush, ``--steps`` more, then times the second flush (wall) and the CPU each thread of the
process used during it (the writer, zarr's event loop ``zarr_io``, its ``asyncio_*`` I/O
pool). In a real run these flushes happen every ``flush_seconds`` (5 s by default) beside
training; ``bench_capture.py`` keeps them outside its timed steps, so this is the part of a
real run's cost that its table leaves out.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_flush.py [--steps 900]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _threads import thread_cpu  # noqa: E402  (bench/ is on sys.path: run as a script)
from bench_capture import MLPTraining  # noqa: E402

from trainaudit.capture import CaptureConfig, TorchHook  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=900)
    args = parser.parse_args()
    training = MLPTraining.make()
    config = CaptureConfig(flush_seconds=1e9, flush_steps=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        hook = TorchHook(os.path.join(tmp, "run"), config=config).register(training.model, training.optimizer, training.loss_fn)
        for _ in range(args.steps):
            training.step()
        hook.flush()  # the arrays exist: what follows is a steady-state flush
        for _ in range(args.steps):
            training.step()
        time.sleep(0.5)  # let the writer finish the statistics of the last steps
        before, t0 = thread_cpu(), time.perf_counter()
        hook.flush()
        wall, after = time.perf_counter() - t0, thread_cpu()
        hook.close()
    used = {name: after[name] - before[name] for name in after if name in before and after[name] > before[name]}
    print(f"flush of {args.steps} steps: {1e3 * wall:.0f} ms wall; CPU by thread:")
    for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>28} {1e3 * cpu:7.1f} ms ({1e3 * cpu / args.steps:.3f} ms a step)")
    store = sum(cpu for name, cpu in used.items() if name == "zarr_io" or name.startswith("asyncio"))
    print(f"  zarr's threads in all: {1e3 * store / args.steps:.3f} ms a step")


if __name__ == "__main__":
    main()
