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
sooner when 64 MiB of values wait): the benchmark flushes between blocks. A second,
*sustained* measurement (the A/A case and the defaults) lets the writer flush on its own, as in
a long training: the same short alternating blocks, but a captured block that ends while its
writer flushes goes on until the flush is over, so every flush's cost lands in captured steps.
It compares mean step times over all blocks (:func:`sustained_case`).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capture.py            # writes docs/BENCHMARKS.md
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capture.py --quick    # a smoke run, no file

The table goes into ``docs/BENCHMARKS.md`` under ``## Capture`` (other sections are left alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from _sections import publish  # noqa: E402  (bench/ is on sys.path: run as a script)
from torch import nn  # noqa: E402

from trainaudit.capture import CaptureConfig, SaveSchedule, TorchHook, open_run  # noqa: E402
from trainaudit.capture._writer import RunWriter  # noqa: E402

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
    """Short alternating blocks in which the writer flushes on its own (:func:`sustained_case`)."""

    model: str
    config: str
    flush_steps: int  # the captured arm's writer flushes every this many steps
    base_seconds: float  # total over the blocks
    base_steps: int
    cap_seconds: float
    cap_steps: int
    round_ratios: list[float]  # each round's (capture mean step / no-capture mean step)
    flushes: int
    flush_seconds: float  # the flushes' wall time, all together
    dropped: int

    @property
    def ratio(self) -> float:
        """Mean step with capture over mean step without, all blocks."""
        return (self.cap_seconds / self.cap_steps) / (self.base_seconds / self.base_steps)


