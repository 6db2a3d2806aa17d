"""TorchHook on real PyTorch trainings: every collection, what a step is, save schedules,
modes, resume and distributed ranks. Each test compares the run with the tensors the training
loop itself saw."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from _capture_models import (
    SmallCNN,
    TextModel,
    assert_stats_equal,
    classification_data,
    mlp,
    mlp_tanh_sigmoid,
    token_data,
    train,
)
from torch import nn

from trainaudit.capture import CaptureConfig, SaveSchedule, TorchHook, open_run
from trainaudit.capture import _format as F
from trainaudit.capture._control import request_stop
from trainaudit.capture._torch_snapshot import CopyPolicy

#: Tests that also run on a GPU when there is one (CI has none: the CUDA case skips cleanly).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


def _run_dir(local_dir: str, name: str = "run") -> str:
    return os.path.join(local_dir, name)


def _train_rows(run, name: str) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """(global steps, mode steps) of ``name``'s value rows in train mode."""
    vs = run.value_steps(name)
    keep = vs.mode == 0
    return vs.step[keep], vs.mode_step[keep]


def _assert_values(run, name: str, wanted: list[np.ndarray], *, rtol: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Train-mode value rows of ``name`` equal ``wanted`` (indexed by train mode step), and the
    statistics rows at those steps equal NumPy's statistics of the same arrays."""
    steps, mode_steps = _train_rows(run, name)
    assert len(steps) == len(wanted), f"{name}: {len(steps)} value rows, want {len(wanted)}"
    st = run.stats(name)
    by_step = {int(s): st.values[i] for i, s in enumerate(st.step)}
    for step, ms in zip(steps.tolist(), mode_steps.tolist(), strict=True):
        got = run.values(name, step)
        want = wanted[ms]
        assert got.shape == want.shape, (name, step)
        if rtol:
            np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"{name} step {step}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} step {step}")
        np.testing.assert_allclose(by_step[step], F.numpy_stats(want), rtol=1e-5, atol=1e-6, err_msg=f"{name} stats {step}")


@pytest.mark.parametrize("device", DEVICES)
def test_mlp_relu_captures_every_collection(local_dir: str, device: str) -> None:
    torch.manual_seed(0)
    model = mlp(nn.ReLU).to(device)
    x, y = (t.to(device) for t in classification_data(256, (20,), 4))
    uri = _run_dir(local_dir)
    hook = TorchHook(uri, config=CaptureConfig.full(), run_id="mlp")
    tr = train(model, hook, x, y, steps=6, eval_every=3, eval_batches=2)
    hook.close()

    run = open_run(uri)
    assert run.status == "complete" and run.framework == "pytorch" and run.errors == [] and run.lost == {}
    assert run.attrs["torch_version"] == torch.__version__
    names = {t.name for t in run.tensors()}
    expected = {
        "inputs/model", "losses/loss", "labels/labels", "predictions/predictions",
        "outputs/0", "outputs/1", "outputs/2", "outputs/3", "outputs/4",
        "activation_inputs/1", "activation_inputs/3",
        *(f"weights/{i}.weight" for i in (0, 2, 4)), *(f"biases/{i}.bias" for i in (0, 2, 4)),
        *(f"gradients/{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")),
        *(f"updates/{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")),
    }
    assert names == expected
    assert set(run.collections) == {"inputs", "losses", "labels", "predictions", "outputs", "activation_inputs",
                                    "weights", "biases", "gradients", "updates"}

    # 6 optimizer steps; after steps 2 and 5 an eval pass of 2 forward calls (2 eval steps).
    steps = run.steps()
    assert steps.global_step.tolist() == list(range(10))
    assert steps.mode.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert steps.mode_step.tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 2, 3]
    assert run.modes == ["train", "eval"]

    for i in (0, 2, 4):
        for p in ("weight", "bias"):
            coll = "weights" if p == "weight" else "biases"
            _assert_values(run, f"{coll}/{i}.{p}", [w[f"{i}.{p}"] for w in tr.weights])
            _assert_values(run, f"gradients/{i}.{p}", [g[f"{i}.{p}"] for g in tr.grads])
            # updates: ||W_s - W_{s-1}|| from step 1 on
            upd = run.stats(f"updates/{i}.{p}")
            want = [np.linalg.norm((tr.weights[s][f"{i}.{p}"].astype(np.float64) - tr.weights[s - 1][f"{i}.{p}"]).ravel())
                    for s in range(1, 6)]
            assert upd.mode_step.tolist() == [1, 2, 3, 4, 5]
            np.testing.assert_allclose(upd.field("sum"), want, rtol=1e-5)
    _assert_values(run, "inputs/model", tr.inputs)
    _assert_values(run, "labels/labels", tr.labels)
    _assert_values(run, "outputs/4", tr.logits)
    _assert_values(run, "predictions/predictions", [lg.argmax(1) for lg in tr.logits])
    _assert_values(run, "losses/loss", [np.float32(v) for v in tr.losses])
    # the ReLU sees the first Linear's output, and outputs its positive part
    for s in range(6):
        h = run.values("outputs/0", int(steps.global_step[(steps.mode == 0)][s]))
        a = run.values("activation_inputs/1", int(steps.global_step[(steps.mode == 0)][s]))
        np.testing.assert_array_equal(h, a)
        np.testing.assert_array_equal(run.values("outputs/1", int(steps.global_step[(steps.mode == 0)][s])), np.maximum(a, 0))

    # eval losses: one per eval forward pass, in eval mode
    loss = run.stats("losses/loss")
    np.testing.assert_allclose(loss.field("sum")[loss.mode == 1], tr.eval_losses, rtol=1e-6)
    assert loss.mode_step[loss.mode == 1].tolist() == [0, 1, 2, 3]

    # metadata the rules rely on
    meta = {t.name: t.meta for t in run.tensors()}
    assert meta["outputs/1"]["activation"] == "relu" and meta["outputs/1"]["module_type"] == "ReLU"
    assert meta["activation_inputs/3"]["activation"] == "relu" and meta["activation_inputs/3"]["module"] == "3"
    depths = [meta[f"outputs/{i}"]["depth"] for i in range(5)]
    assert depths == sorted(depths) and len(set(depths)) == 5
    w = meta["weights/2.weight"]
    assert w["module"] == "2" and w["module_type"] == "Linear" and w["param"] == "weight"
    assert (w["fan_in"], w["fan_out"]) == (32, 16)
    assert run.tensor("weights/0.weight").shape == (32, 20) and run.tensor("weights/0.weight").dtype == "float32"


