"""The training thread's CPU time inside each TorchHook hook, per step of the benchmark's MLP
at the default capture configuration.

Wraps the hook methods with ``time.thread_time`` (CPU of the calling thread only: waiting for
the GIL does not count) and ``time.perf_counter`` (wall: the difference is time spent waiting,
mostly for the GIL), trains 200 warm-up steps, then measures ``--steps`` steps; also prints the
CPU time per step of every thread of the process (the writer, the weight copier, zarr's I/O
threads). This is the probe behind the hooks' and threads' milliseconds quoted in
docs/BENCHMARKS.md and docs/CAPTURE.md.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_hooks.py [--steps 600]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _threads import thread_cpu  # noqa: E402  (bench/ is on sys.path: run as a script)
from bench_capture import MLPTraining  # noqa: E402

from trainaudit.capture import TorchHook, _torch  # noqa: E402

#: The hooks PyTorch calls (the release of held steps runs inside ``_on_loss`` here, since the
#: loss module is registered, so it is not timed on its own: it would count twice).
HOOKS = ("_on_model_forward", "_on_module_output", "_on_activation_input", "_on_activation", "_on_model_forward_end",
         "_on_loss", "_on_optimizer_pre", "_on_optimizer_post")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    cpu_ns: collections.Counter[str] = collections.Counter()
    wall_ns: collections.Counter[str] = collections.Counter()

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return f(*a, **k)
            finally:
                cpu_ns[name] += time.thread_time_ns() - c0
                wall_ns[name] += time.perf_counter_ns() - t0
        return wrapper

    for name in HOOKS:
        if hasattr(_torch.TorchHook, name):  # (an older version, measured for comparison, may lack one)
            setattr(_torch.TorchHook, name, timed(name, getattr(_torch.TorchHook, name)))
    training = MLPTraining.make()
    with tempfile.TemporaryDirectory() as tmp:
        hook = TorchHook(os.path.join(tmp, "run")).register(training.model, training.optimizer, training.loss_fn)
        for _ in range(200):
            training.step()
        hook.flush()
        cpu_ns.clear()
        wall_ns.clear()
        threads0 = thread_cpu()
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(args.steps):
            training.step()
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        hook.flush()  # the writer's work for these steps, done
        threads1 = thread_cpu()
        hook.close()
    n = args.steps
    print(f"step: {1e3 * wall / n:.2f} ms wall, {1e3 * cpu / n:.2f} ms CPU of the training thread")
    for name, ns in cpu_ns.most_common():
        print(f"  {name:24s} {ns / n / 1e3:7.1f} us CPU, {wall_ns[name] / n / 1e3:7.1f} us wall per step")
    print(f"  {'all hooks':24s} {sum(cpu_ns.values()) / n / 1e3:7.1f} us CPU, {sum(wall_ns.values()) / n / 1e3:7.1f} us wall per step")
    print("CPU per step by thread (the measured steps and the flush after them):")
    for name in threads1:
        if name in threads0:
            print(f"  {name:40s} {1e3 * (threads1[name] - threads0[name]) / n:6.2f} ms")


if __name__ == "__main__":
    main()
