"""CUDA capture: statistics computed on the device equal the CPU statistics, values come back
through pinned memory, and the training thread never synchronises with the device.
Skipped cleanly without CUDA."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from _capture_models import classification_data, mlp
from torch import nn

from trainaudit.capture import CaptureConfig, TorchHook, open_run
from trainaudit.capture import _format as F
from trainaudit.capture._torch import torch_stats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _train_cuda(uri: str | None, steps: int, dtype: torch.dtype = torch.float32) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = mlp(nn.ReLU, dims=(20, 64, 32, 4)).to(dev, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lf = nn.CrossEntropyLoss()
    hook = TorchHook(uri, config=CaptureConfig.full()).register(model, opt, lf) if uri else None
    x, y = classification_data(256, (20,), 4)
    x, y = x.to(dev, dtype), y.to(dev)
    weights, grads = [], []
    for s in range(steps):
        opt.zero_grad()
        lf(model(x[s * 16 : (s + 1) * 16]), y[s * 16 : (s + 1) * 16]).backward()
        weights.append({k: p.detach().float().cpu().numpy() for k, p in model.named_parameters()})
        grads.append({k: p.grad.float().cpu().numpy() for k, p in model.named_parameters()})
        opt.step()
    if hook is not None:
        hook.close()
    return weights, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_stats_equal_cpu_stats(local_dir: str, dtype: torch.dtype) -> None:
    uri = os.path.join(local_dir, f"cuda-{dtype}")
    weights, grads = _train_cuda(uri, steps=4, dtype=dtype)
    run = open_run(uri)
    assert run.errors == [] and run.committed_steps() == 4
    for name, trace in (("weights/0.weight", weights), ("gradients/2.weight", grads)):
        key = name.split("/", 1)[1]
        st = run.stats(name)
        for s in range(4):
            want = trace[s][key]
            np.testing.assert_array_equal(run.values(name, s).astype(np.float32), want)  # exact, via pinned memory
            cpu = torch_stats(torch.from_numpy(want))
            np.testing.assert_allclose(st.values[s], cpu, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st.values[s], F.numpy_stats(want), rtol=1e-5, atol=1e-6)


def test_cuda_nonfinite_counts() -> None:
    from trainaudit.capture._torch import TorchPayload

    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, -2.0], device="cuda")
    stats, values = TorchPayload(t, values=True).resolve(True)
    np.testing.assert_array_equal(stats, F.numpy_stats(t.cpu().numpy()))
    assert values is not None and np.array_equal(values, t.cpu().numpy(), equal_nan=True)


def test_training_thread_never_syncs_with_the_device(local_dir: str) -> None:
    """With CUDA's sync debug mode on, a hooked training step triggers no more synchronising
    calls than an unhooked one (no .cpu(), .item() or pageable copies on the training thread)."""

    def count_syncs(uri: str | None) -> int:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                dev = torch.device("cuda")
                model = mlp(nn.ReLU, dims=(20, 64, 4)).to(dev)
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
                lf = nn.CrossEntropyLoss()
                hook = TorchHook(uri, config=CaptureConfig.full()).register(model, opt, lf) if uri else None
                x = torch.randn(32, 20, device=dev)
                y = torch.randint(0, 4, (32,), device=dev)
                for _ in range(3):
                    opt.zero_grad()
                    lf(model(x), y).backward()
                    opt.step()
            n = sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if hook is not None:
            hook.close()
        return n

    base = count_syncs(None)
    assert count_syncs(os.path.join(local_dir, "nosync")) == base
