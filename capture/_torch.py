"""PyTorch capture: :class:`TorchHook`.

What the training thread pays, per captured tensor and step, on CPU: mostly nothing. Module
outputs, inputs and gradients go to the writer by reference, checked against their version
counters (``_torch_snapshot``: a name whose tensors are changed in place is copied instead);
weights, which the optimizer changes in place, are copied by a helper thread while the next
step's forward pass runs (``_torch_params``). On CUDA: a handful of asynchronous reductions
and, when full values are due, one asynchronous copy into pinned host memory. Statistics,
numpy conversion and store I/O all happen on the writer thread. No ``.cpu()`` and no device
synchronisation happen on the training thread.

Steps and modes:

* With an optimizer registered, a **train step is an optimizer step**: everything recorded
  between two ``optimizer.step()`` calls belongs to one step (gradient accumulation works: a
  tensor recorded by several micro-batches keeps its last value). Gradients and weights are
  read in the optimizer's step pre-hook, so they are the accumulated gradients and the weights
  this step's forward pass used.
* Without one, each forward call of the registered model starts a new step, and gradients are
  read by ``register_post_accumulate_grad_hook`` when ``backward()`` produces them.
* In ``eval`` and ``predict`` mode each forward call of the model is a step. The mode follows
  ``model.training`` (train / eval) unless :meth:`TorchHook.set_mode` fixed it.

Module hooks see module boundaries only: functional calls (``F.relu``) are invisible to them;
record such tensors with :meth:`TorchHook.record`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from . import _format as F
from ._config import CaptureConfig
from ._recorder import Recorder
from ._torch_params import ParameterCopier, ParameterCopy
from ._torch_snapshot import CopyPolicy, ScalarPayload, TorchPayload, UpdatePayload, torch_stats
from ._writer import Payload

__all__ = ["TorchHook", "torch_stats"]

log = logging.getLogger("trainaudit.capture")

#: Modules whose inputs go into ``activation_inputs`` (the saturation and dead-unit rules).
ACTIVATIONS: Mapping[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
    nn.ELU: "elu",
}

class TorchHook:
    """Capture a PyTorch training run into a trainaudit run.

    Args:
        uri: where the run goes (local path, ``file://``, ``s3://bucket/prefix``, ``memory://``).
        config: what to save and how often (:class:`CaptureConfig` defaults when None).
        run_id: defaults to the last part of ``uri``.
        rank, world_size: default to ``torch.distributed``'s when it is initialised; each rank
            writes its own group of the run.
        storage_options: s3fs options (endpoint, credentials).

    Example::

        hook = TorchHook("s3://bucket/runs/exp1")
        hook.register(model, optimizer=opt, loss=loss_fn)
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
            if hook.stop_requested:  # a watcher asked to stop (trainaudit watch --stop)
                break
        hook.close()
    """

    def __init__(
        self,
        uri: str,
        *,
        config: CaptureConfig | None = None,
        run_id: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if rank is None or world_size is None:
            dist_rank, dist_world = _dist_rank_world()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        self.recorder = Recorder(
            uri,
            framework="pytorch",
            config=config,
            rank=rank,
            world_size=world_size,
            run_id=run_id,
            storage_options=storage_options,
            extra_attrs={"torch_version": torch.__version__},
        )
        self.config = self.recorder.config
        self.uri = self.recorder.uri
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._explicit_mode: str | None = None
        self._handles: list[Any] = []
        self._depth: dict[str, int] = {}
        self._module_type: dict[str, str] = {}
        self._params: list[tuple[str, nn.Parameter, str]] = []  # (name, param, module name)
        self._param_meta: dict[str, dict[str, Any]] = {}
        self._prev_weights: dict[str, tuple[int, torch.Tensor]] = {}
        self._last_grad: dict[str, torch.Tensor] = {}
        self._grads_reused = False
        self._wants: dict[tuple[str, str], bool] = {}
        self._policies: dict[str, CopyPolicy] = {}
        self._module_tensors: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        # Copied tensors whose originals are watched for in-place changes (see CopyPolicy):
        # those captured before the last forward pass began, and those since.
        self._probes_old: list[tuple[CopyPolicy, torch.Tensor, int]] = []
        self._probes_new: list[tuple[CopyPolicy, torch.Tensor, int]] = []
        # One tensor captured under two names in a step (a conv's output is the next ReLU's
        # input) gets one payload, so its statistics are computed once.
        self._step_payloads: dict[tuple[Any, ...], TorchPayload] = {}
        self._step_stamp: tuple[int, str] | None = None
        self._copier = ParameterCopier(f"trainaudit-params-{self.recorder.writer.run_id}")
        self._closed = False

    # ------------------------------------------------------------------ registration
    def register(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, loss: nn.Module | None = None) -> TorchHook:
        """Hook ``model`` (and ``optimizer``, and a loss module) for capture. Returns self."""
        self.model = model
        self.optimizer = optimizer
        module_name = {m: n for n, m in model.named_modules()}
        types = set(self.config.module_types)
        self._handles.append(model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        # Steps reach the writer thread when a forward pass ends, so its Python work overlaps
        # backward(), which runs without the GIL (RunWriter.hold_steps).
        self.recorder.writer.hold_steps()
        self._handles.append(model.register_forward_hook(self._on_model_forward_end))
        for name, m in model.named_modules():
            self._module_type[name] = type(m).__name__
            if m is model and list(m.children()):
                continue
            if types and type(m).__name__ not in types:
                continue
            act = _activation(m)
            if act is not None:
                self._handles.append(m.register_forward_pre_hook(partial(self._on_activation_input, name, act)))
            if isinstance(m, nn.Embedding):
                self._handles.append(m.register_forward_pre_hook(partial(self._on_tokens, name)))
            if not list(m.children()):
                self._handles.append(m.register_forward_hook(partial(self._on_module_output, name, act)))
        for pname, p in model.named_parameters():
            owner = pname.rsplit(".", 1)[0] if "." in pname else ""
            self._params.append((pname, p, owner))
            mod = model.get_submodule(owner) if owner else model
            meta: dict[str, Any] = {"module": owner, "module_type": type(mod).__name__, "param": pname.rsplit(".", 1)[-1]}
            if p.ndim >= 2:
                meta["fan_in"] = int(p.shape[1] * math.prod(p.shape[2:]))
                meta["fan_out"] = int(p.shape[0] * math.prod(p.shape[2:]))
            self._param_meta[pname] = meta
            if optimizer is None and p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(partial(self._on_grad, pname)))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(optimizer.register_step_post_hook(self._on_optimizer_post))
        if loss is not None:
            self._handles.append(loss.register_forward_hook(self._on_loss))
        del module_name
        return self

    # ------------------------------------------------------------------ public API
    def set_mode(self, mode: str | None) -> None:
        """Fix the mode (``train``, ``eval``, ``predict``); ``None`` follows ``model.training``."""
        if mode is not None and mode not in F.MODES:
            raise ValueError(f"mode must be one of {F.MODES} or None, got {mode!r}")
        self._explicit_mode = mode
        if mode is not None:
            self.recorder.set_mode(mode)

    def record(self, name: str, value: Any, *, collection: str = "other", mode: str | None = None, meta: Mapping[str, Any] | None = None) -> None:
        """Record a tensor (or number) yourself, e.g. a loss computed with ``F.cross_entropy``.
        It joins the current step. Never raises."""
        try:
            if mode is not None and mode != self.recorder.mode:
                self.recorder.set_mode(mode)
            if isinstance(value, torch.Tensor):
                self._capture(name, collection, value, meta)
            else:
                self.recorder.record(name, value, collection=collection, meta=meta)
        except Exception as exc:
            self._error(name, exc)

    def record_loss(self, loss: torch.Tensor | float, name: str = "loss") -> None:
        """Record the loss of the current step (train or eval)."""
        self.record(f"losses/{name}", loss, collection="losses")

    def record_labels(self, labels: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        """Record labels (class ids) and, optionally, predictions (class ids or scores)."""
        self.record("labels/labels", labels, collection="labels")
        if predictions is not None:
            self._record_predictions(predictions)

    @property
    def step(self) -> int:
        """The current global step."""
        return self.recorder.global_step

    @property
    def stop_requested(self) -> bool:
        """True once a watcher wrote a stop request into the run; the training loop should
        then finish its step, call :meth:`close` and return."""
        return self.recorder.stop_requested

    @property
    def stop_reason(self) -> str | None:
        return self.recorder.writer.stop_reason

    def flush(self) -> None:
        self.recorder.flush()

    def close(self) -> None:
        """Remove the hooks, flush, and mark the run complete. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            try:
                h.remove()
            except Exception:
                pass
        self._handles.clear()
        self._copier.close()
        self._prev_weights.clear()
        self._last_grad.clear()
        self._probes_old.clear()
        self._probes_new.clear()
        self._step_payloads.clear()
        self.recorder.close()

    def __enter__(self) -> TorchHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hooks (training thread)
    def _capture(self, name: str, collection: str, t: torch.Tensor, meta: Mapping[str, Any] | None, *, how: str | None = None) -> TorchPayload | None:
        """Snapshot ``t`` into the current step if its schedule says so; returns the payload.

        ``how`` is a :class:`TorchPayload` hand-over; None lets the name's :class:`CopyPolicy`
        choose between a reference and a copy.
        """
        if not self._wanted(collection, name):
            return None
        rec = self.recorder
        stats_due, values_due = self.config.due(collection, rec.mode, rec.mode_step)
        if not (stats_due or values_due):
            return None
        policy = None
        if not t.is_cuda and how != "owned":
            policy = self._policies.get(name)
            if policy is None:
                policy = self._policies[name] = CopyPolicy()
            if policy.copy or t.is_inference():  # inference tensors have no version counter
                how = "copy"
            elif how is None:
                how = "copy" if policy.probes_left > 0 else "ref"
                if how == "copy":
                    self._probes_new.append((policy, t, t._version))
        payload = self._shared_payload(t, values_due, how or "copy", policy)
        rec.add(name, collection, payload, values=values_due, meta=meta)
        return payload

    def _wanted(self, collection: str, name: str) -> bool:
        key = (collection, name)
        wants = self._wants.get(key)
        if wants is None:
            wants = self._wants[key] = self.config.wants(collection, name)
        return wants

    def _shared_payload(self, t: torch.Tensor, values: bool, how: str, policy: CopyPolicy | None) -> TorchPayload:
        if how != "ref" or t.is_cuda:
            return TorchPayload(t, values=values, how=how, policy=policy)
        # Only references are shared: a reference keeps its tensor alive, so no other tensor
        # of this step can have the same memory (a freed copy's could be reused).
        stamp = (self.recorder.global_step, self.recorder.mode)
        if stamp != self._step_stamp:
            self._step_payloads.clear()
            self._step_stamp = stamp
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype, t._version)
        payload = self._step_payloads.get(key)
        if payload is None:
            payload = self._step_payloads[key] = TorchPayload(t, values=values, how=how, policy=policy)
        return payload

    def _check_probes(self) -> None:
        """Settle the copy policies of tensors captured before the previous forward pass."""
        for policy, t, version in self._probes_old:
            if t._version != version:
                policy.copy = True
            elif policy.probes_left > 0:
                policy.probes_left -= 1
        self._probes_old, self._probes_new = self._probes_new, []

    def _on_model_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._check_probes()
            rec = self.recorder
            mode = self._explicit_mode or ("train" if module.training else "eval")
            if mode != rec.mode:
                rec.set_mode(mode)
            elif mode != "train" or self.optimizer is None:
                rec.end_step()  # each forward pass is a step
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if isinstance(x, torch.Tensor):
                coll = "inputs" if x.is_floating_point() else "tokens"
                self._capture(f"{coll}/model", coll, x, {"module": "", "module_type": type(module).__name__})
        except Exception as exc:
            self._error("forward", exc)

    def _on_model_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        try:
            self.recorder.writer.release()
        except Exception as exc:
            self._error("forward", exc)

    def _module_tensor(self, collection: str, name: str, act: str | None) -> tuple[str, dict[str, Any]]:
        """The tensor name and metadata of a module's output or activation input (built once:
        the hooks run for every module at every step)."""
        key = (collection, name)
        cached = self._module_tensors.get(key)
        if cached is None:
            meta: dict[str, Any] = {"module": name, "module_type": self._module_type[name], "depth": self._depth_of(name)}
            if act:
                meta["activation"] = act
            cached = self._module_tensors[key] = (f"{collection}/{name}", meta)
        return cached

    def _depth_of(self, name: str) -> int:
        d = self._depth.get(name)
        if d is None:
            d = self._depth[name] = len(self._depth)
        return d

    def _on_module_output(self, name: str, act: str | None, module: nn.Module, inputs: Any, output: Any) -> None:
        try:
            tname, meta = self._module_tensor("outputs", name, act)
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                self._capture(tname, "outputs", output, meta)
        except Exception as exc:
            self._error(f"outputs/{name}", exc)

    def _on_activation_input(self, name: str, act: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        # A pre-hook: an in-place activation (ReLU(inplace=True)) has not overwritten it yet.
        try:
            if args and isinstance(args[0], torch.Tensor):
                tname, meta = self._module_tensor("activation_inputs", name, act)
                self._capture(tname, "activation_inputs", args[0], meta)
        except Exception as exc:
            self._error(f"activation_inputs/{name}", exc)

    def _on_tokens(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        try:
            if args and isinstance(args[0], torch.Tensor):
                meta = {"module": name, "module_type": "Embedding", "padding_idx": getattr(module, "padding_idx", None)}
                self._capture(f"tokens/{name}", "tokens", args[0], meta)
        except Exception as exc:
            self._error(f"tokens/{name}", exc)

    def _on_loss(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        try:
            if isinstance(output, torch.Tensor) and output.numel() == 1:
                self._capture("losses/loss", "losses", output, {"module_type": type(module).__name__})
            if len(inputs) >= 2 and isinstance(inputs[1], torch.Tensor):
                target = inputs[1]
                if not target.is_floating_point():
                    self._capture("labels/labels", "labels", target, None)
                    if isinstance(inputs[0], torch.Tensor):
                        self._record_predictions(inputs[0])
        except Exception as exc:
            self._error("losses/loss", exc)

    def _record_predictions(self, scores: torch.Tensor) -> None:
        # Class ids, not scores: 8 bytes per sample instead of 4 x num_classes; argmax is one
        # tiny (asynchronous on GPU) kernel.
        preds = scores.detach()
        if preds.is_floating_point() and preds.ndim >= 2:
            preds = preds.argmax(dim=1)
        self._capture("predictions/predictions", "predictions", preds, None)

    def _on_grad(self, pname: str, p: torch.Tensor) -> None:
        try:
            if p.grad is not None:
                meta = self._meta(pname)
                self._capture(f"gradients/{pname}", "gradients", p.grad, meta)
        except Exception as exc:
            self._error(f"gradients/{pname}", exc)

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self.recorder.mode != "train":
                self.recorder.set_mode("train")
            step = self.recorder.mode_step  # train steps are consecutive even with evals between
            copies = self._copier.take(step)
            for pname, p, _owner in self._params:
                meta = self._meta(pname)
                if p.grad is not None:
                    how = "copy" if self._grad_copy(pname, p.grad) else "ref"
                    self._capture(f"gradients/{pname}", "gradients", p.grad, meta, how=how)
                coll = "biases" if pname.endswith("bias") else "weights"
                self._capture_weight(pname, p, coll, meta, step, copies.get(pname))
        except Exception as exc:
            self._error("optimizer step", exc)

    def _grad_copy(self, pname: str, grad: torch.Tensor) -> bool:
        """Whether the gradient must be copied before the writer reads it.

        ``zero_grad(set_to_none=True)``, PyTorch's default, gives every step fresh gradient
        tensors that nothing modifies after the optimizer's step pre-hook: holding a reference
        is enough, and saves copying every gradient on the training thread. Gradients reused
        in place (``set_to_none=False``, or no ``zero_grad``) would change under the writer;
        that shows as this step's gradient living in the storage of the previous step's, which
        we still hold, so no allocator reuse can fool the check. Then we copy, from now on.
        """
        if grad.is_cuda:
            return True  # device snapshots are stream-ordered copies already
        prev = self._last_grad.get(pname)
        self._last_grad[pname] = grad
        if prev is None or self._grads_reused:
            return True
        if prev.data_ptr() == grad.data_ptr():
            self._grads_reused = True
            return True
        return False

    def _capture_weight(self, pname: str, p: torch.Tensor, coll: str, meta: Mapping[str, Any], step: int,
                        copy: ParameterCopy | None) -> None:
        """Capture a parameter (and its update norm) from the helper thread's ``copy`` when
        there is one, else from a copy made now."""
        if copy is None:
            payload = self._capture(f"{coll}/{pname}", coll, p, meta, how="copy")
        else:
            payload = self._capture(f"{coll}/{pname}", coll, copy.tensor, meta, how="owned")
            if payload is not None and copy.stats is not None:
                payload.set_stats(copy.stats)
        if payload is None:
            return  # not due at this step
        wants_updates = self.config.wants("updates", f"updates/{pname}")
        # The CPU snapshot is already a private copy; on CUDA keep a device copy to diff against.
        snapshot = payload.tensor if payload.tensor is not None else (p.detach().clone() if wants_updates else None)
        if snapshot is None:
            return
        prev = self._prev_weights.get(pname)
        self._prev_weights[pname] = (step, snapshot)
        if prev is not None and prev[0] == step - 1 and wants_updates:
            s_due, v_due = self.config.due("updates", "train", self.recorder.mode_step)
            if s_due or v_due:
                update: Payload = UpdatePayload(snapshot, prev[1])
                if copy is not None and copy.update_sumsq is not None:  # measured by the copy pass
                    update = ScalarPayload(math.sqrt(copy.update_sumsq))
                self.recorder.add(f"updates/{pname}", "updates", update, values=v_due,
                                  meta={**meta, "update": "W[step] - W[step-1]"})

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            self.recorder.end_step()
            self._schedule_parameter_copies()
        except Exception as exc:
            self._error("optimizer step", exc)

    def _schedule_parameter_copies(self) -> None:
        """Have the weights of the next train step copied while its forward pass runs."""
        rec = self.recorder
        step = rec.mode_steps["train"]
        due: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
        updates_due = any(self.config.due("updates", "train", step))
        for pname, p, _owner in self._params:
            if p.is_cuda:
                continue  # device snapshots are asynchronous already
            coll = "biases" if pname.endswith("bias") else "weights"
            if self._wanted(coll, f"{coll}/{pname}") and any(self.config.due(coll, "train", step)):
                prev = self._prev_weights.get(pname)
                with_prev = prev is not None and prev[0] == step - 1 and updates_due and self._wanted("updates", f"updates/{pname}")
                due.append((pname, p, prev[1] if with_prev and prev is not None else None))
        self._copier.schedule(step, due)

    def _meta(self, pname: str) -> dict[str, Any]:
        meta = self._param_meta[pname]
        owner = meta["module"]
        if "depth" not in meta and owner in self._depth:
            meta["depth"] = self._depth[owner]
        return meta

    def _error(self, where: str, exc: BaseException) -> None:
        self.recorder.writer._record_error("hook", f"{where}: {type(exc).__name__}: {exc}", tensor=where)


def _activation(m: nn.Module) -> str | None:
    for cls, name in ACTIVATIONS.items():
        if isinstance(m, cls):
            return name
    return None


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    return 0, 1