def test_mlp_tanh_sigmoid_activation_inputs(local_dir: str) -> None:
    torch.manual_seed(1)
    model = mlp_tanh_sigmoid()
    x, y = classification_data(128, (20,), 4)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=CaptureConfig.full()) as hook:
        train(model, hook, x, y, steps=3)
        # one forward hook per activation (input and output), no pre-hook: each hooked call costs
        assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in (model[1], model[3])] == [(0, 1), (0, 1)]
    run = open_run(uri)
    acts = {t.name: t.meta for t in run.tensors("activation_inputs")}
    assert set(acts) == {"activation_inputs/1", "activation_inputs/3"}
    assert acts["activation_inputs/1"]["activation"] == "tanh" and acts["activation_inputs/3"]["activation"] == "sigmoid"
    for s in range(3):
        a1 = run.values("activation_inputs/1", s)
        np.testing.assert_array_equal(a1, run.values("outputs/0", s))
        np.testing.assert_allclose(run.values("outputs/1", s), np.tanh(a1), rtol=1e-5, atol=1e-6)
        a3 = run.values("activation_inputs/3", s)
        np.testing.assert_allclose(run.values("outputs/3", s), 1 / (1 + np.exp(-a3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_small_cnn(local_dir: str, device: str) -> None:
    torch.manual_seed(2)
    model = SmallCNN().to(device)
    x, y = (t.to(device) for t in classification_data(96, (1, 28, 28), 10))
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=CaptureConfig.full()) as hook:
        tr = train(model, hook, x, y, steps=3, batch=16)
    run = open_run(uri)
    assert run.errors == []
    shapes = {t.name: t.shape for t in run.tensors()}
    assert shapes["inputs/model"] == (16, 1, 28, 28)
    assert shapes["weights/features.0.weight"] == (4, 1, 3, 3)
    assert shapes["outputs/features.0"] == (16, 4, 28, 28)
    assert shapes["activation_inputs/features.1"] == (16, 4, 28, 28)
    assert shapes["outputs/features.5"] == (16, 8, 7, 7)
    assert shapes["outputs/head"] == (16, 10)
    assert run.tensor("weights/features.3.weight").meta["fan_in"] == 4 * 9
    _assert_values(run, "weights/features.3.weight", [w["features.3.weight"] for w in tr.weights])
    _assert_values(run, "gradients/head.weight", [g["head.weight"] for g in tr.grads])
    _assert_values(run, "outputs/head", tr.logits)
    _assert_values(run, "inputs/model", tr.inputs)


def test_embedding_text_model_tokens(local_dir: str) -> None:
    torch.manual_seed(3)
    model = TextModel()
    toks, y = token_data(64)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=CaptureConfig.full()) as hook:
        tr = train(model, hook, toks, y, steps=3, batch=8)
    run = open_run(uri)
    tok = run.tensor("tokens/emb")
    assert tok.collection == "tokens" and tok.dtype == "int64" and tok.meta["padding_idx"] == 0
    _assert_values(run, "tokens/emb", tr.inputs)
    # the model's own input is token ids too: collection tokens, not inputs
    assert run.tensor("tokens/model").collection == "tokens" and not run.tensors("inputs")
    assert run.tensor("outputs/emb").shape == (8, 6, 8)
    _assert_values(run, "gradients/emb.weight", [g["emb.weight"] for g in tr.grads])


def test_gradient_accumulation_a_step_is_an_optimizer_step(local_dir: str) -> None:
    torch.manual_seed(4)
    model = mlp(nn.ReLU)
    x, y = classification_data(512, (20,), 4)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=CaptureConfig.full()) as hook:
        tr = train(model, hook, x, y, steps=5, batch=8, accumulate=4)
    run = open_run(uri)
    assert run.steps().global_step.tolist() == list(range(5))  # 20 forward/backward, 5 steps
    for name in ("0.weight", "4.bias"):
        # the accumulated gradient of all 4 micro-batches
        _assert_values(run, f"gradients/{name}", [g[name] for g in tr.grads])
        _assert_values(run, f"weights/{name}" if name.endswith("weight") else f"biases/{name}", [w[name] for w in tr.weights])
    # per-forward tensors keep the last micro-batch of the step
    _assert_values(run, "inputs/model", tr.inputs)
    assert run.stats("outputs/0").step.tolist() == list(range(5))


