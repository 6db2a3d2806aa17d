"""Who holds the GIL while the benchmark's MLP trains with capture, and where training waits.

Puts Linux uprobes on libpython's ``take_gil`` (entry and return) and ``drop_gil``, records
them with ``perf`` for ``--steps`` steps of the MLP at the default capture configuration, and
prints, per phase of the step (forward + loss, ``backward()``, optimizer step): how often the
training thread took the GIL, how long it waited for it, and which thread held it when it
asked; then, per thread, how often and how long it held the GIL. ``--stacks`` records the
training thread's call stacks at ``take_gil`` instead (``perf --call-graph dwarf``) and prints
the commonest ones inside ``backward()``: which of PyTorch's own GIL acquisitions there are.

This is the probe behind the "sixth look" paragraph of docs/BENCHMARKS.md. The probes cost
a few microseconds per event, so the absolute waits are inflated; compare runs of this probe
with each other (``PYTHONPATH`` pointing at another version of the code), not with the
benchmark. Needs root, ``perf`` and a kernel with uprobes; the probes are removed at the end.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_gil_trace.py [--steps 100] [--stacks]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sysconfig
import tempfile
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_capture import MLPTraining  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import TorchHook  # noqa: E402

PROBES = ("take_gil", "take_gil%return", "drop_gil")
PHASES = ("forward", "backward", "optimizer")
#: Frames left out of a printed stack: the interpreter's own calls.
_NOISE = ("_PyEval", "_PyObject", "PyObject_", "method_vector", "do_call", "_PyFunction", "[unknown]", "cfunction")


def _libpython() -> str:
    return os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME"))


def _perf(*args: str) -> None:
    subprocess.run(["perf", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # perf's -k CLOCK_MONOTONIC timestamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--stacks", action="store_true", help="the training thread's stacks at take_gil in backward()")
    args = parser.parse_args()
    lib = _libpython()
    _perf("probe", "-q", "-x", lib, *[a for p in PROBES for a in ("-a", p)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = _record(tmp, args.steps, args.stacks)
    finally:
        _perf("probe", "-q", "-d", "probe_libpython*")
    print(report)


def _record(tmp: str, steps: int, stacks: bool) -> str:
    tr = MLPTraining.make()
    hook = TorchHook(os.path.join(tmp, "run")).register(tr.model, tr.optimizer, tr.loss_fn)
    for _ in range(100):
        tr.step()
    hook.flush()
    data = os.path.join(tmp, "perf.data")
    events = ["probe_libpython3:take_gil"] if stacks else [f"probe_libpython3:{p.replace('%', '__')}" for p in PROBES]
    cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-p", str(os.getpid()), "-o", data]
    cmd += [a for e in events for a in ("-e", e)] + (["--call-graph", "dwarf,8192"] if stacks else [])
    perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # perf attaches
    marks = []
    for _ in range(steps):
        a = _mono()
        tr.optimizer.zero_grad()
        loss = tr.loss_fn(tr.model(tr.x), tr.y)
        b = _mono()
        loss.backward()
        c = _mono()
        tr.optimizer.step()
        marks.append((a, b, c, _mono()))
    time.sleep(0.5)
    perf.send_signal(2)
    perf.wait(60)
    names = {t.native_id: t.name for t in threading.enumerate()}
    main_tid = threading.get_native_id()
    hook.close()
    fields = "tid,time,event,ip,sym" if stacks else "tid,time,event"
    text = subprocess.run(["perf", "script", "-i", data, "-F", fields], capture_output=True, text=True).stdout
    return (_stacks if stacks else _waits)(text, marks, names, main_tid)


def _phase(t: float, marks: list[tuple[float, float, float, float]]) -> str | None:
    for a, b, c, d in marks:
        if a <= t < d:
            return PHASES[0] if t < b else PHASES[1] if t < c else PHASES[2]
    return None


def _waits(text: str, marks: list[tuple[float, float, float, float]], names: dict[int, str], main_tid: int) -> str:
    events = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([\d.]+):\s+\S*:(\w+):", line)
        if m:
            events.append((float(m.group(2)), int(m.group(1)), m.group(3)))
    events.sort()
    lo, hi, n = marks[0][0], marks[-1][3], len(marks)
    holder: int | None = None
    asked: dict[int, tuple[float, int | None]] = {}
    taken_at: dict[int, float] = {}
    waits: dict[str, list[float]] = collections.defaultdict(list)
    blockers: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    holds: dict[int, list[float]] = collections.defaultdict(list)
    for t, tid, event in events:
        if event == "take_gil":
            asked[tid] = (t, holder)
        elif event == "take_gil__return":
            if tid in asked:
                t0, held_by = asked.pop(tid)
                phase = _phase(t0, marks)
                if tid == main_tid and phase is not None:
                    waits[phase].append(t - t0)
                    if t - t0 > 20e-6:
                        blockers[phase][names.get(held_by, "none") if held_by is not None else "none"] += 1
            holder, taken_at[tid] = tid, t
        elif event == "drop_gil":
            if holder == tid and lo <= t <= hi:
                holds[tid].append(t - taken_at[tid])
            holder = None
    out = [f"{n} steps; the training thread, per step:"]
    for phase in PHASES:
        w = waits[phase]
        out.append(f"  {phase:9s} took the GIL {len(w) / n:5.1f} times, waited {1e3 * sum(w) / n:.3f} ms; "
                   f"waits over 20 us {sum(x > 20e-6 for x in w) / n:.2f}, held by: {dict(blockers[phase])}")
    out.append("GIL holds per step, by thread:")
    for tid, h in sorted(holds.items(), key=lambda kv: -sum(kv[1])):
        out.append(f"  {names.get(tid, str(tid)):32s} {len(h) / n:6.1f} holds, {1e3 * sum(h) / n:.3f} ms, "
                   f"over 100 us {sum(x > 100e-6 for x in h) / n:.2f} ({1e3 * sum(x for x in h if x > 100e-6) / n:.3f} ms), "
                   f"longest {1e3 * max(h):.2f} ms")
    return "\n".join(out)


def _stacks(text: str, marks: list[tuple[float, float, float, float]], names: dict[int, str], main_tid: int) -> str:
    samples: list[tuple[int, float, list[str]]] = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([\d.]+):\s+\S*:(\w+):", line)
        if m:
            samples.append((int(m.group(1)), float(m.group(2)), []))
        elif line.strip() and samples:
            parts = line.strip().split(None, 1)
            samples[-1][2].append(parts[-1])
    counts: collections.Counter[str] = collections.Counter()
    for tid, t, frames in samples:
        if tid == main_tid and _phase(t, marks) == "backward":
            kept = [f[:60] for f in frames[1:60] if not f.startswith(_NOISE)]
            counts[" <- ".join(kept[:8])] += 1
    out = [f"the training thread's take_gil calls in backward(), per step ({len(marks)} steps):"]
    for stack, k in counts.most_common(8):
        out.append(f"  {k / len(marks):4.1f}  {stack}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