class WriterWatch:
    """What a hook's writer is busy with: steps being resolved, a flush under way (wrapping
    the writer's own methods; for benchmarks only)."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.resolving = 0
        self.flushing = threading.Event()
        self.flushes = 0
        self.flush_seconds = 0.0
        resolve, flush = writer._resolve, writer._flush

        def watched_resolve(rec: Any) -> Any:
            self.resolving += 1
            try:
                return resolve(rec)
            finally:
                self.resolving -= 1

        def watched_flush(pending: Any, final: bool) -> None:
            self.flushing.set()
            t0 = time.perf_counter()
            try:
                flush(pending, final)
            finally:
                self.flushes += 1
                self.flush_seconds += time.perf_counter() - t0
                self.flushing.clear()

        writer._resolve = watched_resolve  # type: ignore[method-assign]
        writer._flush = watched_flush  # type: ignore[method-assign]

    def idle(self) -> bool:
        return self.writer._queue.empty() and not self.resolving and not self.flushing.is_set()


def timed_steps(step: Callable[[nn.Module, int], float], m: nn.Module, i: int, n: int,
                watch: WriterWatch | None) -> tuple[float, int]:
    """Train ``n`` steps of ``m`` from step ``i`` (more while ``watch``'s writer flushes, and
    while it resolves the steps handed to it, training through a flush that starts then).
    Returns (seconds of the steps, steps)."""
    seconds, k = 0.0, 0
    while k < n or (watch is not None and watch.flushing.is_set()):
        seconds += step(m, i + k)
        k += 1
    while watch is not None and not watch.idle():  # not timed, unless a flush starts
        if watch.flushing.is_set():
            seconds += step(m, i + k)
            k += 1
        else:
            time.sleep(0.001)
    return seconds, k


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


def sustained_case(model_name: str, config_name: str, *, rounds: int, block: int, batch: int, workdir: str) -> Sustained:
    """Alternate blocks of ``block`` steps as :func:`bench_case` does, but with the writer
    flushing on its own, inside the captured blocks: a block that ends while its writer
    flushes goes on until the flush is over (and one whose writer starts a flush while it
    finishes the block's steps trains through it), so each flush's cost lands in its own arm's
    steps. Between blocks the benchmark waits, untimed, for the writer to resolve the steps
    it was handed (as :func:`bench_case`'s flush does).

    In a run the writer flushes every ``flush_seconds`` (5 s) of training; here the captured
    arm trains only part of the wall time, so its writer flushes instead every as many steps
    as the uncaptured model trains in 5 s (``flush_steps``; ``flush_seconds`` made too long
    to fall due). The short blocks keep the two arms' comparison close in time: this machine's
    speed drifts by 10-50% between one 10 s stretch and the next."""
    make = MODELS[model_name]
    probe_model = make()
    probe_opt = torch.optim.SGD(probe_model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def probe_step() -> float:
        t0 = time.perf_counter()
        probe_opt.zero_grad()
        nn.functional.cross_entropy(probe_model(x), y).backward()
        probe_opt.step()
        return time.perf_counter() - t0

    for _ in range(20):
        probe_step()
    flush_steps = max(1, round(CaptureConfig().flush_seconds / statistics.median(probe_step() for _ in range(50))))
    base_model, cap_model, hook, uri, step = make_case(
        model_name, config_name, batch=batch, workdir=workdir,
        adjust=lambda c: dataclasses.replace(c, flush_seconds=1e6, flush_steps=flush_steps))
    watch = WriterWatch(hook.recorder.writer) if hook is not None else None
    totals = {False: [0.0, 0], True: [0.0, 0]}
    round_ratios = []
    i = 0
    for r in range(rounds):
        means = {}
        for m in (base_model, cap_model) if r % 2 == 0 else (cap_model, base_model):
            captured = m is cap_model
            seconds, n = timed_steps(step, m, i, block, watch if captured else None)
            i += n
            totals[captured][0] += seconds
            totals[captured][1] += n
            means[captured] = seconds / n
        round_ratios.append(means[True] / means[False])
    _, dropped, _, _ = close_and_measure(hook, uri)
    return Sustained(
        model=model_name, config=config_name, flush_steps=flush_steps,
        base_seconds=totals[False][0], base_steps=int(totals[False][1]),
        cap_seconds=totals[True][0], cap_steps=int(totals[True][1]), round_ratios=round_ratios,
        flushes=watch.flushes if watch is not None else 0,
        flush_seconds=watch.flush_seconds if watch is not None else 0.0, dropped=dropped)


def make_case(model_name: str, config_name: str, *, batch: int, workdir: str,
              adjust: Callable[[CaptureConfig], CaptureConfig] | None = None,
              ) -> tuple[nn.Module, nn.Module, TorchHook | None, str, Callable[[nn.Module, int], float]]:
    """Two identical models (one hooked with ``config_name``, changed by ``adjust``, unless
    it is the A/A case), warmed up; and ``step(model, i)``, which trains one step and returns
    its seconds."""
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
    if config is not None and adjust is not None:
        config = adjust(config)
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
        ["model", "capture", "steps per arm", "flush every", "no capture, mean ms/step", "capture, mean ms/step",
         "ratio (mean)", "rounds' middle half", "flushes (mean wall time)", "dropped steps"],
        [[r.model, r.config, f"{r.base_steps} / {r.cap_steps}", f"{r.flush_steps} steps" if r.flushes else "-",
          f"{1e3 * r.base_seconds / r.base_steps:.2f}", f"{1e3 * r.cap_seconds / r.cap_steps:.2f}", f"{r.ratio:.2f}x",
          "{:.2f}-{:.2f}x".format(*_middle_half(r.round_ratios)),
          f"{r.flushes} ({1e3 * r.flush_seconds / r.flushes:.0f} ms)" if r.flushes else "0", str(r.dropped)]
         for r in results])


def _middle_half(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


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
Sustained training: the writer flushes on its own, as in a long training, inside the captured
blocks (the same alternating blocks, {len(sustained[0].round_ratios)} rounds; a captured block that ends
while its writer flushes goes on until the flush is over, so each flush's cost lands in
captured steps). The writer flushes every as many steps as the uncaptured model trains in 5 s
(a run's `flush_seconds`: here the captured arm trains only half the wall time).

{sustained_table(sustained)}

- *ratio (mean)*: mean step with capture over mean step without, all blocks: what a long
  training pays, flushes included. *rounds' middle half*: of the per-round ratios.
- *steps per arm*: a captured arm trains more steps than the uncaptured one, those through its
  flushes.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=24, help="alternations (each: one block per arm)")
    ap.add_argument("--block", type=int, default=25, help="steps per block")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sustained-rounds", type=int, default=200,
                    help="rounds of the sustained measurement (0: skip it)")
    ap.add_argument("--sustained-configs", nargs="*", default=["no hook (A/A)", "defaults"], choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="2 rounds of 10 steps; print only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.block = 2, 10
        args.sustained_rounds = min(args.sustained_rounds, 4)
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
        for model in args.models if args.sustained_rounds > 0 else ():
            for config in [c for c in args.sustained_configs if c in args.configs]:
                s = sustained_case(model, config, rounds=args.sustained_rounds, block=args.block,
                                   batch=args.batch, workdir=workdir)
                print(f"{model:>26} | {config:<22} | sustained {1e3 * s.base_seconds / s.base_steps:7.2f} ms -> "
                      f"{1e3 * s.cap_seconds / s.cap_steps:7.2f} ms | mean {s.ratio:.2f}x | flushes {s.flushes} "
                      f"| dropped {s.dropped}", flush=True)
                sustained.append(s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish(args.out, SECTION, table(results) + "\n\n" + sustained_table(sustained),
            lambda command: section(results, sustained, command, args.rounds, args.block), quick=args.quick)


if __name__ == "__main__":
    main()
