"""``trainaudit demo``: train three small models, capture them, audit them, write reports.

* ``healthy-mlp``: a ReLU MLP on separable, normalised data, Adam: nothing critical fires.
* ``faulty-mlp``: a deep ReLU MLP with a poor initialisation (tiny weights, negative biases)
  and SGD: most ReLUs die and the gradients vanish on their way back.
* ``deep-xgboost``: gradient-boosted trees grown to depth 14 on noisy data: trees too deep.

Everything runs on this machine: a local store, a temporary local Dask cluster and Prefect's
ephemeral mode (no server to start).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run_demo", "train_healthy_mlp", "train_faulty_mlp", "train_deep_xgboost"]


def _blobs(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, dim))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y.astype(np.int64)


def train_healthy_mlp(uri: str, *, steps: int = 300, seed: int = 0) -> None:
    """A well-initialised ReLU MLP with Adam, evaluated every 50 steps."""
    import torch
    from torch import nn


    torch.manual_seed(seed)
    x, y = _blobs(4096, 32, 4, seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    _train(uri, "healthy-mlp", model, torch.optim.Adam(model.parameters(), lr=1e-3), xt, yt, steps)


def train_faulty_mlp(uri: str, *, steps: int = 300, seed: int = 0) -> None:
    """A deep ReLU MLP initialised with tiny weights and negative biases: dead ReLUs and
    vanishing gradients from the first step."""
    import torch
    from torch import nn


    torch.manual_seed(seed)
    x, y = _blobs(4096, 32, 4, seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    layers: list[nn.Module] = []
    width = 64
    dims = [32] + [width] * 8
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, 0.0, 0.01)
        nn.init.constant_(lin.bias, -0.5)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(width, 4))
    model = nn.Sequential(*layers)
    _train(uri, "faulty-mlp", model, torch.optim.SGD(model.parameters(), lr=0.01), xt, yt, steps)


def _train(uri: str, run_id: str, model: Any, opt: Any, x: Any, y: Any, steps: int) -> None:
    """Minibatches of 64 from the first 3,072 samples, captured by a TorchHook, with an
    evaluation pass over the rest every 50 steps."""
    from torch import nn

    from trainaudit.capture import TorchHook

    loss_fn = nn.CrossEntropyLoss()
    with TorchHook(uri, run_id=run_id).register(model, opt, loss_fn) as hook:
        for step in range(steps):
            i = (step * 64) % 3072
            opt.zero_grad()
            loss_fn(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
            if step % 50 == 49:
                _evaluate(model, loss_fn, x[3072:], y[3072:])
            if hook.stop_requested:
                break


def _evaluate(model: Any, loss_fn: Any, x: Any, y: Any) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        for j in range(0, len(x), 256):
            loss_fn(model(x[j : j + 256]), y[j : j + 256])
    model.train()


def train_deep_xgboost(uri: str, *, rounds: int = 60, seed: int = 0) -> None:
    """Boosted trees allowed to grow to depth 14 on noisy data."""
    import xgboost as xgb

    from trainaudit.capture import XGBoostCallback

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, 12)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(0, 1.0, size=4000) > 0).astype(np.float32)
    dtrain = xgb.DMatrix(x[:3000], label=y[:3000])
    dval = xgb.DMatrix(x[3000:], label=y[3000:])
    params = {"objective": "binary:logistic", "max_depth": 14, "eta": 0.3, "nthread": 1, "eval_metric": "logloss"}
    cb = XGBoostCallback(uri, run_id="deep-xgboost", eval_data={"validation": dval})
    xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dtrain, "train"), (dval, "validation")],
              callbacks=[cb], verbose_eval=False)


DEMOS: list[tuple[str, Callable[[str], None]]] = [
    ("healthy-mlp", train_healthy_mlp),
    ("faulty-mlp", train_faulty_mlp),
    ("deep-xgboost", train_deep_xgboost),
]


def run_demo(out: str = "trainaudit-demo", *, dask_address: str | None = None, echo: Callable[[str], None] = print) -> int:
    """Train, capture and audit the three demo runs under ``out``; return the CLI exit code."""
    from ._audit import audit_run

    runs_dir = os.path.join(out, "runs")
    audits_dir = os.path.join(out, "audits")
    shutil.rmtree(runs_dir, ignore_errors=True)
    shutil.rmtree(audits_dir, ignore_errors=True)
    os.makedirs(runs_dir, exist_ok=True)
    echo(f"trainaudit demo: capturing three trainings into {os.path.abspath(runs_dir)}")
    for name, train in DEMOS:
        t0 = time.perf_counter()
        train(os.path.join(runs_dir, name))
        echo(f"  trained {name:<14} in {time.perf_counter() - t0:5.1f} s")
    echo("Auditing each run with the Prefect flow 'audit-run' (ephemeral Prefect, local Dask cluster)...")
    rows = []
    for name, _ in DEMOS:
        t0 = time.perf_counter()
        outcome = audit_run(os.path.join(runs_dir, name), out=os.path.join(audits_dir, name), dask_address=dask_address)
        result = outcome.result
        fired = ", ".join(f.rule for f in result.triggered) or "none"
        rows.append((name, result.verdict(), fired, outcome.report_path, time.perf_counter() - t0))
    echo("")
    for name, verdict, fired, report, secs in rows:
        echo(f"{name:<14} verdict: {verdict.upper():<8} fired: {fired}")
        echo(f"{'':<14} report:  {report}   ({secs:.1f} s)")
    return 0
