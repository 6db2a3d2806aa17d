"""Benchmark of the full-catalog audit (issue 3).

Writes a generated run of realistic shape (an MLP of ``--layers`` layers, ``--steps`` optimizer
steps, per-step statistics of everything, full values of weights, gradients and ReLU outputs every
``--every`` steps, plus loss, inputs, labels and predictions), on a local store and on the moto S3
server, and measures with the same Dask cluster:

* ``read``: the time to read every value chunk of the run once (one task per block, no work);
* ``audit``: the full-catalog audit (plan + one-pass scan + evaluate), and its ratio to ``read``
  (target <= 1.3);
* ``separate``: every rule on its own, reading its tensors step by step, one saved step at a time
  (smdebug's way), serially;
* 1 worker vs 2 worker processes, and the peak memory (RSS) of each worker during the scan.

The results table goes into ``docs/BENCHMARKS.md`` under ``## Audit`` (other sections are left
alone). Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_audit.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _sections import write_section  # noqa: E402  (bench/ is on sys.path: run as a script)

from trainaudit.capture import CaptureConfig, Recorder, open_run  # noqa: E402
from trainaudit.capture._config import SaveSchedule  # noqa: E402
from trainaudit.capture._format import COLLECTIONS  # noqa: E402
from trainaudit.tasks import audit, make_plan, registry  # noqa: E402
from trainaudit.tasks._scan import _read, _stats_task  # noqa: E402

SECTION = "## Audit"


def bench_config(every: int) -> CaptureConfig:
    stats = {c: SaveSchedule(every=1) for c in COLLECTIONS}
    values = {c: SaveSchedule(every=every, first=2) for c in COLLECTIONS}
    for c in ("losses", "metrics", "labels", "predictions", "updates"):
        values[c] = SaveSchedule(every=1)
    return CaptureConfig(stats=stats, values=values)


def write_run(uri: str, *, layers: int, steps: int, width: int, batch: int, every: int, seed: int = 0) -> float:
    """Write the benchmark run; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    pool = [rng.normal(0, 1, (width, width)).astype(np.float32) for _ in range(8)]
    acts = [np.maximum(rng.normal(0, 1, (batch, width)), 0).astype(np.float32) for _ in range(8)]
    ws = [pool[i % 8] * np.float32(np.sqrt(2 / width)) for i in range(layers)]
    t0 = time.perf_counter()
    with Recorder(uri, framework="generic", config=bench_config(every)) as r:
        g = 0
        for s in range(steps):
            r.record("inputs/model", acts[s % 8] - 0.5, collection="inputs", step=g)
            for k in range(layers):
                meta = {"module": f"fc{k}", "module_type": "Linear", "depth": 2 * k, "param": "weight"}
                ws[k] = ws[k] + np.float32(1e-4) * pool[(s + k) % 8]
                r.record(f"weights/fc{k}.weight", ws[k], collection="weights", step=g, meta=meta)
                r.record(f"gradients/fc{k}.weight", pool[(s * 3 + k) % 8] * np.float32(1e-2),
                         collection="gradients", step=g, meta=meta)
                r.record(f"updates/fc{k}.weight", np.float32(1e-4 * np.sqrt(width * width)), collection="updates",
                         step=g, meta=meta)
                r.record(f"outputs/relu{k}", acts[(s + k) % 8], collection="outputs", step=g,
                         meta={"module": f"relu{k}", "module_type": "ReLU", "depth": 2 * k + 1, "activation": "relu"})
            labels = rng.integers(0, 10, batch)
            r.record("labels/labels", labels, collection="labels", step=g)
            r.record("predictions/predictions", np.eye(10, dtype=np.float32)[labels], collection="predictions", step=g)
            r.record("losses/loss", np.float32(2.0 * np.exp(-s / 200) + 0.1), collection="losses", step=g)
            g += 1
            if (s + 1) % 50 == 0:
                r.record("losses/loss", np.float32(2.0 * np.exp(-s / 200) + 0.2), collection="losses", step=g,
                         mode="eval")
                g += 1
                r.set_mode("train")
    return time.perf_counter() - t0