def test_a_name_that_turns_to_references_mid_step_keeps_its_last_micro_batch(local_dir: str) -> None:
    """Gradient accumulation while names change hands: ``other/extra`` first appears in the
    second step, after the step's other tensors already go by reference (one ReferenceBatch
    per step), so its first micro-batches are copies (its probes) and its later ones
    references, inside one step. Each step must keep the last micro-batch's tensor, and a
    number recorded after a tensor under one name in a step wins, as any later record does."""
    torch.manual_seed(5)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    hook = TorchHook(uri, config=CaptureConfig.full()).register(model, opt, nn.CrossEntropyLoss())
    extra: dict[int, np.ndarray] = {}
    for s in range(4):
        opt.zero_grad()
        for k in range(4):
            xb, yb = x[(4 * s + k) * 8 :][:8], y[(4 * s + k) * 8 :][:8]
            out = model(xb)
            if s >= 1:
                t = out.detach() * (k + 1)  # a new tensor every micro-batch
                hook.record("other/extra", t, collection="other")
                extra[s] = t.numpy().copy()
            hook.record("other/overridden", out.detach() + 1, collection="other")
            nn.CrossEntropyLoss()(out, yb).backward()
        hook.record("other/overridden", float(s), collection="other")
        if s == 1:
            assert hook._references is not None and hook._references.entries  # references in this step
        opt.step()
    hook.close()
    run = open_run(uri)
    assert run.errors == []
    assert not hook._policies["other/extra"].copy and hook._policies["other/extra"].probes_left == 0
    assert run.stats("other/extra").step.tolist() == [1, 2, 3]
    for s in (1, 2, 3):
        np.testing.assert_array_equal(run.values("other/extra", s), extra[s])
    assert [float(run.values("other/overridden", s)) for s in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_references_are_let_go_once_the_writer_has_read_them(local_dir: str) -> None:
    """The hook keeps the last step's ReferenceBatch; once the writer has expanded it, the
    batch holds no tensor, so a step's activations do not outlive it."""
    import weakref

    torch.manual_seed(6)
    model = mlp(nn.ReLU)
    x, y = classification_data(128, (20,), 4)
    seen: list[weakref.ref[torch.Tensor]] = []
    hook = TorchHook(_run_dir(local_dir))
    model.register_forward_hook(lambda m, a, out: seen.append(weakref.ref(out)))
    train(model, hook, x, y, steps=6)
    hook.flush()
    assert hook._references is not None and hook._references.entries == []
    assert all(r() is None for r in seen[:-1])  # (the last output lives in the training loop's trace)
    hook.close()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradients_are_right_whether_zero_grad_replaces_or_zeroes_them(local_dir: str, set_to_none: bool) -> None:
    # With set_to_none=True the hook keeps references instead of copies; with False the
    # gradients are zeroed in place under the writer, so the hook must notice and copy.
    torch.manual_seed(5)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    seen = []
    with TorchHook(uri, config=CaptureConfig.full()).register(model, opt, nn.CrossEntropyLoss()) as hook:
        for step in range(6):
            opt.zero_grad(set_to_none=set_to_none)
            Fn.cross_entropy(model(x[step * 16 : step * 16 + 16]), y[step * 16 : step * 16 + 16]).backward()
            seen.append(model[0].weight.grad.detach().clone().numpy())
            opt.step()
        hook.flush()
    run = open_run(uri)
    stats = run.stats("gradients/0.weight")
    np.testing.assert_allclose(stats.field("sum"), [g.sum() for g in seen], rtol=1e-4, atol=1e-6)
    for step, g in enumerate(seen):
        np.testing.assert_array_equal(run.values("gradients/0.weight", step), g)
    assert hook._grads_reused is (not set_to_none)


@pytest.mark.parametrize("set_to_none", [True, False], ids=["fresh-grads", "grads-zeroed-in-place"])
def test_the_steady_state_hands_the_parameters_over_in_bulk(local_dir: str, set_to_none: bool) -> None:
    """Statistics every step, no values: once the helper thread copies and measures every
    weight, the optimizer's pre-hook hands the step's parameters to the writer as one bulk
    entry (gradients by reference, the copier's numbers), and every statistic still equals
    numpy's. Gradients zeroed in place are noticed as before and copied: never in bulk."""
    torch.manual_seed(7)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = classification_data(256, (20,), 4)
    config = CaptureConfig(values={c: SaveSchedule.never() for c in F.COLLECTIONS})
    uri = _run_dir(local_dir)
    grads: list[dict[str, np.ndarray]] = []
    weights: list[dict[str, np.ndarray]] = []
    bulk_steps: list[int] = []
    with TorchHook(uri, config=config).register(model, opt, nn.CrossEntropyLoss()) as hook:
        in_bulk = hook._add_parameters_in_bulk

        def counted(batch: Any, step: int, *args: Any) -> bool:
            taken = in_bulk(batch, step, *args)
            if taken:
                bulk_steps.append(step)
            return taken

        hook._add_parameters_in_bulk = counted  # type: ignore[method-assign]
        for s in range(10):
            opt.zero_grad(set_to_none=set_to_none)
            Fn.cross_entropy(model(x[s * 16 : s * 16 + 16]), y[s * 16 : s * 16 + 16]).backward()
            grads.append({k: p.grad.numpy().copy() for k, p in model.named_parameters()})  # type: ignore[union-attr]
            weights.append({k: p.detach().numpy().copy() for k, p in model.named_parameters()})
            opt.step()
            time.sleep(0.02)  # the helper thread copies while the training thread is away
    # Steps 0 and 1 take the per-parameter path (no copy was made for step 0, and step 1's copy
    # has no pooled copy before it to measure its update against); later ones go in bulk when
    # the helper's copy was ready in time (the sleep makes that the rule, not a certainty).
    if set_to_none:
        assert len(bulk_steps) >= 4 and min(bulk_steps) >= 2
    else:
        assert bulk_steps == []
    assert hook._grads_reused is (not set_to_none)
    run = open_run(uri)
    assert run.errors == []
    for pname in weights[0]:
        coll = "weights" if pname.endswith("weight") else "biases"
        for name, wanted in ((f"{coll}/{pname}", [w[pname] for w in weights]), (f"gradients/{pname}", [g[pname] for g in grads])):
            st = run.stats(name)
            assert st.mode_step.tolist() == list(range(10))
            for s, want in enumerate(wanted):
                assert_stats_equal(np.array([st.field(f)[s] for f in F.STAT_FIELDS]), F.numpy_stats(want))
        want_updates = [np.linalg.norm((weights[s][pname].astype(np.float64) - weights[s - 1][pname]).ravel()) for s in range(1, 10)]
        np.testing.assert_allclose(run.stats(f"updates/{pname}").field("sum"), want_updates, rtol=1e-5)


CFG_CASES = {
    "every-3": (CaptureConfig(values={"weights": SaveSchedule(every=3)}), [0, 3, 6]),
    "first-2": (CaptureConfig(values={"weights": SaveSchedule(every=None, first=2)}), [0, 1]),
    "start-end": (CaptureConfig(values={"weights": SaveSchedule(every=2, start=3, end=7)}), [4, 6]),
    "explicit": (CaptureConfig(values={"weights": SaveSchedule(every=None, steps=(1, 5))}), [1, 5]),
    "default": (CaptureConfig(), [0, 1]),
}


@pytest.mark.parametrize("case", list(CFG_CASES))
def test_value_schedules(local_dir: str, case: str) -> None:
    cfg, want = CFG_CASES[case]
    model = mlp(nn.ReLU)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=cfg) as hook:
        train(model, hook, x, y, steps=8)
    run = open_run(uri)
    assert run.value_steps("weights/0.weight").step.tolist() == want
    assert run.stats("weights/0.weight").step.tolist() == list(range(8))  # stats every step
    if case == "default":
        assert run.value_steps("labels/labels").step.tolist() == list(range(8))
        assert run.value_steps("losses/loss").step.tolist() == [0, 1]  # its stats carry it
        assert run.stats("losses/loss").step.tolist() == list(range(8))
        assert run.value_steps("inputs/model").step.tolist() == list(range(8))  # first 8 batches


