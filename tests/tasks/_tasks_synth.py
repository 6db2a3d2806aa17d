"""Synthetic runs written with the real Recorder, for the end-to-end tests of the audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from trainaudit.capture import CaptureConfig, Recorder


def write_mlp_run(
    uri: str,
    *,
    steps: int = 30,
    layers: int = 3,
    width: int = 16,
    batch: int = 32,
    classes: int = 3,
    eval_every: int = 10,
    seed: int = 0,
    config: CaptureConfig | None = None,
    dead_layer: int | None = None,
    nan_from: int | None = None,
    frozen_layer: int | None = None,
    storage_options: dict[str, Any] | None = None,
    tweak: Callable[[Recorder, int], None] | None = None,
) -> dict[str, Any]:
    """An MLP-shaped run: weights, gradients, updates, ReLU outputs, inputs, labels,
    predictions, train and eval losses. Returns the arrays written (for numpy checks)."""
    rng = np.random.default_rng(seed)
    cfg = config or CaptureConfig.full()
    ws = [rng.normal(0, np.sqrt(2 / width), (width, width)).astype(np.float32) for _ in range(layers)]
    written: dict[str, list[np.ndarray]] = {}

    def rec(r: Recorder, name: str, value: Any, **kw: Any) -> None:
        written.setdefault(name, []).append(np.array(value))
        r.record(name, value, **kw)

    with Recorder(uri, framework="generic", config=cfg, storage_options=storage_options) as r:
        g = 0
        for s in range(steps):
            x = rng.normal(0, 1, (batch, width)).astype(np.float32)
            rec(r, "inputs/model", x, collection="inputs", step=g, mode="train")
            h = x
            for k in range(layers):
                meta = {"module": f"fc{k}", "module_type": "Linear", "depth": 2 * k, "param": "weight"}
                rec(r, f"weights/fc{k}.weight", ws[k], collection="weights", step=g, meta=meta)
                pre = h @ ws[k].T
                if dead_layer == k:
                    pre = -np.abs(pre) - 1.0
                out = np.maximum(pre, 0)
                if nan_from is not None and s >= nan_from and k == layers - 1:
                    out = out.copy()
                    out[0, 0] = np.nan
                rec(r, f"outputs/relu{k}", out, collection="outputs", step=g,
                    meta={"module": f"relu{k}", "module_type": "ReLU", "depth": 2 * k + 1, "activation": "relu"})
                grad = rng.normal(0, 1e-2, ws[k].shape).astype(np.float32)
                if nan_from is not None and s >= nan_from:
                    grad[0, 0] = np.nan
                rec(r, f"gradients/fc{k}.weight", grad, collection="gradients", step=g, meta=meta)
                upd = 0.0 if frozen_layer == k else 1e-3
                rec(r, f"updates/fc{k}.weight", np.float32(upd * np.linalg.norm(ws[k])), collection="updates",
                    step=g, meta=meta)
                if frozen_layer != k:
                    ws[k] = ws[k] - upd * grad * 0 + (upd * ws[k] * rng.normal(0, 1, ws[k].shape)).astype(np.float32)
                h = out
            labels = rng.integers(0, classes, batch)
            rec(r, "labels/labels", labels, collection="labels", step=g)
            scores = rng.normal(0, 1, (batch, classes)).astype(np.float32)
            scores[np.arange(batch), labels] += 3.0
            rec(r, "predictions/predictions", scores, collection="predictions", step=g)
            rec(r, "losses/loss", np.float32(2.0 * np.exp(-s / 10) + 0.1), collection="losses", step=g)
            if tweak is not None:
                tweak(r, g)
            g += 1
            if eval_every and (s + 1) % eval_every == 0:
                rec(r, "losses/loss", np.float32(2.0 * np.exp(-s / 10) + 0.15), collection="losses", step=g,
                    mode="eval")
                g += 1
                r.set_mode("train")
    return {k: v for k, v in written.items()}
