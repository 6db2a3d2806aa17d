"""What capture costs a training step on a CUDA GPU.

The same cases as ``bench_capture.py`` (its models and capture configurations), on the GPU:
two identical models train side by side in ALTERNATING blocks of ``--block`` steps, one without
a hook, one with a TorchHook writing a local run. A GPU runs asynchronously, so a step has no
wall time of its own: each block is timed as a whole, from a synchronised device to a
synchronised device, and each round's ratio is (capture block / no-capture block). As in the
CPU benchmark the writer is flushed after each captured block, outside the timed region.

Usage (on a machine with a GPU)::

    .venv/bin/python bench/bench_capture_gpu.py            # writes docs/BENCHMARKS.md
    .venv/bin/python bench/bench_capture_gpu.py --quick    # a smoke run, no file

The table goes into ``docs/BENCHMARKS.md`` under ``## Capture on a GPU``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import torch
from _sections import write_section  # (bench/ is on sys.path: run as a script)
from bench_capture import CONFIGS, MODELS, Result, alternate, close_and_measure, table
from torch import nn

from trainaudit.capture import TorchHook

SECTION = "## Capture on a GPU"


def bench_case(model_name: str, config_name: str, *, rounds: int, block: int, batch: int, workdir: str) -> Result:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    base_model, cap_model = MODELS[model_name]().to(dev), MODELS[model_name]().to(dev)
    cap_model.load_state_dict(base_model.state_dict())
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (base_model, cap_model)}
    losses = {m: nn.CrossEntropyLoss() for m in (base_model, cap_model)}
    xs = [torch.randn(batch, 1, 28, 28, device=dev) for _ in range(16)]
    ys = [torch.randint(0, 10, (batch,), device=dev) for _ in range(16)]
    uri = os.path.join(workdir, f"{model_name}-{config_name}-{batch}".replace(" ", "_"))
    config = CONFIGS[config_name]()
    hook = TorchHook(uri, config=config).register(cap_model, opts[cap_model], losses[cap_model]) if config else None

    def run_block(m: nn.Module, start: int) -> float:
        """Seconds per step of ``block`` steps, device synchronised at both ends."""
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(block):
            opt = opts[m]
            opt.zero_grad()
            losses[m](m(xs[(start + k) % 16]), ys[(start + k) % 16]).backward()
            opt.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / block

    run_block(base_model, 0)  # warm-up: kernels, cuBLAS handles, the store's first arrays
    run_block(cap_model, 0)
    if hook is not None:
        hook.flush()
    # One "time" per block: a GPU step has no wall time of its own.
    base, cap, round_ratios, flush_s = alternate(base_model, cap_model, hook, rounds, lambda m, r: [run_block(m, r * block)])
    size, dropped, steps, tensors = close_and_measure(hook, uri)
    # A block's mean step is the only per-step time a GPU gives: "median" and "mean" columns
    # are the median and the mean over blocks of it.
    return Result(
        model=f"{model_name}, batch {batch}", config=config_name,
        base_median_ms=1e3 * statistics.median(base), cap_median_ms=1e3 * statistics.median(cap),
        base_mean_ms=1e3 * statistics.fmean(base), cap_mean_ms=1e3 * statistics.fmean(cap), round_ratios=round_ratios,
        flush_ms_per_step=1e3 * flush_s / (len(cap) * block), bytes_per_step=size / max(1, steps), steps=steps,
        tensors=tensors, dropped=dropped,
    )


def section(results: list[Result], command: str, rounds: int, block: int) -> str:
    date = datetime.date.today().isoformat()
    return f"""{SECTION}

Measured {date} with `{command}`: {torch.cuda.get_device_name()}, torch {torch.__version__},
Python {platform.python_version()}, {os.cpu_count()} CPU cores. Each case alternates {rounds} blocks of {block}
steps without and with capture (two identical models in one process); a block is timed from a
synchronised device to a synchronised device, and each round gives one ratio (capture block / no-capture block).

{table(results)}

- *median ms/step* and *mean ms/step* are over blocks (a block's time / its steps: a GPU step has
  no wall time of its own); *ratio (median)* is the median of the per-round ratios, *rounds' middle
  half* their middle half, *ratio (mean)* the mean captured block over the mean uncaptured one.
- *flush ms/step* is writer work the benchmark waited for after each captured block, outside the timing.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--batches", type=int, nargs="*", default=[64, 1024])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="2 rounds of 5 steps; print only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_capture_gpu.py needs a CUDA device")
    rounds, block = (2, 5) if args.quick else (args.rounds, args.block)
    results = []
    with tempfile.TemporaryDirectory(prefix="trainaudit-bench-gpu-") as workdir:
        for batch in args.batches:
            for model_name in args.models:
                for config_name in args.configs:
                    if batch > 256 and config_name == "full values every step":
                        continue  # hundreds of MB a step: a disk benchmark, not a capture one
                    r = bench_case(model_name, config_name, rounds=rounds, block=block, batch=batch, workdir=workdir)
                    print(f"{r.model:36s} {r.config:24s} {r.base_median_ms:7.3f} -> {r.cap_median_ms:7.3f} ms/step  "
                          f"{r.ratio_median:.2f}x (mean {r.ratio_mean:.2f}x)", flush=True)
                    results.append(r)
    print(table(results))
    if not args.quick:
        command = "python " + shlex.join(["bench/bench_capture_gpu.py", *sys.argv[1:]])
        write_section(args.out, SECTION, section(results, command, rounds, block))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
