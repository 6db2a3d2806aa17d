"""Where a captured GPU step's host time goes: kernel launches and host milliseconds per step.

Trains the benchmark's MLP (batch 64) on CUDA without a hook and with the default capture,
under ``torch.profiler`` (CPU activity only), and prints per step: the CUDA kernel launches
(``cudaLaunchKernel`` and friends), the host time of the step and the device synchronisations
(``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``) the training
thread made (the thread that launched the most kernels), then these calls per step by thread,
and the PyTorch operations per step that capture adds on the training thread.

Usage (on a machine with a GPU)::

    .venv/bin/python bench/probe_gpu_launches.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch
from bench_capture import mlp  # (bench/ is on sys.path: run as a script)
from torch import nn
from torch.profiler import ProfilerActivity, profile

from trainaudit.capture import TorchHook

STEPS = 20


def measure(uri: str | None) -> tuple[float, float, float, str, dict[str, float]]:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = mlp().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lf = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 1, 28, 28, device=dev), torch.randint(0, 10, (64,), device=dev)
    hook = TorchHook(uri).register(model, opt, lf) if uri else None

    def step() -> None:
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()

    for _ in range(10):  # warm-up (and past the copy probes)
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(STEPS):
            step()
        host_s = time.perf_counter() - t0
        torch.cuda.synchronize()
    if hook is not None:
        hook.close()
    # CUDA runtime calls per thread; the training thread is the one that launched the most.
    per_thread: dict[int, dict[str, int]] = {}
    callers: dict[str, int] = {}  # which operations the synchronising calls ran inside
    for ev in prof.events():
        if ev.name.startswith("cuda"):
            counts = per_thread.setdefault(ev.thread, {})
            counts[ev.name] = counts.get(ev.name, 0) + 1
            if "ynchron" in ev.name:
                chain: list[str] = []
                parent = getattr(ev, "cpu_parent", None)
                while parent is not None and len(chain) < 4:
                    chain.append(parent.name)
                    parent = getattr(parent, "cpu_parent", None)
                key = f"{ev.name} (thread {ev.thread}) in " + (" < ".join(chain) or "?")
                callers[key] = callers.get(key, 0) + 1
    for key, n in sorted(callers.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {n / STEPS:.2f}/step {key}")

    def launches_of(c: dict[str, int]) -> int:
        return sum(n for name, n in c.items() if "Launch" in name)

    training_id = max(per_thread, key=lambda tid: launches_of(per_thread[tid]), default=None)
    training = per_thread.get(training_id, {}) if training_id is not None else {}
    ops: dict[str, float] = {}
    for ev in prof.events():
        if ev.thread == training_id and ev.name.startswith("aten::"):
            ops[ev.name] = ops.get(ev.name, 0.0) + 1.0 / STEPS
    syncs = sum(n for name, n in training.items() if "Synchronize" in name)
    threads = "; ".join(
        f"thread {tid}: " + ", ".join(f"{name} {n / STEPS:.1f}" for name, n in sorted(c.items()) if "Launch" in name or "ynchron" in name)
        for tid, c in per_thread.items())
    return launches_of(training) / STEPS, 1e3 * host_s / STEPS, syncs / STEPS, threads, ops


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("probe_gpu_launches.py needs a CUDA device")
    ops_by_arm = []
    with tempfile.TemporaryDirectory() as d:
        for label, uri in (("no hook", None), ("defaults", os.path.join(d, "run"))):
            launches, host_ms, syncs, threads, ops = measure(uri)
            ops_by_arm.append(ops)
            print(f"{label:10s} kernel launches/step {launches:7.1f}   host ms/step {host_ms:6.2f}   "
                  f"synchronisations/step {syncs:4.1f}\n    per step, by thread: {threads}", flush=True)
    plain, captured = ops_by_arm
    added = sorted(((n - plain.get(name, 0.0), name) for name, n in captured.items()), reverse=True)
    print("operations capture adds per step on the training thread (nested ones included):")
    print("    " + ", ".join(f"{name} {n:.1f}" for n, name in added[:16] if n > 0))


if __name__ == "__main__":
    main()
