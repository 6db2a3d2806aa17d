"""What capture costs a training step, on CPU with one torch thread.

Two identical models train side by side in one process, in ALTERNATING blocks of ``--block``
steps: one without any hook, one registered with a TorchHook writing a local run. Alternation
puts both arms under the same machine load (other processes, CPU frequency), so their ratio
stays meaningful on a busy machine. Each round's two blocks give one ratio (median step with
capture / median step without); we report the median of those ratios and their middle half,
the mean ratio (which includes the occasional step that saves full values), and the bytes
written per step (the run folder's size / committed steps).

Cases: (a) an MLP 784-512-512-512-10 with ReLU, batch 64; (b) a small CNN on 1x28x28
(conv 1-16, ReLU, pool, conv 16-32, ReLU, pool, linear), batch 64; each with no hook on either
model (an A/A run: the measurement's own bias and noise), a hook that captures nothing (PyTorch's
hook machinery and an idle writer), the default CaptureConfig, weight statistics every 10 steps,
and CaptureConfig.full() (statistics and full values of everything, every step). At the end of each captured block the writer is flushed outside the timed region, so
its work does not leak into the next uncaptured block; the flush wait is reported separately
(``flush ms/step``: writer work the training thread did not wait for).

Those short blocks never hold one of the writer's own flushes (every ``flush_seconds``, or
sooner when 64 MiB of values wait), whose store writes compete with training for the GIL. A
second, *sustained* measurement alternates blocks of ``--sustained-seconds`` (default 12 s)
for the A/A case and the defaults, and compares mean step times: what a long training pays.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capture.py            # writes docs/BENCHMARKS.md
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capture.py --quick    # a smoke run, no file

The table goes into ``docs/BENCHMARKS.md`` under ``## Capture`` (other sections are left alone).
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
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from _sections import publish  # noqa: E402  (bench/ is on sys.path: run as a script)
from torch import nn  # noqa: E402

from trainaudit.capture import CaptureConfig, SaveSchedule, TorchHook, open_run  # noqa: E402

SECTION = "## Capture"


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
    )


@dataclass
class MLPTraining:
    """The MLP case as the probes train it: SGD with momentum, cross-entropy, one fixed batch of
    64 (bench/probe_gil.py, bench/probe_hooks.py)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def make(cls, seed: int = 0) -> MLPTraining:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = mlp()
        return cls(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss(),
                   torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))

    def step(self) -> None:
        self.optimizer.zero_grad()
        self.loss_fn(self.model(self.x), self.y).backward()
        self.optimizer.step()


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


MODELS: dict[str, Callable[[], nn.Module]] = {
    "MLP 784-512-512-512-10": mlp,
    "CNN conv16-conv32-fc": cnn,
}


def params_every_10() -> CaptureConfig:
    """Defaults, but statistics of weights, biases and updates every 10 steps (gradients, losses
    and activations still every step): the cheapest way to lower the per-step cost."""
    return CaptureConfig(stats={c: SaveSchedule(every=10) for c in ("weights", "biases", "updates")})


def nothing() -> CaptureConfig:
    """A hook that captures nothing: what PyTorch's hook machinery and an idle writer cost."""
    return CaptureConfig(collections=())


#: ``None``: no hook on either model, an A/A run that shows the measurement's own bias and noise.
CONFIGS: dict[str, Callable[[], CaptureConfig | None]] = {
    "no hook (A/A)": lambda: None,
    "hook, captures nothing": nothing,
    "defaults": CaptureConfig,
    "weight stats every 10": params_every_10,
    "full values every step": CaptureConfig.full,
}


@dataclass
class Result:
    model: str
    config: str
    base_median_ms: float
    cap_median_ms: float
    base_mean_ms: float
    cap_mean_ms: float
    round_ratios: list[float]
    flush_ms_per_step: float
    bytes_per_step: float
    steps: int
    tensors: int
    dropped: int

    @property
    def ratio_median(self) -> float:
        """The median over rounds of (capture block median / no-capture block median): each
        round compares two blocks run back to back, so slow drifts of the machine's load (which
        move both arms' step times by 30% here) cancel."""
        return statistics.median(self.round_ratios)

    @property
    def ratio_quartiles(self) -> tuple[float, float]:
        if len(self.round_ratios) < 2:
            return self.round_ratios[0], self.round_ratios[0]
        q = statistics.quantiles(self.round_ratios, n=4)
        return q[0], q[2]

    @property
    def ratio_mean(self) -> float:
        return self.cap_mean_ms / self.base_mean_ms