def value_bytes(uri: str) -> int:
    run = open_run(uri)
    total = 0
    for t in run.tensors():
        total += t.n_values * int(np.prod(t.shape or (1,))) * np.dtype(t.dtype or "float32").itemsize
    return total


# ---------------------------------------------------------------------------------------------


def _read_block(opener: Any, name: str, lo: int, hi: int) -> int:
    vals, _, _, _ = opener().values_block(name, lo, hi)
    return int(np.asarray(vals).nbytes)


def read_all(uri: str, client: Any) -> tuple[float, int]:
    """Read every value chunk once (blocks as the audit's plan cuts them) and every statistic."""
    run = open_run(uri)
    plan = make_plan(run, ["AllZero"])  # for the opener only
    from trainaudit.tasks._plan import TensorMeta, _blocks

    t0 = time.perf_counter()
    futs = []
    for info in run.tensors():
        t = TensorMeta.from_info(info)
        for lo, hi in _blocks(t, [(0, t.n_values)], plan.block_bytes):
            futs.append(client.submit(_read_block, plan.opener, t.name, lo, hi, pure=False))
    names = [(0, t.name) for t in run.tensors()]
    futs.append(client.submit(_stats_task, plan.opener, names, pure=False))
    nbytes = sum(x for x in client.gather(futs) if isinstance(x, int))
    return time.perf_counter() - t0, nbytes


def separate(uri: str, budget_s: float) -> tuple[float, int, int]:
    """Each rule on its own, reading its tensors one saved step at a time (smdebug's way).

    Returns (seconds, rules done, rules planned); stops after ``budget_s`` and extrapolates."""
    run = open_run(uri)
    ids = list(registry())
    t0 = time.perf_counter()
    done = 0
    for rid in ids:
        plan = make_plan(run, [rid])
        for tp in plan.tensors.values():
            if tp.stats:
                run.stats(tp.tensor.name)
            for kernel, (lo, hi) in tp.kernels.items():
                state = kernel.init()
                for i in range(lo, hi):
                    b = _read(run, tp.tensor.name, 0, i, i + 1)
                    partner = None
                    if kernel.paired and kernel in tp.partners:
                        g = tp.partners[kernel]
                        j = int(np.searchsorted(g.value_steps, b.steps[0]))
                        if j >= len(g.value_steps) or g.value_steps[j] != b.steps[0]:
                            continue
                        partner, b = b, _read(run, g.name, 0, j, j + 1)
                    state = kernel.merge(state, kernel.chunk(b, partner) if partner is not None else kernel.chunk(b))
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    return time.perf_counter() - t0, done, len(ids)


class PeakMemory:
    """Samples each worker's RSS while a block of code runs."""

    def __init__(self, client: Any, every: float = 0.2) -> None:
        self.client = client
        self.every = every
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        def rss() -> int:
            import psutil

            return int(psutil.Process().memory_info().rss)

        try:
            for w, v in self.client.run(rss).items():
                self.peak[w] = max(self.peak.get(w, 0), v)
        except Exception:
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def with_cluster(n_workers: int, fn: Callable[[Any], Any]) -> Any:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="6GiB") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("trainaudit.tasks"))  # warm the imports, as a long-lived cluster is
        return fn(client)


def measure(uri: str, n_workers: int, repeat: int = 2) -> dict[str, Any]:
    def go(client: Any) -> dict[str, Any]:
        # interleaved and repeated: this machine is shared, the minimum is the least disturbed
        reads, audits = [], []
        for _ in range(repeat):
            t_read, nbytes = read_all(uri, client)
            reads.append(t_read)
            res = audit(uri, client=client)
            audits.append(res.timings["plan"] + res.timings["scan"] + res.timings["evaluate"])
        with PeakMemory(client) as mem:  # sampling disturbs the timing: a separate run
            res = audit(uri, client=client)
        t_audit = min(audits)
        errors = [f.rule for f in res.findings if f.status == "error"]
        return {"read": min(reads), "bytes": nbytes, "audit": t_audit, "scan": res.timings["scan"],
                "reads": reads, "audits": audits, "audit_bytes": int(res.coverage.get("bytes_read", 0)),
                "plan": res.timings["plan"], "evaluate": res.timings["evaluate"],
                "peak_mb": max(mem.peak.values()) / 2**20 if mem.peak else float("nan"),
                "tasks": res.coverage.get("scan_tasks"), "errors": errors,
                "fired": sorted(f.rule for f in res.findings if f.status == "triggered")}

    return with_cluster(n_workers, go)