def test_stats_schedule_and_modes(local_dir: str) -> None:
    # (a step whose values are saved always gets its statistics too: hence no gradient values)
    cfg = CaptureConfig(stats={"gradients": SaveSchedule(every=2)},
                        values={"losses": SaveSchedule(every=1, modes=("eval",)), "gradients": SaveSchedule.never()})
    model = mlp(nn.ReLU)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=cfg) as hook:
        train(model, hook, x, y, steps=4, eval_every=2, eval_batches=1)
    run = open_run(uri)
    assert run.stats("gradients/0.weight").mode_step.tolist() == [0, 2]
    vs = run.value_steps("losses/loss")
    assert set(vs.mode.tolist()) == {1} and len(vs) == 2


def test_include_exclude_and_module_types(local_dir: str) -> None:
    model = mlp_tanh_sigmoid()
    x, y = classification_data(128, (20,), 4)
    cfg = CaptureConfig(include=(r"^(weights|gradients|outputs|activation_inputs|losses)/",),
                        exclude=(r"\.bias$", r"^gradients/4\."), module_types=("Tanh", "Linear"))
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=cfg) as hook:
        train(model, hook, x, y, steps=2)
    run = open_run(uri)
    names = {t.name for t in run.tensors()}
    assert names == {
        "weights/0.weight", "weights/2.weight", "weights/4.weight",
        "gradients/0.weight", "gradients/2.weight",
        "outputs/0", "outputs/1", "outputs/2", "outputs/4",  # Linear and Tanh modules only
        "activation_inputs/1",  # Tanh yes, Sigmoid (module 3) no
        "losses/loss",
    }


def test_collections_subset(local_dir: str) -> None:
    model = mlp(nn.ReLU)
    x, y = classification_data(128, (20,), 4)
    uri = _run_dir(local_dir)
    with TorchHook(uri, config=CaptureConfig(collections=("losses", "gradients"))) as hook:
        train(model, hook, x, y, steps=2)
    assert set(open_run(uri).collections) == {"losses", "gradients"}


def test_hook_without_optimizer_each_forward_is_a_step(local_dir: str) -> None:
    torch.manual_seed(5)
    model = mlp(nn.ReLU)
    x, y = classification_data(64, (20,), 4)
    uri = _run_dir(local_dir)
    lf = nn.CrossEntropyLoss()
    hook = TorchHook(uri, config=CaptureConfig.full()).register(model, loss=lf)
    grads = []
    for s in range(4):
        model.zero_grad()
        lf(model(x[s * 8 : (s + 1) * 8]), y[s * 8 : (s + 1) * 8]).backward()
        grads.append(model[0].weight.grad.numpy().copy())
        with torch.no_grad():  # a hand-written SGD step
            for p in model.parameters():
                p -= 0.1 * p.grad
    hook.close()
    run = open_run(uri)
    assert run.steps().global_step.tolist() == [0, 1, 2, 3]
    _assert_values(run, "gradients/0.weight", grads)
    assert "weights/0.weight" not in {t.name for t in run.tensors()}  # read at optimizer steps only
    assert run.stats("losses/loss").step.tolist() == [0, 1, 2, 3]


def test_functional_loss_record_and_record_loss(local_dir: str) -> None:
    """Module hooks never see F.cross_entropy: record_loss / record_labels / record fill in."""
    torch.manual_seed(6)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = classification_data(64, (20,), 4)
    uri = _run_dir(local_dir)
    hook = TorchHook(uri, config=CaptureConfig.full()).register(model, optimizer=opt)
    losses, acc = [], []
    for s in range(3):
        opt.zero_grad()
        logits = model(x[s * 8 : (s + 1) * 8])
        loss = Fn.cross_entropy(logits, y[s * 8 : (s + 1) * 8])
        hook.record_loss(loss)
        hook.record_labels(y[s * 8 : (s + 1) * 8], logits)
        a = float((logits.argmax(1) == y[s * 8 : (s + 1) * 8]).float().mean())
        hook.record("metrics/accuracy", a, collection="metrics")
        hook.record("other/hidden", Fn.relu(logits))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        acc.append(a)
    hook.close()
    run = open_run(uri)
    assert run.errors == []
    np.testing.assert_allclose(run.stats("losses/loss").field("sum"), losses, rtol=1e-6)
    np.testing.assert_allclose(run.stats("metrics/accuracy").field("sum"), acc)
    assert run.stats("losses/loss").step.tolist() == [0, 1, 2]
    assert run.values("labels/labels", 1).tolist() == y[8:16].tolist()
    assert run.tensor("predictions/predictions").dtype == "int64"
    assert run.stats("other/hidden").step.tolist() == [0, 1, 2]


