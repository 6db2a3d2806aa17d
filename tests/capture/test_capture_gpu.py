"""CUDA capture: statistics computed on the device equal the CPU statistics, values come back
through pinned memory, and the training thread never synchronises with the device.
Skipped cleanly without CUDA."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
import torch
from _capture_models import classification_data, mlp
from torch import nn

from trainaudit.capture import CaptureConfig, TorchHook, open_run
from trainaudit.capture import _format as F
from trainaudit.capture._torch import torch_stats
from trainaudit.capture._torch_device import BIG, DevicePayload, DeviceStatsBatch, _GraphedReduction
from trainaudit.capture._torch_snapshot import ChangedInPlace, CopyPolicy

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
    batch = DeviceStatsBatch()
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, -2.0], device="cuda")
    p = DevicePayload(t, batch, values=True, how="copy")
    batch.launch()
    stats, values = p.resolve(True)
    np.testing.assert_array_equal(stats, F.numpy_stats(t.cpu().numpy()))
    assert values is not None and np.array_equal(values, t.cpu().numpy(), equal_nan=True)


def test_a_repeated_layout_replays_a_cuda_graph_with_each_batchs_own_values() -> None:
    """From its second batch on, a layout's reduction is a CUDA graph's replay: the statistics
    are still each batch's own (the graph's static rows are refilled every time), with a NaN
    in one batch only, a big tensor (copied into the rows on its own) among small ones, and a
    batch launched on another stream than the graph was made on."""
    batch = DeviceStatsBatch()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for step in range(5):
        tensors = [torch.randn(300, 7, device="cuda", generator=gen), torch.randint(0, 9, (64,), device="cuda", generator=gen),
                   torch.randn(5000, device="cuda", generator=gen).half(), torch.randn(BIG + 5, device="cuda", generator=gen)]
        if step == 2:
            tensors[0][4, 5] = float("nan")
        stream = torch.cuda.Stream() if step == 4 else torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            payloads = [DevicePayload(t, batch, values=False, how="copy") for t in tensors]
            batch.launch()
        for p, t in zip(payloads, tensors, strict=True):
            want = F.numpy_stats(t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy())
            np.testing.assert_allclose(p.stats(), want, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    (layout,) = batch._layouts.values()
    assert isinstance(layout.graph, _GraphedReduction) and layout.uses == 5


def test_device_batch_drops_a_reference_changed_before_it_is_reduced() -> None:
    """A tensor passed by reference that changes in place before its step is reduced is not
    read wrong: the reading is dropped with ChangedInPlace and its name is copied from then
    on. The other tensors of the batch are unaffected; values are those at capture time."""
    batch = DeviceStatsBatch()
    policy = CopyPolicy()
    t = torch.arange(6.0, device="cuda")
    kept = DevicePayload(t, batch, values=True, how="copy")
    changed = DevicePayload(t, batch, values=False, how="ref", policy=policy)
    t.add_(1)
    batch.launch()
    with pytest.raises(ChangedInPlace):
        changed.resolve(False)
    assert policy.copy
    stats, values = kept.resolve(True)
    np.testing.assert_array_equal(stats, F.numpy_stats(np.arange(6.0, dtype=np.float32)))
    np.testing.assert_array_equal(values, np.arange(6.0, dtype=np.float32))


def test_training_thread_never_syncs_with_the_device(local_dir: str) -> None:
    """With CUDA's sync debug mode on, a hooked training step triggers no more synchronising
    calls on the training thread than an unhooked one (no .cpu(), .item(), pageable copies or
    ``torch.tensor(..., device=)``). The writer thread may wait for the device (it waits on
    each snapshot's event), so warnings are counted per thread."""

    def count_syncs(uri: str | None) -> int:
        training_thread = threading.get_ident()
        seen: list[tuple[int, str]] = []
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings():  # restores showwarning on exit
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, *args, **kwargs: seen.append((threading.get_ident(), str(message)))
                dev = torch.device("cuda")
                model = mlp(nn.ReLU, dims=(20, 64, 4)).to(dev)
                opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
                lf = nn.CrossEntropyLoss()
                hook = TorchHook(uri, config=CaptureConfig.full()).register(model, opt, lf) if uri else None
                x = torch.randn(32, 20, device=dev)
                y = torch.randint(0, 4, (32,), device=dev)
                for _ in range(4):
                    opt.zero_grad()
                    lf(model(x), y).backward()
                    opt.step()
                if hook is not None:
                    hook.close()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum(tid == training_thread and "synchroniz" in msg for tid, msg in seen)

    base = count_syncs(None)
    assert count_syncs(os.path.join(local_dir, "nosync")) == base


def test_default_capture_on_cuda(local_dir: str) -> None:
    """The defaults on a GPU (statistics of everything every step, values on a schedule,
    steps held until the next backward): every collection is there, each statistic equals
    numpy's of what training had, update norms equal ||W_s - W_{s-1}||."""
    from _capture_models import train

    torch.manual_seed(1)
    dev = torch.device("cuda")
    model = mlp(nn.ReLU, dims=(20, 64, 32, 4)).to(dev)
    x, y = (t.to(dev) for t in classification_data(256, (20,), 4))
    uri = os.path.join(local_dir, "defaults")
    with TorchHook(uri) as hook:
        tr = train(model, hook, x, y, steps=8, eval_every=4, eval_batches=2)
    run = open_run(uri)
    assert run.status == "complete" and run.errors == [] and run.lost == {}
    assert set(run.collections) == {"inputs", "losses", "labels", "predictions", "outputs", "activation_inputs",
                                    "weights", "biases", "gradients", "updates"}
    train_rows = run.steps().mode == 0
    assert int(train_rows.sum()) == 8
    for name, trace in (("weights/2.weight", [w["2.weight"] for w in tr.weights]),
                        ("gradients/0.bias", [g["0.bias"] for g in tr.grads]),
                        ("outputs/4", tr.logits),
                        ("labels/labels", tr.labels),
                        ("predictions/predictions", [lg.argmax(1) for lg in tr.logits])):
        st = run.stats(name)
        rows = st.values[st.mode == 0]
        assert len(rows) == 8, name
        for s in range(8):
            np.testing.assert_allclose(rows[s], F.numpy_stats(trace[s]), rtol=1e-5, atol=1e-6, err_msg=f"{name} step {s}")
    upd = run.stats("updates/4.weight")
    want = [np.linalg.norm((tr.weights[s]["4.weight"].astype(np.float64) - tr.weights[s - 1]["4.weight"]).ravel()) for s in range(1, 8)]
    assert upd.mode_step.tolist() == list(range(1, 8))
    np.testing.assert_allclose(upd.field("sum"), want, rtol=1e-5)
    loss = run.stats("losses/loss")
    np.testing.assert_allclose(loss.field("sum")[loss.mode == 0], tr.losses, rtol=1e-6)
    np.testing.assert_allclose(loss.field("sum")[loss.mode == 1], tr.eval_losses, rtol=1e-6)
    # values on the default schedule include step 0 (poor initialisation shows there)
    np.testing.assert_array_equal(run.values("weights/0.weight", 0), tr.weights[0]["0.weight"])
