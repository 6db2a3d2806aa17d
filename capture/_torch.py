"""PyTorch capture: :class:`TorchHook`.

What the training thread pays, per captured tensor and step, on CPU: mostly nothing. Module
outputs, inputs and gradients go to the writer by reference, checked against their version
counters (``_torch_snapshot``: a name whose tensors are changed in place is copied instead),
a step's references as one batch the writer reads in bulk (``ReferenceBatch``, ``ParameterBatch``);
weights, which the optimizer changes in place, are copied by a helper thread while the next
step's forward pass runs (``_torch_params``). On CUDA: a step's tensors are reduced together
by a few dozen asynchronous kernels, replayed as one CUDA graph once the step's layout repeats
(``_torch_device``), and, when full values are due, copied
asynchronously into pinned host memory. Statistics, numpy conversion and store I/O all happen
on the writer thread. No ``.cpu()`` and no device synchronisation happen on the training thread.

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
from typing import Any, NamedTuple

import torch
from torch import nn

from . import _format as F
from ._config import FOREVER, CaptureConfig
from ._recorder import Recorder
from ._torch_device import (
    DevicePayload,
    DeviceStatsBatch,
    DeviceUpdatePayload,
    parameter_differences,
    snapshot_parameters,
)
from ._torch_params import ParameterCopier, ParameterCopy
from ._torch_snapshot import (
    ArgmaxPayload,
    CopyPolicy,
    ParameterBatch,
    ReferenceBatch,
    TorchPayload,
    UpdatePayload,
    torch_stats,
)
from ._writer import StepRecord

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

class _Slot:
    """What the hooks need about one tensor name, worked out once: the hooks run for every
    module at every step, and on a CPU step of a few milliseconds each microsecond of Python
    per tensor shows."""

    __slots__ = ("name", "collection", "meta", "wanted", "policy")

    def __init__(self, name: str, collection: str, meta: Mapping[str, Any] | None, wanted: bool) -> None:
        self.name = name
        self.collection = collection
        self.meta = meta
        self.wanted = wanted
        self.policy: CopyPolicy | None = None


class _ParamSlots(NamedTuple):
    """A parameter's three tensors: its gradient, its values (weights or biases) and its update."""

    pname: str
    param: nn.Parameter
    grad: _Slot
    value: _Slot
    update: _Slot


class _ModuleSlots:
    """A hooked module's output and activation-input slots, made at its first forward pass
    (which numbers the modules' depth in call order)."""

    __slots__ = ("name", "act", "output", "act_input")

    def __init__(self, name: str, act: str | None) -> None:
        self.name = name
        self.act = act
        self.output: _Slot | None = None
        self.act_input: _Slot | None = None


#: ``_due`` cache entry for a collection not due at this step.
_NOT_DUE = (False, False)
#: ... and for one whose statistics are due but not its values (most steps, at the defaults).
_STATS_ONLY = (True, False)