@dataclass
class Sustained:
    """Long blocks of training that include the writer's periodic flushes."""

    model: str
    config: str
    seconds: float
    base_mean_ms: list[float]  # per round
    cap_mean_ms: list[float]
    commits_in_blocks: int  # the writer's own flushes (and heartbeats) during the timed blocks

    @property
    def ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.base_mean_ms, self.cap_mean_ms, strict=True)]


def bench_case(model_name: str, config_name: str, *, rounds: int, block: int, batch: int, workdir: str) -> Result:
    base_model, cap_model, hook, uri, step = make_case(model_name, config_name, batch=batch, workdir=workdir)

    def run_block(m: nn.Module, r: int) -> list[float]:
        return [step(m, r * block + k) for k in range(block)]

    base, cap, round_ratios, flush_s = alternate(base_model, cap_model, hook, rounds, run_block)
    size, dropped, steps, tensors = close_and_measure(hook, uri)
    return Result(
        model=model_name, config=config_name,
        base_median_ms=1e3 * statistics.median(base), cap_median_ms=1e3 * statistics.median(cap),
        base_mean_ms=1e3 * statistics.fmean(base), cap_mean_ms=1e3 * statistics.fmean(cap), round_ratios=round_ratios,
        flush_ms_per_step=1e3 * flush_s / len(cap), bytes_per_step=size / max(1, steps), steps=steps,
        tensors=tensors, dropped=dropped,
    )


def sustained_case(model_name: str, config_name: str, *, rounds: int, seconds: float, batch: int, workdir: str) -> Sustained:
    """Alternate blocks of ``seconds`` of training per arm, long enough to hold several of the
    writer's own flushes (every ``flush_seconds``, or sooner when 64 MiB of values wait): the
    short blocks of :func:`bench_case` flush outside the timed steps, and so never see a
    flush's store writes compete with training for the GIL. Only the flush at the end of each
    captured block is left out (its work would otherwise land in the next uncaptured block)."""
    base_model, cap_model, hook, uri, step = make_case(model_name, config_name, batch=batch, workdir=workdir)
    writer = hook.recorder.writer if hook is not None else None
    means: dict[bool, list[float]] = {False: [], True: []}
    commits = 0
    i = 0
    for r in range(rounds):
        for m in (base_model, cap_model) if r % 2 == 0 else (cap_model, base_model):
            c0 = writer.commits if writer is not None else 0
            times: list[float] = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                times.append(step(m, i))
                i += 1
            means[m is cap_model].append(1e3 * statistics.fmean(times))
            if m is cap_model and hook is not None and writer is not None:
                commits += writer.commits - c0
                hook.flush()
    close_and_measure(hook, uri)
    return Sustained(model_name, config_name, seconds, means[False], means[True], commits)


def make_case(model_name: str, config_name: str, *, batch: int, workdir: str
              ) -> tuple[nn.Module, nn.Module, TorchHook | None, str, Callable[[nn.Module, int], float]]:
    """Two identical models (one hooked with ``config_name``, unless it is the A/A case),
    warmed up; and ``step(model, i)``, which trains one step and returns its seconds."""
    torch.manual_seed(0)
    make = MODELS[model_name]
    base_model, cap_model = make(), make()
    cap_model.load_state_dict(base_model.state_dict())
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (base_model, cap_model)}
    losses = {m: nn.CrossEntropyLoss() for m in (base_model, cap_model)}
    xs = [torch.randn(batch, 1, 28, 28) for _ in range(16)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(16)]
    uri = os.path.join(workdir, f"{model_name}-{config_name}".replace(" ", "_"))
    config = CONFIGS[config_name]()
    hook = TorchHook(uri, config=config).register(cap_model, opts[cap_model], losses[cap_model]) if config else None

    def step(m: nn.Module, i: int) -> float:
        t0 = time.perf_counter()
        opt = opts[m]
        opt.zero_grad()
        losses[m](m(xs[i % 16]), ys[i % 16]).backward()
        opt.step()
        return time.perf_counter() - t0

    # warm-up: allocator, first-step array creation in the store
    for i in range(10):
        step(base_model, i)
        step(cap_model, i)
    if hook is not None:
        hook.flush()
    return base_model, cap_model, hook, uri, step


