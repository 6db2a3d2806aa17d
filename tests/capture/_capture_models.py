"""Small real PyTorch models and a training loop that remembers what it did, so the capture
tests can compare what a run holds with the tensors training actually had."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainaudit.capture import STAT_FIELDS, TorchHook

torch.set_num_threads(1)


def mlp(act: type[nn.Module] = nn.ReLU, dims: tuple[int, ...] = (20, 32, 16, 4)) -> nn.Sequential:
    """Linear layers with ``act`` between them (no activation after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def mlp_tanh_sigmoid() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 4))


class SmallCNN(nn.Module):
    """conv+relu+pool twice, then a linear classifier, for 1x28x28 inputs."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TextModel(nn.Module):
    """Token ids -> embedding -> mean over the sequence -> linear."""

    def __init__(self, vocab: int = 50, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).mean(dim=1))


def classification_data(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def token_data(n: int, seq: int = 6, vocab: int = 50, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=g), torch.randint(0, classes, (n,), generator=g)


@dataclass
class Trace:
    """What training did, per optimizer step (host copies taken by the test itself)."""

    weights: list[dict[str, np.ndarray]] = field(default_factory=list)  # before optimizer.step()
    grads: list[dict[str, np.ndarray]] = field(default_factory=list)  # the accumulated p.grad
    inputs: list[np.ndarray] = field(default_factory=list)  # the last micro-batch of the step
    labels: list[np.ndarray] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)


def train(
    model: nn.Module,
    hook: TorchHook | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch: int = 16,
    accumulate: int = 1,
    eval_every: int = 0,
    eval_batches: int = 2,
    lr: float = 0.05,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: nn.Module | None = None,
    on_step: Callable[[int], Any] | None = None,
) -> Trace:
    """SGD training with ``accumulate`` micro-batches per optimizer step and an eval pass
    of ``eval_batches`` forward calls every ``eval_every`` steps; registers ``hook``."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    lf = loss_fn or nn.CrossEntropyLoss()
    if hook is not None:
        hook.register(model, optimizer=opt, loss=lf)
    tr = Trace()
    n = len(x)
    i = 0
    for step in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            xb, yb = x[i : i + batch], y[i : i + batch]
            i = (i + batch) % n
            out = model(xb)
            loss = lf(out, yb) / accumulate
            loss.backward()
        # (.cpu() is a no-op on CPU; on CUDA these copies synchronise, which a test may do)
        tr.inputs.append(xb.cpu().numpy().copy())
        tr.labels.append(yb.cpu().numpy().copy())
        tr.logits.append(out.detach().cpu().numpy().copy())
        tr.losses.append(float(loss.detach()))
        tr.weights.append({k: p.detach().cpu().numpy().copy() for k, p in model.named_parameters()})
        tr.grads.append({k: p.grad.cpu().numpy().copy() for k, p in model.named_parameters() if p.grad is not None})
        opt.step()
        if on_step is not None:
            on_step(step)
        if eval_every and step % eval_every == eval_every - 1:
            model.eval()
            with torch.no_grad():
                for j in range(eval_batches):
                    tr.eval_losses.append(float(lf(model(x[j * batch : (j + 1) * batch]), y[j * batch : (j + 1) * batch])))
            model.train()
    return tr


def assert_stats_equal(got: np.ndarray, want: dict[str, float] | np.ndarray, rtol: float = 1e-6) -> None:
    if not isinstance(want, dict):
        want = dict(zip(STAT_FIELDS, want.tolist(), strict=True))
    for i, name in enumerate(STAT_FIELDS):
        g, w = float(got[i]), float(want[name])
        if math.isnan(w):
            assert math.isnan(g), f"{name}: got {g}, want nan"
        elif math.isinf(w):  # float64 overflow of sumsq: both sides say inf
            assert g == w, f"{name}: got {g!r}, want {w!r}"
        else:
            # Rounding differs with the summation order: bound it by the sum of magnitudes.
            scale = max(1.0, abs(w), abs(float(want["l1"])) if name == "sum" else 0.0)
            if name in ("sum", "sumsq", "l1"):
                assert abs(g - w) <= rtol * scale + 1e-9, f"{name}: got {g!r}, want {w!r}"
            else:
                assert g == w, f"{name}: got {g!r}, want {w!r}"