def test_explicit_mode(local_dir: str) -> None:
    model = mlp(nn.ReLU)
    x, _ = classification_data(64, (20,), 4)
    uri = _run_dir(local_dir)
    hook = TorchHook(uri).register(model)
    hook.set_mode("predict")
    with torch.no_grad():
        for s in range(3):
            model(x[s * 8 : (s + 1) * 8])
    hook.close()
    run = open_run(uri)
    assert run.modes == ["predict"] and run.steps().mode_step.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode must be one of"):
        hook.set_mode("testing")


def test_resume_continues_the_run(local_dir: str) -> None:
    torch.manual_seed(7)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    cfg = CaptureConfig.full()
    with TorchHook(uri, config=cfg) as hook:
        tr1 = train(model, hook, x, y, steps=4, eval_every=4, eval_batches=1, optimizer=opt)
    first = open_run(uri)
    assert first.committed_steps() == 5
    # The job restarts (a new hook, same URI and rank) and trains on.
    with TorchHook(uri, config=cfg) as hook:
        assert hook.step == 5
        tr2 = train(model, hook, x, y, steps=3, optimizer=opt)
    run = open_run(uri)
    assert run.status == "complete" and run.errors == []
    st = run.steps()
    assert st.global_step.tolist() == list(range(8))
    assert st.mode.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert st.mode_step.tolist() == [0, 1, 2, 3, 0, 4, 5, 6]  # train steps continue at 4
    _assert_values(run, "gradients/0.weight", [g["0.weight"] for g in tr1.grads + tr2.grads])
    # updates continue across the restart only once two consecutive steps are seen again
    assert run.stats("updates/0.weight").mode_step.tolist() == [1, 2, 3, 5, 6]


