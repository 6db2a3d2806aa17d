"""Which part of default capture costs the benchmark's MLP step: the same step with parts of
the capture taken away, all arms in one process.

Arms (each its own identical MLP, SGD with momentum, batch 64): no hook; no hook again (A/A:
the measurement's own noise); the hook registered with every hook method a no-op (PyTorch's
hook dispatch only); the module hooks (outputs, activation inputs) no-ops; the defaults; the
defaults with the writer kept idle during the timed steps (its steps handed over only at the
flush between blocks); the defaults with the weight copier's pass skipped (the copies of the
first step reused, so the training thread sees no copy traffic and no copier Python). The arms
alternate blocks of ``--block`` steps for ``--rounds`` rounds, each captured arm flushed after
its block, outside the timed steps. Per arm: the median over rounds of (its median step / the
first arm's in that round), the middle half of those ratios, and the same for the training
thread's CPU time.

This is the probe behind the "fifth look" paragraph of docs/BENCHMARKS.md (section Capture).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_ablate.py [--rounds 150]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_capture import MLPTraining  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import CaptureConfig, TorchHook, _torch, _writer  # noqa: E402
from trainaudit.capture._config import COLLECTIONS  # noqa: E402
from trainaudit.capture._torch_params import ParameterCopy  # noqa: E402

HOOK_METHODS = ("_on_module_output", "_on_activation_input", "_on_activation", "_on_model_forward", "_on_model_forward_end",
                "_on_loss", "_on_optimizer_pre", "_on_optimizer_post")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class NoopHook(TorchHook):
    """Registered like the defaults, every hook method doing nothing."""


for _name in HOOK_METHODS:
    setattr(NoopHook, _name, _noop)


class NoopModuleHook(TorchHook):
    """The defaults, but the module hooks (outputs, activation inputs) do nothing."""

    _on_module_output = _noop
    _on_activation_input = _noop
    _on_activation = _noop


def _writer_idle(hook: TorchHook) -> None:
    # Steps wait on the training side (a loop of optimizer steps never hands them over) until
    # the flush between blocks releases them.
    _writer.MAX_HELD_STEPS = 10**9
    writer = hook.recorder.writer
    writer.release = _noop  # type: ignore[method-assign]
    flush = writer.flush

    def flush_all(timeout: float | None = 60.0) -> None:
        _writer.RunWriter.release(writer)
        flush(timeout)

    writer.flush = flush_all  # type: ignore[method-assign]


def _copier_skipped(hook: TorchHook) -> None:
    copier = hook._copier
    first: dict[str, ParameterCopy] = {}

    def reuse(params: Any) -> dict[str, ParameterCopy]:
        if not first:
            first.update(type(copier)._copy_all(copier, params))
        return {name: ParameterCopy(first[name].tensor, first[name].stats, 1.0) for name, _, _ in params}

    copier._copy_all = reuse  # type: ignore[method-assign]


_PARAMETERS = ("weights", "biases", "gradients", "updates")


def _without_parameters() -> CaptureConfig:
    """The defaults without the optimizer hook's collections (no parameter batch, no copies)."""
    return CaptureConfig(collections=tuple(c for c in COLLECTIONS if c not in _PARAMETERS))


#: name -> (hook class or None, a change made to the registered hook or None, a config or None)
ARMS: dict[str, tuple[type[TorchHook] | None, Callable[[TorchHook], None] | None, Callable[[], CaptureConfig] | None]] = {
    "no hook": (None, None, None),
    "no hook (A/A)": (None, None, None),
    "hook methods no-ops": (NoopHook, None, None),
    "module hooks no-ops": (NoopModuleHook, None, None),
    "no parameters": (TorchHook, None, _without_parameters),
    "defaults": (TorchHook, None, None),
    "writer idle": (TorchHook, _writer_idle, None),
    "copier pass skipped": (TorchHook, _copier_skipped, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--block", type=int, default=25)
    args = ap.parse_args()
    assert _torch.TorchHook is TorchHook
    with tempfile.TemporaryDirectory() as tmp:
        arms: dict[str, tuple[MLPTraining, TorchHook | None]] = {}
        for i, (name, (cls, change, config)) in enumerate(ARMS.items()):
            training = MLPTraining.make()
            hook = None
            if cls is not None:
                hook = cls(os.path.join(tmp, f"run{i}"), config=config() if config else None).register(training.model, training.optimizer, training.loss_fn)
                if change is not None:
                    change(hook)
            arms[name] = (training, hook)
        for training, hook in arms.values():
            for _ in range(60):
                training.step()
            if hook is not None:
                hook.flush()
        wall: dict[str, list[float]] = {name: [] for name in arms}
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, (training, hook) in arms.items():
                steps = []
                c0 = time.thread_time()
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    training.step()
                    steps.append(time.perf_counter() - t0)
                cpu[name].append((time.thread_time() - c0) / args.block)
                wall[name].append(statistics.median(steps))
                if hook is not None:
                    hook.flush()
        for _, hook in arms.values():
            if hook is not None:
                hook.close()
    base = next(iter(arms))
    print(f"{'arm':>22}  median step  ratio (middle half)      CPU ratio (middle half)")
    for name in arms:
        ratios = sorted(w / b for w, b in zip(wall[name], wall[base], strict=True))
        cpu_ratios = sorted(c / b for c, b in zip(cpu[name], cpu[base], strict=True))
        q = len(ratios) // 4
        print(f"{name:>22}  {1e3 * statistics.median(wall[name]):7.2f} ms  {statistics.median(ratios):.3f} "
              f"({ratios[q]:.3f}-{ratios[-q - 1]:.3f})  {statistics.median(cpu_ratios):.3f} "
              f"({cpu_ratios[q]:.3f}-{cpu_ratios[-q - 1]:.3f})")


if __name__ == "__main__":
    main()