def alternate(base_model: nn.Module, cap_model: nn.Module, hook: TorchHook | None, rounds: int,
              run_block: Callable[[nn.Module, int], list[float]]) -> tuple[list[float], list[float], list[float], float]:
    """Run ``rounds`` rounds of one block per model, the order swapped every round.

    ``run_block(model, round)`` returns the block's step times (seconds). The writer is flushed
    after each captured block, outside the timed region. Returns the step times without and
    with capture, each round's ratio of the two blocks' medians, and the seconds spent flushing.
    """
    base: list[float] = []
    cap: list[float] = []
    round_ratios: list[float] = []
    flush_s = 0.0
    for r in range(rounds):
        first, second = (base_model, cap_model) if r % 2 == 0 else (cap_model, base_model)
        medians = {}
        for m in (first, second):
            times = run_block(m, r)
            (cap if m is cap_model else base).extend(times)
            medians[m is cap_model] = statistics.median(times)
            if m is cap_model and hook is not None:
                t0 = time.perf_counter()
                hook.flush()
                flush_s += time.perf_counter() - t0
        round_ratios.append(medians[True] / medians[False])
    return base, cap, round_ratios, flush_s


def close_and_measure(hook: TorchHook | None, uri: str) -> tuple[int, int, int, int]:
    """Close ``hook`` and measure its run: (bytes on disk, dropped steps, committed steps,
    tensors); then delete the run. All zero without a hook."""
    if hook is None:
        return 0, 0, 0, 0
    hook.close()
    run = open_run(uri)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(uri) for f in fs)
    dropped = sum(b - a + 1 for rec in run.lost.values() for a, b in rec["dropped_steps"])
    steps, tensors = run.committed_steps(), len(run.tensors())
    shutil.rmtree(uri, ignore_errors=True)
    return size, dropped, steps, tensors


def table(results: list[Result]) -> str:
    return _markdown(
        ["model", "capture", "no capture, median ms/step", "capture, median ms/step", "ratio (median)",
         "rounds' middle half", "ratio (mean)", "flush ms/step", "bytes/step", "tensors", "dropped steps"],
        [[r.model, r.config, f"{r.base_median_ms:.2f}", f"{r.cap_median_ms:.2f}", f"{r.ratio_median:.2f}x",
          f"{r.ratio_quartiles[0]:.2f}-{r.ratio_quartiles[1]:.2f}x", f"{r.ratio_mean:.2f}x", f"{r.flush_ms_per_step:.2f}",
          _size(r.bytes_per_step), str(r.tensors), str(r.dropped)] for r in results])


def sustained_table(results: list[Sustained]) -> str:
    return _markdown(
        ["model", "capture", "rounds x seconds", "no capture, mean ms/step", "capture, mean ms/step",
         "ratio (median of rounds)", "rounds' range", "writer commits in the timed blocks"],
        [[r.model, r.config, f"{len(r.ratios)} x {r.seconds:.0f} s", f"{statistics.fmean(r.base_mean_ms):.2f}",
          f"{statistics.fmean(r.cap_mean_ms):.2f}", f"{statistics.median(r.ratios):.2f}x",
          f"{min(r.ratios):.2f}-{max(r.ratios):.2f}x", str(r.commits_in_blocks)] for r in results])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the first two columns (model, capture) left-aligned, numbers right."""
    out = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MB"  # pragma: no cover


def section(results: list[Result], sustained: list[Sustained], command: str, rounds: int, block: int) -> str:
    date = datetime.date.today().isoformat()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"""{SECTION}