def test_two_ranks_write_their_own_groups(local_dir: str) -> None:
    """DDP-style: two ranks (here two hooks in one process) write one run URI."""
    uri = _run_dir(local_dir)
    x, y = classification_data(256, (20,), 4)
    models = [mlp(nn.ReLU) for _ in range(2)]
    hooks = [TorchHook(uri, rank=r, world_size=2, config=CaptureConfig.full()) for r in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    lfs = [nn.CrossEntropyLoss() for _ in range(2)]  # each rank (process) has its own
    for h, m, o, lf in zip(hooks, models, opts, lfs, strict=True):
        h.register(m, optimizer=o, loss=lf)
    grads: list[list[np.ndarray]] = [[], []]
    for s in range(4):
        for r in range(2):  # each rank its own shard of the batch
            xb, yb = x[(2 * s + r) * 8 : (2 * s + r + 1) * 8], y[(2 * s + r) * 8 : (2 * s + r + 1) * 8]
            opts[r].zero_grad()
            lfs[r](models[r](xb), yb).backward()
            grads[r].append(models[r][0].weight.grad.numpy().copy())
            opts[r].step()
    for h in hooks:
        h.close()
    run = open_run(uri)
    assert run.ranks == [0, 1] and run.status == "complete"
    assert run.attrs["world_size"] == 2
    for r in range(2):
        assert run.steps(rank=r).global_step.tolist() == [0, 1, 2, 3]
        assert all(t.rank == r for t in run.tensors(rank=r))
        for s in range(4):
            np.testing.assert_array_equal(run.values("gradients/0.weight", s, rank=r), grads[r][s])
    assert not np.array_equal(run.values("gradients/0.weight", 0, rank=0), run.values("gradients/0.weight", 0, rank=1))


def test_stop_request_reaches_the_training_loop(local_dir: str) -> None:
    uri = _run_dir(local_dir)
    model = mlp(nn.ReLU)
    x, y = classification_data(256, (20,), 4)
    hook = TorchHook(uri, config=CaptureConfig(flush_steps=1, flush_seconds=0.05))
    seen = []

    def on_step(step: int) -> None:
        if step == 2:
            hook.flush()  # the run exists; a watcher asks it to stop
            request_stop(uri, reason="loss is NaN")
        seen.append(hook.stop_requested)

    train(model, hook, x, y, steps=6, on_step=on_step)
    hook.flush()  # the writer polls the stop marker after each flush
    assert hook.stop_requested and hook.stop_reason == "loss is NaN"
    hook.close()
    assert open_run(uri).status == "complete"
    assert not any(seen[:3])


# ------------------------------------------------------------------ how tensors reach the writer


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_activations_are_read_as_they_were_captured(local_dir: str, device: str) -> None:
    """A Linear output that ``ReLU(inplace=True)`` overwrites in the same forward pass must be
    stored as the Linear produced it: the hook notices the in-place change on its first steps
    and copies that tensor from then on; nothing is dropped or recorded wrong."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(inplace=True), nn.Linear(32, 4)).to(device)
    x, y = (t.to(device) for t in classification_data(256, (20,), 4))
    uri = _run_dir(local_dir)
    hook = TorchHook(uri, config=CaptureConfig.full())
    tr = train(model, hook, x, y, steps=8)
    assert len(model[1]._forward_pre_hooks) == 1  # the input of an in-place activation: before the call
    hook.close()
    run = open_run(uri)
    assert run.errors == []
    assert hook._policies["outputs/0"].copy  # learnt: this name is changed in place
    assert not hook._policies["outputs/2"].copy and hook._policies["outputs/2"].probes_left == 0  # passed by reference
    for s in range(8):
        w, b = tr.weights[s]["0.weight"], tr.weights[s]["0.bias"]
        pre = tr.inputs[s].reshape(len(tr.inputs[s]), -1) @ w.T + b
        np.testing.assert_allclose(run.values("outputs/0", s), pre, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.values("activation_inputs/1", s), pre, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.values("outputs/1", s), np.maximum(pre, 0), rtol=1e-5, atol=1e-6)
    _assert_values(run, "outputs/2", tr.logits)


class _Blocking:
    """A payload whose resolve waits for the test: holds the writer thread still."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self.started.set()
        self.release.wait(30)
        return F.numpy_stats(np.zeros(1)), None


def test_a_tensor_changed_in_place_later_is_never_stored_wrong(local_dir: str) -> None:
    """Two ways a tensor passed by reference can change before the writer reads it:
    ``buffer`` is overwritten in place every step from the start (the hook's probes notice
    within two steps and copy it, so nothing is lost); ``late`` is a fresh tensor for five
    steps (so it goes by reference) and then a buffer overwritten in place, while the writer
    is held up: the writer's own check drops that one reading, records why, and the name is
    copied from then on."""
    torch.manual_seed(4)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    buffer, late = torch.zeros(16, 4), torch.zeros(16, 4)
    seen_buffer: list[np.ndarray] = []
    seen_late: dict[int, np.ndarray] = {}
    hook = TorchHook(uri, config=CaptureConfig.full()).register(model, opt, nn.CrossEntropyLoss())
    blocker = _Blocking()
    for s in range(10):
        opt.zero_grad()
        out = model(x[s * 16 : s * 16 + 16])
        if s == 5:
            hook.recorder.add("other/blocker", "other", blocker, values=False)  # the writer stalls on step 5
        with torch.no_grad():
            buffer.copy_(out)  # the same memory every step, overwritten in place
            if s < 5:
                fresh = out.detach() * 2  # a new tensor each step
                hook.record("other/late", fresh, collection="other")
                seen_late[s] = fresh.numpy().copy()
            else:
                late.copy_(out * 2)
                hook.record("other/late", late, collection="other")
                seen_late[s] = late.numpy().copy()
        hook.record("other/buffer", buffer, collection="other")
        seen_buffer.append(buffer.numpy().copy())
        Fn.cross_entropy(out, y[s * 16 : s * 16 + 16]).backward()
        if s == 6:  # step 5 went to the writer when this backward pass began
            assert blocker.started.wait(10)
        opt.step()
        if s == 6:
            blocker.release.set()  # step 6 overwrote `late` before the writer read step 5
            hook.flush()  # (and step 6's reading is taken before step 7 overwrites it)
    hook.close()
    run = open_run(uri)
    for s in range(10):
        np.testing.assert_array_equal(run.values("other/buffer", s), seen_buffer[s])
    assert hook._policies["other/buffer"].copy
    late_steps = run.stats("other/late").step.tolist()
    assert 5 not in late_steps and late_steps == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    for s in late_steps:
        np.testing.assert_array_equal(run.values("other/late", s), seen_late[s])
    errors = [e for e in run.errors if e.get("tensor") == "other/late"]
    assert len(errors) == 1 and "step 5" in errors[0]["message"] and "changed in place" in errors[0]["message"]
    assert hook._policies["other/late"].copy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss_module", [True, False], ids=["loss-module", "functional-loss"])
def test_steps_reach_the_writer_when_the_next_backward_begins(local_dir: str, loss_module: bool, device: str) -> None:
    """The hook holds each step back until the next backward pass begins (the writer's
    Python work then overlaps autograd, which runs without the GIL): when autograd starts on
    the registered loss module's output, else when it reaches the model's output; or at the
    end of a forward pass no backward follows or none is expected (eval mode). flush() and
    close() hand over the rest."""
    torch.manual_seed(2)
    model = mlp(nn.ReLU).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    x, y = (t.to(device) for t in classification_data(64, (20,), 4))
    uri = _run_dir(local_dir)
    with TorchHook(uri).register(model, opt, loss_fn if loss_module else None) as hook:
        writer = hook.recorder.writer

        def loss_of(out: torch.Tensor) -> torch.Tensor:
            return loss_fn(out, y) if loss_module else Fn.cross_entropy(out, y)

        opt.zero_grad()
        loss_of(model(x)).backward()
        opt.step()
        assert writer.holding_steps  # step 0 waits for the next backward
        opt.zero_grad()
        out = model(x)
        assert writer.holding_steps
        loss = loss_of(out)
        assert writer.holding_steps  # (with a loss module too: not before backward() starts)
        loss.backward()
        assert not writer.holding_steps  # released as backward began
        opt.step()
        assert writer.holding_steps
        with torch.no_grad():
            model(x)  # no backward can follow: released at the end of the forward pass
        assert not writer.holding_steps
        opt.zero_grad()
        loss_of(model(x)).backward()
        opt.step()
        assert writer.holding_steps
        model.eval()
        loss_of(model(x))  # an eval pass that left gradients on: no backward is expected
        assert not writer.holding_steps
        model.train()
        hook.flush()
        assert not writer.holding_steps
        assert open_run(uri).committed_steps() == 4  # three train steps, one eval step


def test_a_registered_loss_module_that_is_not_called_does_not_hold_steps_back(local_dir: str) -> None:
    """A loss module registered but never called (the loop uses a functional loss): after one
    step the hook stops waiting for it and releases steps as backward begins."""
    torch.manual_seed(2)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = classification_data(64, (20,), 4)
    with TorchHook(_run_dir(local_dir)).register(model, opt, nn.CrossEntropyLoss()) as hook:
        for _ in range(3):
            opt.zero_grad()
            loss = Fn.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        opt.zero_grad()
        loss = Fn.cross_entropy(model(x), y)
        assert hook.recorder.writer.holding_steps
        loss.backward()
        assert not hook.recorder.writer.holding_steps


@pytest.mark.parametrize("extension", [True, False], ids=["C-pass", "no-extension"])
def test_weights_are_copied_off_the_training_thread_and_checked(local_dir: str, extension: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given time between steps, the helper thread makes the weight copies (with their
    statistics and update norms, in one C pass when the extension is built); a max-norm
    constraint applied after ``optimizer.step()`` changes weights in the window, and those
    copies are refused and remade."""
    if not extension:
        from trainaudit.capture import _compat

        monkeypatch.setattr(_compat, "_fastats", None)
    torch.manual_seed(6)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    used: list[dict[str, np.ndarray]] = []
    with TorchHook(uri, config=CaptureConfig.full()).register(model, opt, nn.CrossEntropyLoss()) as hook:
        for s in range(10):
            opt.zero_grad()
            Fn.cross_entropy(model(x[s * 16 : s * 16 + 16]), y[s * 16 : s * 16 + 16]).backward()
            used.append({k: p.detach().numpy().copy() for k, p in model.named_parameters()})
            opt.step()
            time.sleep(0.02)  # the helper thread copies while the training thread is away
            if s % 3 == 2:
                with torch.no_grad():
                    model[0].weight.clamp_(-0.2, 0.2)  # in place, after the copy was made
        copier = hook._copier
    assert copier.taken > 0 and copier.missed > 0
    run = open_run(uri)
    assert run.errors == []
    for name in ("0.weight", "0.bias", "2.weight", "4.bias"):
        coll = "weights" if name.endswith("weight") else "biases"
        _assert_values(run, f"{coll}/{name}", [u[name] for u in used])
        np.testing.assert_allclose(run.stats(f"{coll}/{name}").field("sumsq"), [float(np.sum(u[name].astype(np.float64) ** 2)) for u in used], rtol=1e-5)
        upd = run.stats(f"updates/{name}")
        want = [np.linalg.norm((used[s][name].astype(np.float64) - used[s - 1][name]).ravel()) for s in range(1, 10)]
        np.testing.assert_allclose(upd.field("sum"), want, rtol=1e-5)


def test_the_copier_reuses_its_buffers_while_the_writer_lags(local_dir: str) -> None:
    """Under the defaults a step whose weight values are not due hands the writer only the
    numbers the copy pass measured, not the copy: a writer several steps behind holds no
    buffer of the copier's, which keeps reusing the same few (a fresh allocation costs a page
    fault per 4 KiB, and the training thread waited for it in the next step's pre-hook)."""
    from trainaudit.capture._config import DEFAULT_FIRST_STEPS
    from trainaudit.capture._torch_params import ParameterCopy

    torch.manual_seed(4)
    model = mlp(nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = classification_data(64, (20,), 4)
    gate = threading.Event()
    outside_pool: list[str] = []
    uri = _run_dir(local_dir)
    with TorchHook(uri).register(model, opt, nn.CrossEntropyLoss()) as hook:
        copier, writer = hook._copier, hook.recorder.writer
        take = copier.take

        def checked_take(step: int) -> dict[str, ParameterCopy]:
            copies = take(step)
            outside_pool.extend(name for name, c in copies.items()
                                if not any(buf is c.tensor for buf, _ in copier._pools.get(name, ())))
            return copies

        copier.take = checked_take  # type: ignore[method-assign]
        resolve = writer._resolve

        def stalled_resolve(rec: Any) -> Any:
            gate.wait(30.0)
            return resolve(rec)

        steps = DEFAULT_FIRST_STEPS + 12
        for s in range(steps):
            if s == DEFAULT_FIRST_STEPS + 1:  # the steps with values are written: now stall the writer
                hook.flush()
                writer._resolve = stalled_resolve  # type: ignore[method-assign]
            opt.zero_grad()
            Fn.cross_entropy(model(x), y).backward()
            opt.step()
            time.sleep(0.02)  # the helper thread copies while the training thread is away
        gate.set()
        # Most of the 13 scheduled copies are taken (the sleep gives the helper time; one it
        # did not start in time is made by the hook, and proves nothing either way).
        assert copier.taken >= 8 * len(list(model.parameters()))
    assert outside_pool == []
    run = open_run(uri)
    assert run.errors == [] and run.committed_steps() == steps


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread priorities are a Linux feature")
def test_capture_threads_run_below_the_training_thread(local_dir: str) -> None:
    from trainaudit.capture._compat import THREAD_NICENESS

    torch.manual_seed(0)
    model = mlp(nn.ReLU)
    x, y = classification_data(64, (20,), 4)
    with TorchHook(_run_dir(local_dir)) as hook:
        train(model, hook, x, y, steps=3)
        hook.flush()
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        niceness = {t.name.split("-")[1]: os.getpriority(os.PRIO_PROCESS, t.native_id or 0)
                    for t in threading.enumerate() if t.name.startswith("trainaudit-")}
    low = min(19, mine + THREAD_NICENESS)
    assert niceness == {"writer": low, "params": low, "store": low}


class _FakeSlot:
    def __init__(self, name: str, collection: str = "outputs") -> None:
        self.name, self.collection, self.meta, self.policy = name, collection, {"m": name}, CopyPolicy()


def test_reference_batch_reads_its_tensors_in_bulk() -> None:
    """What the writer gets from a step's references (``ReferenceBatch.resolve_rows``): the
    statistics of every tensor whose values are not due, in the order added, one tensor under
    two names read once; values that are due, other dtypes and non-contiguous tensors left as
    items; a tensor changed in place after the hook saw it left out, with an error, and its
    name copied from then on."""
    from trainaudit.capture._torch_snapshot import ArgmaxPayload, ReferenceBatch, TorchPayload

    g = torch.Generator().manual_seed(0)
    out1, out2, scores = torch.randn(64, 32, generator=g), torch.randn(64, 8, generator=g), torch.randn(64, 10, generator=g)
    labels, wide = torch.randint(0, 10, (64,), generator=g), torch.randn(8, 64, generator=g).t()
    changed, half = torch.randn(100, generator=g), torch.randn(5, generator=g).half()
    negated, sparse = torch._neg_view(torch.randn(6, generator=g)), torch.eye(3).to_sparse()
    batch = ReferenceBatch()
    slots = {n: _FakeSlot(n) for n in ["a", "act", "b", "labels", "preds", "wide", "changed", "half", "due", "neg", "sparse"]}
    batch.add(slots["a"], out1, out1._version, False, TorchPayload)
    batch.add(slots["act"], out1, out1._version, False, TorchPayload)  # the same tensor, another name
    batch.add(slots["b"], out2, out2._version, False, TorchPayload)
    batch.add(slots["labels"], labels, labels._version, False, TorchPayload)
    batch.add(slots["preds"], scores, scores._version, False, ArgmaxPayload)
    batch.add(slots["wide"], wide, wide._version, False, TorchPayload)
    batch.add(slots["changed"], changed, changed._version, False, TorchPayload)
    batch.add(slots["half"], half, half._version, False, TorchPayload)
    batch.add(slots["due"], out2, out2._version, True, TorchPayload)
    batch.add(slots["neg"], negated, negated._version, False, TorchPayload)  # memory holds -values
    batch.add(slots["sparse"], sparse, sparse._version, False, TorchPayload)
    batch.discard("b")
    batch.add(slots["b"], out2, out2._version, False, TorchPayload)  # added again after a discard
    changed.mul_(2)  # after the hook saw it, before the writer reads it

    rows = batch.resolve_rows()
    assert rows.names == ["a", "act", "labels", "b"]
    assert [k[1] for k in rows.kinds] == [{"m": n} for n in rows.names]
    for name, t in zip(rows.names, [out1, out1, labels, out2], strict=True):
        assert_stats_equal(rows.stats[rows.names.index(name)], F.numpy_stats(t.numpy()))
    assert [(item.name, item.values, type(item.payload).__name__) for item in rows.rest] == [
        ("preds", False, "ArgmaxPayload"), ("wide", False, "TorchPayload"), ("half", False, "TorchPayload"),
        ("due", True, "TorchPayload"), ("neg", False, "TorchPayload"), ("sparse", False, "TorchPayload")]
    assert [name for name, _ in rows.errors] == ["changed"] and "changed in place" in rows.errors[0][1]
    assert slots["changed"].policy.copy and not slots["a"].policy.copy
    assert batch.entries == [] and batch.index == {}  # the batch let go of its tensors


def test_parameter_batch_reads_gradients_in_bulk_and_takes_known_statistics() -> None:
    from trainaudit.capture._torch_params import ParameterCopy
    from trainaudit.capture._torch_snapshot import ParameterBatch

    g = torch.Generator().manual_seed(1)
    grad, weight, values_grad = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g), torch.randn(7, generator=g)
    known = tuple(float(v) for v in F.numpy_stats(weight.numpy()))
    batch = ParameterBatch()
    policy = CopyPolicy()
    batch.entries += [
        ("gradients/w", "gradients", {"p": "w"}, False, "ref", grad, grad._version, policy),
        ("weights/w", "weights", {"p": "w"}, False, "owned", ParameterCopy(weight, known, 4.0), None),
        ("updates/w", "updates", {"p": "w"}, False, "scalar", 2.0, None),
        ("biases/w", "biases", {"p": "w"}, False, "stats", known, None),
        ("gradients/v", "gradients", {"p": "v"}, True, "ref", values_grad, values_grad._version, policy),
        ("weights/v", "weights", {"p": "v"}, False, "owned", ParameterCopy(weight.clone()), None),
    ]
    rows = batch.resolve_rows()
    assert rows.names == ["gradients/w", "weights/w", "updates/w", "biases/w"] and rows.errors == []
    assert_stats_equal(rows.stats[0], F.numpy_stats(grad.numpy()))
    np.testing.assert_array_equal(rows.stats[1], known)
    np.testing.assert_array_equal(rows.stats[2], F.scalar_stats(2.0))
    np.testing.assert_array_equal(rows.stats[3], known)
    assert [item.name for item in rows.rest] == ["gradients/v", "weights/v"]  # values due; no statistics yet
    assert batch.entries == []


def test_parameter_statistics_at_every_step_under_the_defaults(local_dir: str) -> None:
    """Under the defaults (statistics every step, values only now and then) the writer reads the
    gradients in bulk from their memory and takes the weights' statistics and update norms from
    the copier's pass (or, where a copy was not ready, from the hook's own copy): at every step
    they equal numpy's on the trained values."""
    torch.manual_seed(3)
    model = mlp(nn.ReLU)
    x, y = classification_data(256, (20,), 4)
    uri = _run_dir(local_dir)
    hook = TorchHook(uri)
    tr = train(model, hook, x, y, steps=12)
    hook.close()
    run = open_run(uri)
    assert run.errors == []
    for pname in tr.weights[0]:
        coll = "weights" if pname.endswith("weight") else "biases"
        for name, wanted in ((f"{coll}/{pname}", [w[pname] for w in tr.weights]),
                             (f"gradients/{pname}", [g[pname] for g in tr.grads])):
            st = run.stats(name)
            assert st.mode_step.tolist() == list(range(12))
            for s, want in enumerate(wanted):
                assert_stats_equal(np.array([st.field(f)[s] for f in F.STAT_FIELDS]), F.numpy_stats(want))
        updates = run.stats(f"updates/{pname}")
        want_updates = [np.linalg.norm((tr.weights[s][pname].astype(np.float64) - tr.weights[s - 1][pname]).ravel())
                        for s in range(1, 12)]
        assert updates.mode_step.tolist() == list(range(1, 12))
        np.testing.assert_allclose(updates.field("sum"), want_updates, rtol=1e-5)