#: The step items that carry the optimizer step's parameter tensors (a ParameterBatch) and the
#: tensors passed by reference (a ReferenceBatch); not tensor names (names are
#: "<collection>/<name>"), and never stored.
PARAMETER_BATCH = "\x00parameters"
REFERENCES = "\x00references"


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
        self._param_meta: dict[str, dict[str, Any]] = {}
        self._prev_weights: dict[str, tuple[int, torch.Tensor]] = {}
        self._last_grad: dict[str, torch.Tensor] = {}
        # The data pointers of the gradients in _last_grad when the bulk path filled it (None:
        # the per-parameter path did since, and the bulk path reads them from _last_grad).
        self._last_grad_ptrs: set[int] | None = None
        self._grads_reused = False
        # The parameters the optimizer hooks handle in bulk in the steady state (all of them,
        # when the configuration wants every parameter's gradient, values and update; else
        # empty), worked out at the first step; and the last train step they did.
        self._bulk_slots: list[_ParamSlots] | None = None
        self._bulk_names: list[str] = []
        self._bulk_pairs: list[tuple[str, nn.Parameter]] = []
        self._bulk_collections: tuple[str, ...] = ()
        self._bulk_step = -2
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._param_meta_settled = False
        self._loss_hooked = False
        self._release_at_loss = False  # the forward pass ended; release held steps at the loss
        self._loss_metas: dict[type, dict[str, Any]] = {}
        self._param_slots: list[_ParamSlots] = []
        self._policies: dict[str, CopyPolicy] = {}
        # What holds for the current step only (reset by _due() when the step changes): each
        # collection's (stats due, values due), and the payloads shared between names.
        self._due_global_step = -1
        self._due_mode = ""
        self._due_cache: dict[str, tuple[bool, bool]] = {}
        # The cache holds for the mode steps [_due_from, _due_until) of _due_mode: the
        # schedules say so (CaptureConfig.unchanged_for), so it is worked out again only when
        # a schedule changes its answer, not every step.
        self._due_from = 0
        self._due_until = 0
        # Copied tensors whose originals are watched for in-place changes (see CopyPolicy):
        # those captured before the last forward pass began, and those since.
        self._probes_old: list[tuple[CopyPolicy, torch.Tensor, int]] = []
        self._probes_new: list[tuple[CopyPolicy, torch.Tensor, int]] = []
        # One tensor captured under two names in a step (a conv's output is the next ReLU's
        # input) gets one payload, so its statistics are computed once.
        self._step_payloads: dict[tuple[Any, ...], TorchPayload | DevicePayload] = {}
        # The tensors of the current step passed by reference, and the step they belong to.
        self._references: ReferenceBatch | None = None
        self._references_step: StepRecord | None = None
        self._copier = ParameterCopier(f"trainaudit-params-{self.recorder.writer.run_id}")
        # CUDA tensors are reduced a step at a time (_torch_device): before the optimizer
        # changes the weights, and whenever a step ends.
        self._device_batch = DeviceStatsBatch()
        self.recorder.before_step_end = self._device_batch.launch
        self._closed = False

    # ------------------------------------------------------------------ registration
    def register(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, loss: nn.Module | None = None) -> TorchHook:
        """Hook ``model`` (and ``optimizer``, and a loss module) for capture. Returns self."""
        self.model = model
        self.optimizer = optimizer
        module_name = {m: n for n, m in model.named_modules()}
        types = set(self.config.module_types)
        collections = set(self.config.collections)
        self._handles.append(model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        # Steps reach the writer thread when the next backward pass begins, so its Python work
        # overlaps backward(), which runs without the GIL (RunWriter.hold_steps).
        self.recorder.writer.hold_steps()
        self._handles.append(model.register_forward_hook(self._on_model_forward_end))
        for name, m in model.named_modules():
            self._module_type[name] = type(m).__name__
            if m is model and list(m.children()):
                continue
            if types and type(m).__name__ not in types:
                continue
            # Only what the configuration captures is hooked: a hooked module takes PyTorch's
            # slower call path (tens of microseconds per call on a CPU step).
            act = _activation(m)
            slots = _ModuleSlots(name, act)
            inputs_hooked = act is not None and "activation_inputs" in collections
            outputs_hooked = not list(m.children()) and "outputs" in collections
            if inputs_hooked and outputs_hooked and not getattr(m, "inplace", False):
                # One hook sees both (each hooked call costs microseconds). An in-place
                # activation overwrites its input, which only a pre-hook sees as it was.
                self._handles.append(m.register_forward_hook(partial(self._on_activation, slots)))
                inputs_hooked = outputs_hooked = False
            if inputs_hooked:
                self._handles.append(m.register_forward_pre_hook(partial(self._on_activation_input, slots)))
            if isinstance(m, nn.Embedding) and "tokens" in collections:
                self._handles.append(m.register_forward_pre_hook(partial(self._on_tokens, name)))
            if outputs_hooked:
                self._handles.append(m.register_forward_hook(partial(self._on_module_output, slots)))
        for pname, p in model.named_parameters():
            owner = pname.rsplit(".", 1)[0] if "." in pname else ""
            mod = model.get_submodule(owner) if owner else model
            meta: dict[str, Any] = {"module": owner, "module_type": type(mod).__name__, "param": pname.rsplit(".", 1)[-1]}
            if p.ndim >= 2:
                meta["fan_in"] = int(p.shape[1] * math.prod(p.shape[2:]))
                meta["fan_out"] = int(p.shape[0] * math.prod(p.shape[2:]))
            self._param_meta[pname] = meta
            coll = "biases" if pname.endswith("bias") else "weights"
            self._param_slots.append(_ParamSlots(
                pname, p, self._slot(f"gradients/{pname}", "gradients", meta), self._slot(f"{coll}/{pname}", coll, meta),
                self._slot(f"updates/{pname}", "updates", {**meta, "update": "W[step] - W[step-1]"})))
            if optimizer is None and p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(partial(self._on_grad, pname)))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(optimizer.register_step_post_hook(self._on_optimizer_post))
        if loss is not None and collections & {"losses", "labels", "predictions"}:
            self._handles.append(loss.register_forward_hook(self._on_loss))
            self._loss_hooked = True
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
        self._references = self._references_step = None
        self.recorder.close()

    def __enter__(self) -> TorchHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hooks (training thread)
    def _slot(self, name: str, collection: str, meta: Mapping[str, Any] | None) -> _Slot:
        """The slot of tensor ``name`` (made on first use)."""
        slot = self._slots.get((collection, name))
        if slot is None:
            slot = self._slots[(collection, name)] = _Slot(name, collection, meta, self.config.wants(collection, name))
        return slot

    def _due(self, collection: str) -> tuple[bool, bool]:
        """``(stats, values)`` due for ``collection`` at the current step (worked out again
        only when the schedules say the answer may change)."""
        rec = self.recorder
        if rec.global_step != self._due_global_step or rec.mode != self._due_mode:  # (the hooks call
            step = rec.mode_step  # this ~40 times a step)
            if rec.mode != self._due_mode or not self._due_from <= step < self._due_until:
                self._due_cache = {}
                self._due_from, self._due_until = step, FOREVER
            self._due_global_step, self._due_mode = rec.global_step, rec.mode
            self._step_payloads.clear()
        due = self._due_cache.get(collection)
        if due is None:
            step = rec.mode_step
            stats_due, values_due = self.config.due(collection, rec.mode, step)
            due = self._due_cache[collection] = (stats_due, values_due) if (stats_due or values_due) else _NOT_DUE
            self._due_until = min(self._due_until, step + self.config.unchanged_for(collection, rec.mode, step))
        return due

    def _capture(self, name: str, collection: str, t: torch.Tensor, meta: Mapping[str, Any] | None, *, how: str | None = None) -> None:
        """Snapshot ``t`` into the current step if its schedule says so.

        ``how`` is a :class:`TorchPayload` hand-over; None lets the name's :class:`CopyPolicy`
        choose between a reference and a copy.
        """
        slot = self._slot(name, collection, meta)
        if meta is not None:
            slot.meta = meta
        self._capture_slot(slot, t, how)

    def _capture_slot(self, slot: _Slot, t: torch.Tensor, how: str | None = None,
                      payload_type: type[TorchPayload] = TorchPayload) -> None:
        if not slot.wanted:
            return
        policy = slot.policy
        if how is None and policy is not None and policy.probes_left == 0 and not policy.copy and not t.is_cuda:
            # The steady state of most names: a CPU tensor passed by reference (ReferenceBatch).
            try:
                version = t._version
            except RuntimeError:  # an inference tensor has no version counter: copied below
                pass
            else:
                self._add_reference(slot, t, version, payload_type)
                return
        stats_due, values_due = self._due(slot.collection)
        if not (stats_due or values_due):
            return
        if how == "owned":
            policy = None
        else:
            if policy is None:
                policy = slot.policy = self._policies.setdefault(slot.name, CopyPolicy())
            if policy.copy or t.is_inference():  # inference tensors have no version counter
                how = "copy"
            elif how is None:
                if policy.probes_left > 0:
                    how = "copy"
                    self._probes_new.append((policy, t, t._version))
                else:
                    how = "ref"
        if t.is_cuda or payload_type is TorchPayload:
            payload: Any = self._shared_payload(t, values_due, how or "copy", policy)
        else:  # a payload that transforms the tensor is its own, never shared
            payload = payload_type(t, how=how or "copy", policy=policy)
        if self._references is not None and self.recorder.current is self._references_step:
            self._references.discard(slot.name)  # (this name went by reference earlier in the step)
        self.recorder.add(slot.name, slot.collection, payload, values=values_due, meta=slot.meta)

    def _add_reference(self, slot: _Slot, t: torch.Tensor, version: int, payload_type: type[TorchPayload]) -> None:
        """Add ``t`` to the step's :class:`ReferenceBatch` if its collection is due (the batch
        is opened with the step's first reference)."""
        refs = self._references
        if refs is not None and self.recorder.current is self._references_step:
            due = refs.due.get(slot.collection)
            if due is None:
                due = refs.due[slot.collection] = self._due(slot.collection)
            if due is _NOT_DUE:
                return
        else:
            due = self._due(slot.collection)
            if due is _NOT_DUE:
                return  # (before opening anything: a step with nothing recorded is not counted)
            refs = self._references = ReferenceBatch()
            refs.due[slot.collection] = due
            self.recorder.add(REFERENCES, "other", refs, values=False)
            self._references_step = self.recorder.current
        step = self._references_step
        if step is not None and slot.name in step.index:  # went as a copy earlier in the step
            step.drop(slot.name)
        refs.add(slot, t, version, due[1], payload_type)

    def _new_payload(self, t: torch.Tensor, values: bool, how: str, policy: CopyPolicy | None) -> TorchPayload | DevicePayload:
        if t.is_cuda:
            return DevicePayload(t, self._device_batch, values=values, how=how, policy=policy)
        return TorchPayload(t, how=how, policy=policy)

    def _shared_payload(self, t: torch.Tensor, values: bool, how: str, policy: CopyPolicy | None) -> TorchPayload | DevicePayload:
        if how != "ref":
            return self._new_payload(t, values, how, policy)
        # Only references are shared: a reference keeps its tensor alive, so no other tensor
        # object of this step can have its id. One tensor under two names (a layer's output
        # is the next activation's input) is the same Python object. (The caller asked _due()
        # first, which empties the payloads when a step begins.)
        key = (id(t), t._version)
        payload = self._step_payloads.get(key)
        if payload is None or payload.tensor is not t:
            # (A CUDA payload lets go of its tensor once its batch is reduced, which can happen
            # mid-step: then the id may be another tensor's already.)
            payload = self._step_payloads[key] = self._new_payload(t, values, how, policy)
        elif values and isinstance(payload, DevicePayload):
            payload.want_values()  # the first name did not want the values, this one does
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
                slot = self._slots.get((coll, f"{coll}/model")) or self._slot(
                    f"{coll}/model", coll, {"module": "", "module_type": type(module).__name__})
                self._capture_slot(slot, x)
        except Exception as exc:
            self._error("forward", exc)

    def _on_model_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        """Hand the held steps to the writer when this forward pass's backward begins (see
        RunWriter.hold_steps): the engine then runs without the GIL, and the writer's Python
        work does not hold up the loss computation and the rest of the training loop's Python.
        With a loss module registered, its forward hook sets a pre-hook on the loss's
        ``grad_fn`` (:meth:`_release_when_backward_runs`); else a hook on the output tensor,
        which autograd calls as the backward pass reaches it."""
        try:
            writer = self.recorder.writer
            if self._release_at_loss:  # the registered loss module did not run after the last
                self._loss_hooked = self._release_at_loss = False  # forward pass: don't wait on it
            if not writer.holding_steps:
                return
            t = _first_tensor_requiring_grad(output)
            if t is None or self.recorder.mode != "train":  # no backward will follow (no_grad), or
                writer.release()  # none is expected (an eval loop that left gradients on)
            elif self._loss_hooked:
                self._release_at_loss = True  # the loss module's call arranges it: cheaper
            else:
                t.register_hook(self._on_backward_start)
        except Exception as exc:
            self._error("forward", exc)

    def _on_backward_start(self, grad: Any) -> None:
        try:
            self.recorder.writer.release()
        except Exception as exc:
            self._error("backward", exc)

    def _module_slot(self, slots: _ModuleSlots, collection: str) -> _Slot:
        """A module's output or activation-input slot, made at its first forward pass."""
        meta: dict[str, Any] = {"module": slots.name, "module_type": self._module_type[slots.name], "depth": self._depth_of(slots.name)}
        if slots.act:
            meta["activation"] = slots.act
        slot = self._slot(f"{collection}/{slots.name}", collection, meta)
        if collection == "outputs":
            slots.output = slot
        else:
            slots.act_input = slot
        return slot

    def _depth_of(self, name: str) -> int:
        d = self._depth.get(name)
        if d is None:
            d = self._depth[name] = len(self._depth)
        return d

    def _on_module_output(self, slots: _ModuleSlots, module: nn.Module, inputs: Any, output: Any) -> None:
        try:
            self._capture_output(slots, output)
        except Exception as exc:
            self._error(f"outputs/{slots.name}", exc)

    def _on_activation_input(self, slots: _ModuleSlots, module: nn.Module, args: tuple[Any, ...]) -> None:
        # A pre-hook: an in-place activation (ReLU(inplace=True)) has not overwritten it yet.
        try:
            self._capture_activation_input(slots, args)
        except Exception as exc:
            self._error(f"activation_inputs/{slots.name}", exc)

    def _on_activation(self, slots: _ModuleSlots, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """The forward hook of an activation module that does not work in place: its input
        (unchanged by the call) and its output."""
        try:
            self._capture_activation_input(slots, args)
            self._capture_output(slots, output)
        except Exception as exc:
            self._error(f"activations/{slots.name}", exc)

    def _capture_output(self, slots: _ModuleSlots, output: Any) -> None:
        slot = slots.output or self._module_slot(slots, "outputs")
        if slot.wanted and isinstance(output, torch.Tensor) and output.is_floating_point():
            self._capture_slot(slot, output)

    def _capture_activation_input(self, slots: _ModuleSlots, args: tuple[Any, ...]) -> None:
        slot = slots.act_input or self._module_slot(slots, "activation_inputs")
        if slot.wanted and args and isinstance(args[0], torch.Tensor):
            self._capture_slot(slot, args[0])

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
                self._capture("losses/loss", "losses", output, self._loss_meta(module))
            if len(inputs) >= 2 and isinstance(inputs[1], torch.Tensor):
                target = inputs[1]
                if not target.is_floating_point():
                    self._capture("labels/labels", "labels", target, None)
                    if isinstance(inputs[0], torch.Tensor):
                        self._record_predictions(inputs[0])
        except Exception as exc:
            self._error("losses/loss", exc)
        if self._release_at_loss:
            self._release_at_loss = False
            self._release_when_backward_runs(output)

    def _release_when_backward_runs(self, loss: Any) -> None:
        """Hand the held steps to the writer once autograd starts on ``loss``, not at the loss
        module's call: ``backward()`` begins with Python of its own (argument checks, the
        initial gradient), which would wait for the GIL while the writer's Python held it. A
        pre-hook on the loss's ``grad_fn`` runs as the engine starts, which then computes
        without the GIL (alternating runs: the training thread's wait for the GIL during
        backward went from ~0.25 to ~0.13 ms a step on the benchmark's MLP). Without a
        ``grad_fn`` no backward follows, and the steps go now."""
        try:
            grad_fn = loss.grad_fn if isinstance(loss, torch.Tensor) else None
            if grad_fn is not None:
                grad_fn.register_prehook(self._on_backward_start)
                return
        except Exception as exc:
            self._error("losses/loss", exc)
        self._on_backward_start(None)

    def _loss_meta(self, module: nn.Module) -> dict[str, Any]:
        meta = self._loss_metas.get(type(module))
        if meta is None:
            meta = self._loss_metas[type(module)] = {"module_type": type(module).__name__}
        return meta

    def _record_predictions(self, scores: torch.Tensor) -> None:
        slot = self._slot("predictions/predictions", "predictions", None)
        if not slot.wanted or self._due("predictions") is _NOT_DUE:
            return
        # Class ids, not scores: 8 bytes per sample instead of 4 x num_classes. On CPU the
        # writer takes the argmax; on GPU it is one tiny asynchronous kernel.
        if scores.is_floating_point() and scores.ndim >= 2:
            if scores.is_cuda:
                self._capture_slot(slot, scores.detach().argmax(dim=1), how="owned")
            else:
                self._capture_slot(slot, scores, payload_type=ArgmaxPayload)
        else:
            self._capture_slot(slot, scores)

    def _on_grad(self, pname: str, p: torch.Tensor) -> None:
        try:
            if p.grad is not None:
                meta = self._meta(pname)
                self._capture(f"gradients/{pname}", "gradients", p.grad, meta)
        except Exception as exc:
            self._error(f"gradients/{pname}", exc)

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            rec = self.recorder
            if rec.mode != "train":
                rec.set_mode("train")
            if not self._param_meta_settled:
                self._settle_param_meta()
            step = rec.mode_step  # train steps are consecutive even with evals between
            copies = self._copier.take(step)
            grads_due = self._due("gradients")
            value_due = {"weights": self._due("weights"), "biases": self._due("biases")}
            updates_due = self._due("updates")
            batch = ParameterBatch()
            if not self._add_parameters_in_bulk(batch, step, copies, grads_due, value_due, updates_due):
                self._add_parameters(batch, step, copies, grads_due, value_due, updates_due)
            if batch.entries:
                rec.add(PARAMETER_BATCH, "other", batch, values=False)
        except Exception as exc:
            self._error("optimizer step", exc)
        try:
            self._device_batch.launch()  # before optimizer.step() changes the weights
        except Exception as exc:
            self._error("device statistics", exc)

    def _add_parameters(self, batch: ParameterBatch, step: int, copies: dict[str, ParameterCopy],
                        grads_due: tuple[bool, bool], value_due: dict[str, tuple[bool, bool]],
                        updates_due: tuple[bool, bool]) -> None:
        """Each parameter's gradient, weights and update, one by one (any step the bulk path
        does not take: values due, CUDA, gradients zeroed in place, the first steps)."""
        self._last_grad_ptrs = None  # (the loop refreshes _last_grad one by one)
        device_updates: list[_ParamSlots] = []
        for ps in self._param_slots:
            grad = ps.param.grad
            if grad is not None and ps.grad.wanted and grads_due is not _NOT_DUE:
                self._add_gradient(batch, ps, grad, grads_due[1])
            if ps.value.wanted and value_due[ps.value.collection] is not _NOT_DUE:
                if ps.param.is_cuda:
                    self._add_device_weight(batch, ps, value_due[ps.value.collection][1])
                    if ps.update.wanted:
                        device_updates.append(ps)
                else:
                    self._add_weight(batch, ps, step, copies.get(ps.pname), value_due[ps.value.collection][1], updates_due)
        if device_updates:
            self._add_device_updates(batch, device_updates, step, updates_due)

    def _add_parameters_in_bulk(self, batch: ParameterBatch, step: int, copies: dict[str, ParameterCopy],
                                grads_due: tuple[bool, bool], value_due: dict[str, tuple[bool, bool]],
                                update_due: tuple[bool, bool]) -> bool:
        """The steady state of a CPU training (statistics due, no values; every weight copied
        and measured by the helper thread; fresh gradients passed by reference) as one
        ``"bulk"`` entry of the batch, made with a few list operations: the loop over the
        parameters cost the training thread ~10 us of Python per parameter, out of cache
        between two large matrix products. False (nothing done) when the step is not such a
        step: the per-parameter loop then handles it."""
        slots = self._bulk_slots
        if slots is None:
            slots = self._bulk_slots = self._bulk_parameters()
        numbers = self._copier.numbers  # (set by take(): the whole step copied and measured)
        if (not slots or numbers is None or len(numbers) != len(slots) or self._grads_reused
                or grads_due != _STATS_ONLY or update_due != _STATS_ONLY
                or any(value_due[c] != _STATS_ONLY for c in self._bulk_collections)):
            return False
        try:
            grads: list[torch.Tensor] = [ps.param.grad for ps in slots]  # type: ignore[misc]
            ptrs = [g.data_ptr() for g in grads]  # (AttributeError: a parameter without a gradient)
            versions = [g._version for g in grads]  # (RuntimeError: an inference tensor)
        except (AttributeError, RuntimeError):
            return False
        last_ptrs = self._last_grad_ptrs
        if last_ptrs is None:
            if len(self._last_grad) != len(slots):
                return False  # (a parameter seen for the first time: the loop copies its gradient)
            last_ptrs = {t.data_ptr() for t in self._last_grad.values()}
        if not last_ptrs.isdisjoint(ptrs) or any(ps.grad.policy.copy for ps in slots):  # type: ignore[union-attr]
            return False  # gradients reused in place (see _grad_copy), or one must be copied
        # The previous gradients are kept (and replaced) as _grad_copy keeps them: while they
        # live, a fresh gradient cannot have one's address.
        self._last_grad = dict(zip(self._bulk_names, grads, strict=True))
        self._last_grad_ptrs = set(ptrs)
        self._prev_weights.update((name, (step, c.tensor)) for name, c in copies.items())
        self._bulk_step = step
        batch.entries.append((None, "parameters", None, False, "bulk", (slots, grads, versions, numbers), None))
        return True

    def _bulk_parameters(self) -> list[_ParamSlots]:
        """The parameters for :meth:`_add_parameters_in_bulk`: all, when the configuration wants
        every parameter's gradient, values and update (each gradient slot given its policy
        now); else none."""
        slots = self._param_slots
        if not slots or not all(ps.grad.wanted and ps.value.wanted and ps.update.wanted for ps in slots):
            return []
        for ps in slots:
            if ps.grad.policy is None:
                ps.grad.policy = self._policies.setdefault(ps.grad.name, CopyPolicy())
        self._bulk_names = [ps.pname for ps in slots]
        self._bulk_pairs = [(ps.pname, ps.param) for ps in slots]
        self._bulk_collections = tuple({ps.value.collection for ps in slots})
        return list(slots)

    def _add_gradient(self, batch: ParameterBatch, ps: _ParamSlots, grad: torch.Tensor, values_due: bool) -> None:
        slot = ps.grad
        copy = self._grad_copy(ps.pname, grad)  # always asked: it follows the gradients' storage
        if grad.is_cuda:  # reduced before this pre-hook returns: a reference is safe
            batch.entries.append((slot.name, "gradients", slot.meta, values_due, "payload",
                                  DevicePayload(grad, self._device_batch, values=values_due, how="ref"), None))
            return
        policy = slot.policy
        if policy is None:
            policy = slot.policy = self._policies.setdefault(slot.name, CopyPolicy())
        if copy or policy.copy or grad.is_inference():
            batch.entries.append((slot.name, "gradients", slot.meta, values_due, "payload",
                                  TorchPayload(grad, how="copy", policy=policy), None))
        else:
            batch.entries.append((slot.name, "gradients", slot.meta, values_due, "ref", grad, grad._version, policy))

    def _settle_param_meta(self) -> None:
        """Give the parameters' metadata their module's depth, once the modules have run."""
        if not self._depth:
            return
        for ps in self._param_slots:
            meta = self._meta(ps.pname)  # the dict the gradient and value slots share
            ps.update.meta = {**meta, "update": "W[step] - W[step-1]"}
        self._param_meta_settled = True

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

    def _add_weight(self, batch: ParameterBatch, ps: _ParamSlots, step: int, copy: ParameterCopy | None,
                    values_due: bool, update_due: tuple[bool, bool]) -> None:
        """A CPU parameter (and its update norm), from the helper thread's ``copy`` when there
        is one, else from a copy made now. Its collection is due at this step."""
        slot = ps.value
        p = ps.param
        if copy is None:
            payload = TorchPayload(p, how="copy")
            batch.entries.append((slot.name, slot.collection, slot.meta, values_due, "payload", payload, None))
            snapshot = payload.tensor  # a private copy
        elif copy.stats is not None and not values_due:
            # Only the numbers the copy pass measured: the batch must not keep the copy's buffer
            # until the writer gets to this step. The copier reuses a buffer nobody holds; a
            # writer a few steps behind held them all, and the copier then allocated fresh
            # ones (a page fault per 4 KiB, the GIL retaken for each parameter), which cost the
            # training thread, waiting in the next pre-hook, up to tens of milliseconds.
            batch.entries.append((slot.name, slot.collection, slot.meta, False, "stats", copy.stats, None))
            snapshot = copy.tensor
        else:
            batch.entries.append((slot.name, slot.collection, slot.meta, values_due, "owned", copy, None))
            snapshot = copy.tensor
        prev = self._prev_weights.get(ps.pname)
        self._prev_weights[ps.pname] = (step, snapshot)
        if prev is None or prev[0] != step - 1 or not ps.update.wanted or update_due is _NOT_DUE:
            return
        update = ps.update
        if copy is not None and copy.update_sumsq is not None:  # measured by the copy pass
            batch.entries.append((update.name, "updates", update.meta, update_due[1], "scalar", math.sqrt(copy.update_sumsq), None))
        else:
            batch.entries.append((update.name, "updates", update.meta, update_due[1], "payload", UpdatePayload(snapshot, prev[1]), None))

    def _add_device_weight(self, batch: ParameterBatch, ps: _ParamSlots, values_due: bool) -> None:
        """A CUDA parameter: its statistics from the step's device batch, reduced before this
        pre-hook returns (so a reference is safe)."""
        slot = ps.value
        payload = DevicePayload(ps.param, self._device_batch, values=values_due, how="ref")
        batch.entries.append((slot.name, slot.collection, slot.meta, values_due, "payload", payload, None))

    def _add_device_updates(self, batch: ParameterBatch, slots: list[_ParamSlots], step: int,
                            update_due: tuple[bool, bool]) -> None:
        """The update norms of CUDA parameters whose values are due: ``W_s - W_{s-1}`` into the
        step's device batch, then ``W_s`` kept on the device for the next step. Both for all
        parameters at once (``torch._foreach_*``): a GPU step is launch-bound, and a clone and a
        subtraction per parameter cost the MLP 16 launches a step."""
        cur = [ps.param.detach() for ps in slots]
        prev = [self._prev_weights.get(ps.pname) for ps in slots]
        if update_due is not _NOT_DUE:
            due = [i for i, pv in enumerate(prev) if pv is not None and pv[0] == step - 1]
            diffs = parameter_differences([cur[i] for i in due], [prev[i][1] for i in due])  # type: ignore[index]
            for i, diff in zip(due, diffs, strict=True):
                update = slots[i].update
                batch.entries.append((update.name, "updates", update.meta, update_due[1], "payload",
                                      DeviceUpdatePayload(diff, self._device_batch), None))
        # Into the previous snapshots' memory: the subtractions just queued read it first.
        snapshots = snapshot_parameters(cur, [pv[1] if pv is not None else None for pv in prev])
        for ps, snap in zip(slots, snapshots, strict=True):
            self._prev_weights[ps.pname] = (step, snap)

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            self.recorder.end_step()
            self._schedule_parameter_copies()
        except Exception as exc:
            self._error("optimizer step", exc)

    def _schedule_parameter_copies(self) -> None:
        """Have the weights of the next train step copied while its forward pass runs."""
        # After end_step() the recorder stands at the next train step: _due() answers for it.
        step = self.recorder.mode_step
        updates_due = self._due("updates") is not _NOT_DUE
        value_due = {"weights": self._due("weights") is not _NOT_DUE, "biases": self._due("biases") is not _NOT_DUE}
        if self._bulk_step == step - 1 and updates_due and value_due["weights"] and value_due["biases"]:
            # The last pre-hook took every parameter in bulk: all are CPU tensors whose
            # previous copies are of the step before this one.
            prevs = self._prev_weights
            self._copier.schedule(step, [(name, p, prevs[name][1]) for name, p in self._bulk_pairs])
            return
        due: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
        for ps in self._param_slots:
            p = ps.param
            if not ps.value.wanted or not value_due[ps.value.collection] or p.is_cuda:
                continue  # (device snapshots are asynchronous already)
            prev = self._prev_weights.get(ps.pname)
            with_prev = prev is not None and prev[0] == step - 1 and updates_due and ps.update.wanted
            due.append((ps.pname, p, prev[1] if with_prev and prev is not None else None))
        self._copier.schedule(step, due)

    def _meta(self, pname: str) -> dict[str, Any]:
        meta = self._param_meta[pname]
        owner = meta["module"]
        if "depth" not in meta and owner in self._depth:
            meta["depth"] = self._depth[owner]
        return meta

    def _error(self, where: str, exc: BaseException) -> None:
        self.recorder.writer._record_error("hook", f"{where}: {type(exc).__name__}: {exc}", tensor=where)


def _first_tensor_requiring_grad(output: Any) -> torch.Tensor | None:
    """The first tensor of a forward pass's output (a tensor, or a tuple, list or dict of
    them) that a backward pass would reach."""
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for v in items:
        if isinstance(v, torch.Tensor) and v.requires_grad:
            return v
    return None


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