def s3_setup() -> tuple[Any, str]:
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir("bench")
    return server, "s3://bench/runs/audit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--every", type=int, default=5, help="full values every N steps")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--separate-budget", type=float, default=90.0, help="seconds for the rule-by-rule baseline")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "BENCHMARKS.md"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ta-bench-audit-")
    rows: list[str] = []
    shape = (f"{args.layers} layers x {args.steps} steps, {args.width}x{args.width} weights, batch {args.batch}, "
             f"values of weights/gradients/ReLU outputs every {args.every} steps, stats of everything every step")
    print(shape, flush=True)
    try:
        stores: list[tuple[str, str]] = [("local", os.path.join(tmp, "run"))]
        server = None
        if not args.no_s3:
            server, s3_uri = s3_setup()
            stores.append(("moto S3", s3_uri))
        for store, uri in stores:
            t_write = write_run(uri, layers=args.layers, steps=args.steps, width=args.width, batch=args.batch,
                                every=args.every)
            vb = value_bytes(uri)
            print(f"[{store}] wrote {vb / 1e6:.0f} MB of values in {t_write:.1f} s", flush=True)
            single: dict[str, Any] = {}
            for n in (1, 2):
                m = measure(uri, n)
                if n == 1:
                    single = m
                print(f"[{store}] {n} worker(s): {m}", flush=True)
                rows.append(
                    f"| {store} | {n} | {vb / 1e6:.0f} | {m['audit_bytes'] / 1e6:.0f} | {m['read']:.1f} | {m['audit']:.1f} | "
                    f"{m['audit'] / m['read']:.2f}x | {m['tasks']} | {m['peak_mb']:.0f} | "
                    f"{', '.join(m['errors']) or 'none'} |"
                )
            if store == "local":
                t_sep, done, total = separate(uri, args.separate_budget)
                est = t_sep * total / max(1, done)
                note = "" if done == total else f" (stopped after {done} of {total} rules; extrapolated)"
                sep_line = (f"Rule by rule, reading each rule's tensors one saved step at a time (smdebug's way, "
                            f"one process, local store): **{est:.0f} s**{note}, against "
                            f"{single['audit']:.1f} s for the one-pass audit on 1 worker "
                            f"({est / single['audit']:.0f}x).")
                print(sep_line, flush=True)
        if server is not None:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    text = "\n".join([
        SECTION,
        "",
        "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_audit.py` "
        f"(`--layers {args.layers} --steps {args.steps} --width {args.width} --every {args.every}`).",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        f"Run: {shape}.",
        "",
        "`read` is the time to read and decompress every value chunk and every statistic of the run once, "
        "with the same cluster (one task per block); `audit` is the full catalog (plan + one-pass scan + "
        "evaluate, cluster already up). Both are the minimum of two interleaved runs: this 2-core machine is "
        "shared with other jobs, so single timings vary by up to 2x. Peak memory is the largest RSS of one "
        "worker process during a third audit (sampled every 0.2 s). The audit reads less than every value: "
        "no rule needs the full gradients (their per-step statistics suffice), and some rules read only "
        "the first or last saved rows; `audit read MB` is what it read (values, statistics, labels).",
        "",
        "| store | workers | values MB | audit read MB | read s | audit s | audit / read | scan tasks | peak MB / worker | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        sep_line,
        "",
    ])
    write_section(os.path.abspath(args.out), SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
