"""Where a captured GPU step's extra time goes: the training thread's own work, or the writer's.

A GPU training loop of a small model is launch-bound: its host thread runs Python and launches
kernels, holding the GIL between every two operations. Capture adds work on that thread (the
hooks, the statistics' kernel launches) and work on the writer thread (reading the statistics
back, building the step's rows), whose Python takes the GIL that training waits for. This
probe tells the two apart: three copies of the benchmark's MLP (batch 64) train in alternating
blocks of ``--block`` steps, without a hook, with the default capture, and with the default
capture while the writer is kept idle (its steps are held on the training side through the
block and handed over after it, outside the timing). Per arm: median ms per step over blocks
(synchronised device at both ends), and the CPU ms per step of the training thread and of the
writer thread over the blocks. A fourth arm, the defaults with every hook method timed (not
itself a fair timing: the timers cost a little), says which hooks the training thread's extra
time is spent in, the device batch's reduction (its launches) apart.

Usage (on a machine with a GPU)::

    .venv/bin/python bench/probe_gpu_threads.py [--rounds 12] [--block 25]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import sys
import tempfile
import threading
import time

import torch
from _threads import thread_cpu  # (bench/ is on sys.path: run as a script)
from bench_capture import mlp
from torch import nn

from trainaudit.capture import TorchHook, _writer

#: The TorchHook methods that run on the training thread, timed by the fourth arm.
HOOK_METHODS = ("_on_model_forward", "_on_model_forward_end", "_on_module_output", "_on_activation_input", "_on_activation", "_on_loss",
                "_on_backward_start", "_on_optimizer_pre", "_on_optimizer_post")


def _timed(spent: collections.Counter[str], name: str, fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0
    return wrapper


def timed_arm(uri: str, spent: collections.Counter[str]) -> Arm:
    """An arm whose hook methods (bound when the hook registers) and device batch are timed."""
    originals = {name: getattr(TorchHook, name) for name in HOOK_METHODS}
    for name, fn in originals.items():
        setattr(TorchHook, name, _timed(spent, name, fn))
    try:
        arm = Arm("defaults, hooks timed", uri)
    finally:
        for name, fn in originals.items():
            setattr(TorchHook, name, fn)
    assert arm.hook is not None
    batch = arm.hook._device_batch
    batch.launch = _timed(spent, "device batch reduction", batch.launch)  # type: ignore[method-assign]
    arm.hook.recorder.before_step_end = batch.launch
    return arm


class Arm:
    def __init__(self, name: str, uri: str | None, *, writer_idle: bool = False) -> None:
        dev = torch.device("cuda")
        torch.manual_seed(0)
        self.name = name
        self.model = mlp().to(dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.lf = nn.CrossEntropyLoss()
        self.hook = TorchHook(uri).register(self.model, self.opt, self.lf) if uri else None
        self.writer_idle = writer_idle
        if self.hook is not None and writer_idle:
            self.hook.recorder.writer.release = lambda: None  # type: ignore[method-assign]
        self.block_s: list[float] = []
        self.train_cpu_s: list[float] = []
        self.writer_cpu_s: list[float] = []

    def writer_cpu(self) -> float:
        if self.hook is None:
            return 0.0
        name = self.hook.recorder.writer._thread.name
        return thread_cpu().get(name, 0.0)

    def run_block(self, xs: list[torch.Tensor], ys: list[torch.Tensor], steps: int, *, timed: bool = True) -> None:
        torch.cuda.synchronize()
        w0, c0, t0 = self.writer_cpu(), time.thread_time(), time.perf_counter()
        for k in range(steps):
            self.opt.zero_grad()
            self.lf(self.model(xs[k % len(xs)]), ys[k % len(ys)]).backward()
            self.opt.step()
        torch.cuda.synchronize()
        t1, c1, w1 = time.perf_counter(), time.thread_time(), self.writer_cpu()
        if timed:
            self.block_s.append((t1 - t0) / steps)
            self.train_cpu_s.append((c1 - c0) / steps)
            self.writer_cpu_s.append((w1 - w0) / steps)
        if self.hook is not None:  # outside the timing: hand over what was held, write it
            if self.writer_idle:
                _writer.RunWriter.release(self.hook.recorder.writer)
            self.hook.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=25)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("probe_gpu_threads.py needs a CUDA device")
    _writer.MAX_HELD_STEPS = args.block + 1  # the idle arm holds a whole block
    dev = torch.device("cuda")
    xs = [torch.randn(64, 1, 28, 28, device=dev) for _ in range(16)]
    ys = [torch.randint(0, 10, (64,), device=dev) for _ in range(16)]
    with tempfile.TemporaryDirectory() as d:
        spent: collections.Counter[str] = collections.Counter()
        arms = [Arm("no hook", None), Arm("defaults", os.path.join(d, "a")),
                Arm("defaults, writer idle", os.path.join(d, "b"), writer_idle=True), timed_arm(os.path.join(d, "c"), spent)]
        for arm in arms:
            arm.run_block(xs, ys, 20, timed=False)
        spent.clear()
        for r in range(args.rounds):
            for arm in arms[r % len(arms):] + arms[: r % len(arms)]:
                arm.run_block(xs, ys, args.block)
        layouts = arms[1].hook._device_batch._layouts.values() if arms[1].hook is not None else []
        graphs = ", ".join(f"{lay.rows} rows used {lay.uses}x: {type(lay.graph).__name__}" for lay in layouts)
        for arm in arms:
            if arm.hook is not None:
                arm.hook.close()
    base = statistics.median(arms[0].block_s)
    print(f"{'arm':24s} {'ms/step':>8s} {'ratio':>6s} {'training CPU ms/step':>20s} {'writer CPU ms/step':>19s}")
    for arm in arms:
        med = statistics.median(arm.block_s)
        print(f"{arm.name:24s} {1e3 * med:8.3f} {med / base:5.2f}x {1e3 * statistics.median(arm.train_cpu_s):20.3f} "
              f"{1e3 * statistics.median(arm.writer_cpu_s):19.3f}")
    steps = args.rounds * args.block
    print(f"the defaults arm's batch layouts (reduction by a CUDA graph or not): {graphs}")
    print("the timed arm's training thread, ms per step (the optimizer pre-hook includes the reduction):")
    print("    " + ", ".join(f"{name} {1e3 * sec / steps:.3f}" for name, sec in spent.most_common()))
    print(f"threads: {sorted(t.name for t in threading.enumerate() if not t.name.startswith('asyncio'))}")


if __name__ == "__main__":
    main()