Measured {date} with `{command}`: CPU, `torch.set_num_threads(1)`, torch {torch.__version__},
Python {platform.python_version()}, {os.cpu_count()} cores (load average {load:.1f} at the end of the run).
Each case alternates {rounds} blocks of {block} steps without and with capture (two identical models in one
process, so both arms see the same machine load); the ratio is capture / no capture.

{table(results)}

- *ratio (median)* is the typical step: the median over the rounds of (median step with capture /
  median step without) in that round's two back-to-back blocks; *rounds' middle half* is the
  range of the middle half of those per-round ratios (the machine's noise). *ratio (mean)* is
  the mean step time with capture over the mean without, over all blocks (it also counts the
  steps that save full values). The target for the defaults is at most 1.10x.
- *flush ms/step* is the writer's work (statistics, compression, store writes) that ran on its own
  thread; the benchmark waits for it outside the timed steps. On a machine with a spare core it
  overlaps training; on a saturated CPU it competes with it.
- *bytes/step* is the run's size on local disk divided by the committed steps.
- For context, smdebug 1.0.34 on this kind of machine (NOTES.md): the loss alone every step 1.5-2.7x;
  weights, gradients and ReLU inputs/outputs every 10 steps 1.5-1.75x; every step 7.6-8.7x.
{sustained_part(sustained)}"""


def sustained_part(sustained: list[Sustained]) -> str:
    if not sustained:
        return ""
    return f"""
Sustained training: the same two models in long alternating blocks (mean step time per block),
so that each captured block holds the writer's own flushes, which the short blocks above never
see (they flush outside the timed steps). A flush writes every waiting step to the store through
zarr, whose Python competes with training for the GIL; only the flush at the end of each
captured block is left out.

{sustained_table(sustained)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=24, help="alternations (each: one block per arm)")
    ap.add_argument("--block", type=int, default=25, help="steps per block")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sustained-seconds", type=float, default=12.0,
                    help="length of each block of the sustained measurement (0: skip it)")
    ap.add_argument("--sustained-rounds", type=int, default=4)
    ap.add_argument("--sustained-configs", nargs="*", default=["no hook (A/A)", "defaults"], choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="2 rounds of 10 steps; print only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.block = 2, 10
        args.sustained_seconds, args.sustained_rounds = min(args.sustained_seconds, 1.0), 2
    torch.set_num_threads(1)
    workdir = tempfile.mkdtemp(prefix="trainaudit-bench-capture-")
    results = []
    sustained: list[Sustained] = []
    try:
        for model in args.models:
            for config in args.configs:
                r = bench_case(model, config, rounds=args.rounds, block=args.block, batch=args.batch, workdir=workdir)
                print(f"{model:>26} | {config:<22} | {r.base_median_ms:7.2f} ms -> {r.cap_median_ms:7.2f} ms "
                      f"| median {r.ratio_median:.2f}x mean {r.ratio_mean:.2f}x | flush {r.flush_ms_per_step:.2f} ms/step "
                      f"| {_size(r.bytes_per_step)}/step | dropped {r.dropped}", flush=True)
                results.append(r)
        for model in args.models if args.sustained_seconds > 0 else ():
            for config in [c for c in args.sustained_configs if c in args.configs]:
                s = sustained_case(model, config, rounds=args.sustained_rounds, seconds=args.sustained_seconds,
                                   batch=args.batch, workdir=workdir)
                print(f"{model:>26} | {config:<22} | sustained {statistics.fmean(s.base_mean_ms):7.2f} ms -> "
                      f"{statistics.fmean(s.cap_mean_ms):7.2f} ms | ratios {' '.join(f'{x:.2f}' for x in s.ratios)} "
                      f"| commits in blocks {s.commits_in_blocks}", flush=True)
                sustained.append(s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish(args.out, SECTION, table(results) + "\n\n" + sustained_table(sustained),
            lambda command: section(results, sustained, command, args.rounds, args.block), quick=args.quick)


if __name__ == "__main__":
    main()
