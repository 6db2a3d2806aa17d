"""How a PyTorch tensor gets from the training thread to the writer thread, cheaply.

The training thread hands over a :class:`TorchPayload`; the writer thread calls its
``resolve`` to get the statistics (and values). Three ways to hand a CPU tensor over, from
cheapest:

* **owned**: a private copy someone already made (the parameter copier's, see
  ``_torch_params``): nothing to do.
* **by reference**: the tensor itself, plus its version counter. Free, and right as long as
  nothing changes the tensor in place before the writer reads it; the writer checks the
  counter after reading and drops a reading taken from a changed tensor
  (:class:`ChangedInPlace`). Which names are safe to pass this way is learnt per name
  (:class:`CopyPolicy`).
* **copied**: ``clone()`` on the training thread, a memcpy of the tensor.

CUDA tensors take another way, ``_torch_device``: their statistics are reduced on the device,
many tensors at a time, and reach pinned host memory asynchronously.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import _format as F
from ._compat import (
    HAS_FAST_STATS,
    STATS_AT_CODES,
    abs_sum_f32,
    diff_sumsq,
    fast_stats,
    stats_at,
    yield_gil,
)
from ._format import scalar_stats
from ._writer import GIL_YIELD_ITEMS, GIL_YIELD_SECONDS, ResolvedRows, StepItem

__all__ = ["torch_stats", "scalar_stats", "TorchPayload", "ArgmaxPayload", "UpdatePayload", "ScalarPayload", "ParameterBatch",
           "ReferenceBatch", "CopyPolicy", "ChangedInPlace", "PROBE_FORWARDS"]

_FLOATS = (torch.float32, torch.float64)

#: The dtypes the writer reads in bulk (:class:`_Rows`), with their ``_compat.stats_at`` codes.
_BULK_CODES: dict[torch.dtype, int] = {
    getattr(torch, name): code for name, code in STATS_AT_CODES.items() if hasattr(torch, name)
}

_CHANGED = "changed in place before capture could read it; copied on the training thread from now on"

#: Forward passes a name's copied tensors are watched for in-place changes before the name is
#: passed by reference (see :class:`CopyPolicy`).
PROBE_FORWARDS = 2


class ChangedInPlace(RuntimeError):
    """A tensor passed by reference changed before the writer could read it."""


class CopyPolicy:
    """Whether tensors captured under one name must be copied on the training thread.

    A reference costs nothing, but the writer reads it a little later: a tensor changed in
    place in between (a module output that ``ReLU(inplace=True)`` overwrites, a buffer a module
    reuses) would be read wrong. So a name starts out copied while the hook watches the
    version counters of the originals for ``PROBE_FORWARDS`` forward passes; a counter that
    moved means the name is copied for good, none moving means the name is passed by
    reference from then on. The writer re-checks every reference after reading it, so a
    tensor that changes later is caught too: that one reading is dropped (and recorded), and the
    name goes back to copies. One case escapes both checks: a tensor being overwritten in place
    *during* the writer's read whose version bump (PyTorch bumps it after the in-place kernel)
    lands after the writer's check; it takes a tensor that starts changing in place only after
    its name passed the probes, at exactly that moment.
    """

    __slots__ = ("copy", "probes_left")

    def __init__(self) -> None:
        self.copy = False
        self.probes_left = PROBE_FORWARDS


def torch_stats(t: torch.Tensor) -> np.ndarray:
    """:data:`STAT_FIELDS` of a CPU tensor, matching :func:`_format.numpy_stats`.

    One pass in C when the ``_fastats`` extension is built (~0.1 ms for 400k floats). Without
    it, the all-finite case costs five fast passes (sum, aminmax, dot, zero count, BLAS asum:
    ~1.6 ms for 2.4M floats on one core) and a tensor with a NaN or Inf numpy's masked path.
    """
    if not t.is_floating_point():
        if not HAS_FAST_STATS or t.is_complex():
            return F.numpy_stats(t.numpy())  # (which refuses complex tensors)
        t = _integers_as_float64(t)
    elif t.dtype not in _FLOATS:  # float16 / bfloat16: exact in float32
        t = t.float()
    a = t.reshape(-1).contiguous()
    fast = fast_stats(a.numpy())
    if fast is not None:
        return fast
    n = a.numel()
    if n == 0:
        return F.numpy_stats(a.numpy())
    total = float(a.sum())
    if not math.isfinite(total):
        return F.numpy_stats(a.numpy())
    mn, mx = torch.aminmax(a)
    sumsq = float(torch.dot(a, a))
    if not math.isfinite(sumsq):  # float32 overflow of finite values: redo in float64
        sumsq = float(torch.dot(a.double(), a.double()))
    arr = a.numpy()
    out = np.empty(F.N_STATS, dtype=np.float64)
    out[F.STAT["count"]] = n
    out[F.STAT["nan"]] = 0
    out[F.STAT["posinf"]] = 0
    out[F.STAT["neginf"]] = 0
    out[F.STAT["zero"]] = np.count_nonzero(arr == 0)
    out[F.STAT["min"]] = float(mn)
    out[F.STAT["max"]] = float(mx)
    out[F.STAT["sum"]] = total
    out[F.STAT["sumsq"]] = sumsq
    out[F.STAT["l1"]] = abs_sum_f32(arr)
    return out


def _integers_as_float64(t: torch.Tensor) -> torch.Tensor:
    """An integer or bool tensor as a flat float64 one, for the C statistics pass.

    ``numpy_stats`` measures integers in float64 too, so the statistics are the same; the
    point is speed: numpy's path is a dozen calls of Python per tensor, and the writer pays for
    them holding the GIL that the training thread waits for (labels, predictions and tokens
    are captured every step)."""
    return t.reshape(-1).to(torch.float64)


def _to_numpy(t: torch.Tensor, *, copy: bool = False) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.float().numpy()  # numpy has no bfloat16; float32 holds it exactly (a new array)
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy()
    return np.array(t.numpy(), copy=True) if copy else t.numpy()


class TorchPayload:
    """One tensor at one step, handed from the training thread to the writer.

    Args:
        t: the tensor.
        how: ``"copy"`` (clone it now), ``"ref"`` (keep a reference, check its version counter
            after reading) or ``"owned"`` (``t`` is already a private copy).
        policy: the name's :class:`CopyPolicy`, told when a reference turns out changed.
    """

    __slots__ = ("tensor", "version", "policy", "private", "_stats")

    def __init__(self, t: torch.Tensor, *, how: str = "copy", policy: CopyPolicy | None = None,
                 version: int | None = None) -> None:
        if how == "copy":
            t = t.detach()
        # A reference is kept as the very object the hook saw (the hook's per-step dedupe keys
        # on its id), an owned copy as the object its pool tracks; the writer detaches.
        self.version: int | None = None
        self.policy = policy
        # Only a clone this payload made is nobody else's: values handed out as numpy views of
        # anything else could change before the writer's next flush.
        self.private = how == "copy"
        self._stats: np.ndarray | None = None
        if how == "ref":
            self.tensor = t
            self.version = t._version if version is None else version  # as the hook saw it
        elif how == "owned":
            self.tensor = t
        else:
            self.tensor = t.clone()

    def stats_buffer(self) -> np.ndarray | None:
        """The float32/float64 array whose statistics this payload needs, for the writer to
        compute them with every other tensor of the step in one call; None when they are
        known already or the dtype is another."""
        t = self.tensor
        if self._stats is not None or t is None:
            return None
        if t.dtype in _FLOATS:
            return t.detach().numpy() if t.is_contiguous() else None
        if HAS_FAST_STATS and not t.is_floating_point() and not t.is_complex():
            return _integers_as_float64(t.detach()).numpy()
        return None

    def set_stats(self, stats: Sequence[float] | np.ndarray) -> None:
        """Statistics measured already (by the parameter copier's pass): the writer uses them."""
        self._stats = np.asarray(stats, dtype=np.float64)

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.tensor is not None
        t = self.tensor.detach()
        if self._stats is None:  # one tensor can sit under two names (a conv's output, a ReLU's input)
            self._stats = torch_stats(t)
        values = _to_numpy(t, copy=not self.private) if want_values else None
        if self.version is not None and t._version != self.version:
            if self.policy is not None:
                self.policy.copy = True
            raise ChangedInPlace(_CHANGED)
        return self._stats, values


class ArgmaxPayload(TorchPayload):
    """Class ids (argmax over dimension 1) of a CPU tensor of scores, taken on the writer
    thread: the predictions collection costs the training thread no operation of its own."""

    __slots__ = ("_preds",)

    def _class_ids(self) -> torch.Tensor:
        preds = getattr(self, "_preds", None)
        if preds is None:
            assert self.tensor is not None
            preds = self._preds = self.tensor.detach().argmax(dim=1)
        return preds

    def stats_buffer(self) -> np.ndarray | None:
        # The statistics are those of the class ids: taken here, they join the step's one C call.
        if self._stats is not None or not HAS_FAST_STATS:
            return None
        return _integers_as_float64(self._class_ids()).numpy()

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.tensor is not None
        preds = self._class_ids()
        if self.version is not None and self.tensor._version != self.version:
            if self.policy is not None:
                self.policy.copy = True
            raise ChangedInPlace(_CHANGED)
        stats = self._stats if self._stats is not None else torch_stats(preds)
        return stats, (preds.numpy() if want_values else None)


class ScalarPayload:
    """A number known on the training thread (an update norm the copy pass measured)."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return scalar_stats(self.value), (np.asarray(self.value, dtype=np.float64) if want_values else None)


class UpdatePayload:
    """The optimizer update of one CPU parameter, ``||W_s - W_{s-1}||_2``, computed on the
    writer thread (CUDA parameters: ``_torch_device.DeviceUpdatePayload``)."""

    __slots__ = ("cur", "prev")

    def __init__(self, cur: torch.Tensor, prev: torch.Tensor) -> None:
        self.cur, self.prev = cur, prev

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        # In the parameter's own precision (float32 for most): W_s and W_{s-1} are close, so
        # their difference is exact (Sterbenz), and a float64 copy of both would cost the
        # writer thread ~5x more (it competes with training for the CPU).
        cur, prev = self.cur, self.prev
        if cur.dtype not in _FLOATS:
            cur, prev = cur.float(), prev.float()
        cur, prev = cur.reshape(-1).contiguous(), prev.reshape(-1).contiguous()
        sq = diff_sumsq(cur.numpy(), prev.numpy())
        v = math.sqrt(sq) if sq is not None else float(torch.linalg.vector_norm(torch.sub(cur, prev)))
        arr = np.asarray(v, dtype=np.float64)
        return scalar_stats(v), (arr if want_values else None)


class _Rows:
    """Builds a batch's :class:`_writer.ResolvedRows`: the tensors passed by reference whose
    statistics are read in one C call (``_compat.stats_at``), rows known already, and the
    items left for the writer's per-payload path.

    A reference is read from its memory, then its version counter is checked, as
    :meth:`TorchPayload.resolve` does: a tensor changed in place meanwhile is left out, with an
    error, and its name is copied on the training thread from now on.
    """

    __slots__ = ("names", "kinds", "reads", "specs", "known_rows", "rest", "_spec_of", "_by_tensor")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.kinds: list[tuple[str, Any]] = []
        #: For each spec: the tensor, its version counter as the hook saw it, and its policy.
        self.reads: list[tuple[torch.Tensor, int, CopyPolicy | None]] = []
        self.specs: list[tuple[int, int, int]] = []
        self.known_rows: list[tuple[int, Any]] = []  # (position in names, statistics)
        self.rest: list[StepItem] = []
        self._spec_of: list[int] = []  # per name: its spec, or -1 for a known row
        self._by_tensor: dict[tuple[int, int], int] = {}

    def read(self, name: str, kind: tuple[str, Any], t: torch.Tensor, version: int, policy: CopyPolicy | None) -> bool:
        """Read ``t`` in the bulk call, or return False (not a plain contiguous CPU tensor of
        a dtype the C pass knows, or no extension): the caller then makes it an item, whose
        failure, if any, is that tensor's alone."""
        code = _BULK_CODES.get(t.dtype)
        if code is None or not HAS_FAST_STATS:
            return False
        key = (id(t), version)
        j = self._by_tensor.get(key)
        if j is None:
            try:
                # (A negative-bit view holds its values unnegated in memory; a tensor subclass
                # without storage has no address to read.)
                if not t.is_cpu or not t.is_contiguous() or t.is_neg():
                    return False
                spec = (t.data_ptr(), t.numel(), code)
            except Exception:
                return False
            j = self._by_tensor[key] = len(self.specs)
            self.specs.append(spec)
            self.reads.append((t, version, policy))
        self.names.append(name)
        self.kinds.append(kind)
        self._spec_of.append(j)
        return True

    def known(self, name: str, kind: tuple[str, Any], stats: Any) -> None:
        """A tensor whose statistics were measured already (``F.N_STATS`` numbers)."""
        self.known_rows.append((len(self.names), stats))
        self.names.append(name)
        self.kinds.append(kind)
        self._spec_of.append(-1)

    def finish(self) -> ResolvedRows:
        names, kinds = self.names, self.kinds
        out = np.empty((len(names), F.N_STATS), dtype=np.float64)
        for i, stats in self.known_rows:
            out[i] = stats
        errors: list[tuple[str, str]] = []
        if self.specs:
            read = stats_at(self.specs)
            assert read is not None  # (read() takes nothing without the extension)
            # Only now, after the read: a counter that moved means the read may have seen a change.
            changed = [j for j, (t, version, _) in enumerate(self.reads) if t._version != version]
            spec_of = np.asarray(self._spec_of, dtype=np.intp)
            from_specs = spec_of >= 0
            out[from_specs] = read[spec_of[from_specs]]
            if changed:
                for j in changed:
                    policy = self.reads[j][2]
                    if policy is not None:
                        policy.copy = True
                keep = (~np.isin(spec_of, changed)).tolist()
                errors = [(name, _CHANGED) for name, k in zip(names, keep, strict=True) if not k]
                names = [name for name, k in zip(names, keep, strict=True) if k]
                kinds = [kind for kind, k in zip(kinds, keep, strict=True) if k]
                out = out[np.asarray(keep, dtype=bool)]
        self.reads = []  # let go of the tensors
        return ResolvedRows(names, kinds, out, self.rest, errors)


class ParameterBatch:
    """The parameter tensors of one optimizer step (gradients, weights, update norms), handed
    to the writer as one step item that the writer resolves on its own thread (:meth:`resolve_rows`).

    The optimizer's pre-hook sees every parameter at once; giving each of its tensors its own
    payload and step item cost the training thread ~10 us of Python per tensor (an MLP of four
    layers has 24), out of cache between two large matrix products. An entry is
    ``(name, collection, meta, values_due, kind, a, b)``, ``kind`` saying how the writer gets
    its statistics (or, when its values are due, rebuilds its payload): ``"ref"`` (``a`` the
    tensor, ``b`` its version counter when the hook saw it, with the name's
    :class:`CopyPolicy` last), ``"owned"`` (``a`` a ``ParameterCopy`` of the copier's),
    ``"stats"`` (``a`` the statistics the copier measured, values never due: the batch holds
    no tensor), ``"scalar"`` (``a`` a number) or ``"payload"`` (``a`` a payload made already:
    copies the training thread had to make, CUDA snapshots).

    A step of the steady state (every parameter's gradient passed by reference, its weights
    measured by the copier, no values due) is one entry of kind ``"bulk"``, ``a`` being
    ``(slots, gradients, versions, numbers)``: the hook's ``_ParamSlots`` (anything with
    ``pname`` and ``grad``/``value``/``update`` slots), each parameter's gradient and its
    version counter, and the copier's ``{pname: (statistics, update sum of squares or
    None)}``. The training thread builds that with a few list operations; the per-parameter
    work is the writer's (:meth:`_expand_bulk`).
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    def resolve_rows(self) -> ResolvedRows:
        """The writer's view of the batch (:class:`_writer.ResolvedRows`): gradients passed by
        reference read in one C call, the copier's weights and update norms from the numbers
        it measured already; values that are due, copies and device payloads as items."""
        rows = _Rows()
        for i, (name, collection, meta, values, kind, a, b, *rest) in enumerate(self.entries, 1):
            if i % GIL_YIELD_ITEMS == 0:
                yield_gil(GIL_YIELD_SECONDS)
            if kind == "stats":
                rows.known(name, (collection, meta), a)
                continue
            if kind == "bulk":
                self._expand_bulk(rows, *a)
                continue
            if not values:
                if kind == "ref" and rows.read(name, (collection, meta), a, b, rest[0] if rest else None):
                    continue
                if kind == "owned" and a.stats is not None:
                    rows.known(name, (collection, meta), a.stats)
                    continue
                if kind == "scalar":
                    rows.known(name, (collection, meta), scalar_stats(a))
                    continue
            if kind == "ref":
                payload: Any = TorchPayload(a, how="ref", policy=rest[0] if rest else None, version=b)
            elif kind == "owned":
                payload = TorchPayload(a.tensor, how="owned")
                if a.stats is not None:
                    payload.set_stats(a.stats)
            elif kind == "scalar":
                payload = ScalarPayload(a)
            else:
                payload = a
            rows.rest.append(StepItem(name, collection, payload, values, meta))
        self.entries = []
        return rows.finish()

    @staticmethod
    def _expand_bulk(rows: _Rows, slots: Sequence[Any], grads: Sequence[torch.Tensor], versions: Sequence[int],
                     numbers: dict[str, tuple[Any, float | None]]) -> None:
        """A ``"bulk"`` entry's rows: each gradient read by reference (or, when the bulk read
        cannot take it, an item of its own), each parameter's statistics and update norm from
        the copier's numbers."""
        for i, (ps, grad, version) in enumerate(zip(slots, grads, versions, strict=True), 1):
            if i % GIL_YIELD_ITEMS == 0:
                yield_gil(GIL_YIELD_SECONDS)
            g = ps.grad
            if not rows.read(g.name, ("gradients", g.meta), grad, version, g.policy):
                payload = TorchPayload(grad, how="ref", policy=g.policy, version=version)
                rows.rest.append(StepItem(g.name, "gradients", payload, False, g.meta))
            stats, update_sumsq = numbers[ps.pname]
            value = ps.value
            rows.known(value.name, (value.collection, value.meta), stats)
            if update_sumsq is not None:
                update = ps.update
                rows.known(update.name, ("updates", update.meta), scalar_stats(math.sqrt(update_sumsq)))

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        raise RuntimeError("a ParameterBatch is read in bulk by the writer (resolve_rows), never resolved itself")


class ReferenceBatch:
    """The CPU tensors of one step that the hooks pass by reference (module outputs, activation
    inputs, the model's input, the loss, labels and predictions), handed to the writer as one
    step item that it resolves on its own thread (:meth:`resolve_rows`).

    A module hook runs for every module at every step, between two large matrix products that
    leave the interpreter's caches cold: building a payload and a step item for each tensor
    there cost the training thread ~15 us a tensor. Here a hook appends
    ``(slot, tensor, version counter, values due, payload type)`` to ``entries``, and the writer
    reads the tensors in bulk (or makes payloads for those that need one). A name recorded
    twice in a step (gradient accumulation) keeps its last tensor, as :meth:`StepRecord.put` does: ``index`` maps a name to its entry, and a name
    moved to another step item is dropped with :meth:`discard`. ``slot`` is anything with
    ``name``, ``collection``, ``meta`` and ``policy`` attributes (the hook's slots).
    """

    __slots__ = ("entries", "index", "due")

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...] | None] = []
        self.index: dict[str, int] = {}
        #: The step's ``(stats, values)`` due per collection, as the hook looked them up.
        self.due: dict[str, tuple[bool, bool]] = {}

    def add(self, slot: Any, t: torch.Tensor, version: int, values: bool, payload_type: type[TorchPayload]) -> None:
        i = self.index.get(slot.name)
        if i is None:
            self.index[slot.name] = len(self.entries)
            self.entries.append((slot, t, version, values, payload_type))
        else:
            self.entries[i] = (slot, t, version, values, payload_type)

    def discard(self, name: str) -> None:
        i = self.index.pop(name, None)
        if i is not None:
            self.entries[i] = None

    def resolve_rows(self) -> ResolvedRows:
        """The writer's view of the batch (:class:`_writer.ResolvedRows`): the tensors whose
        values are not due read in one C call, the others as items. One tensor under two
        names (a layer's output is the next activation's input) is read once; the references
        keep the tensors alive, so no other tensor of the step can have the same id."""
        rows = _Rows()
        shared: dict[tuple[int, int], TorchPayload] = {}
        # (The hook keeps this batch until the next step's opens: it lets go of the tensors now.)
        entries, self.entries, self.index = self.entries, [], {}
        for i, entry in enumerate(entries, 1):
            if i % GIL_YIELD_ITEMS == 0:  # the writer's Python in pieces (see GIL_YIELD_ITEMS)
                yield_gil(GIL_YIELD_SECONDS)
            if entry is None:
                continue
            slot, t, version, values, payload_type = entry
            if payload_type is TorchPayload:
                if not values and rows.read(slot.name, (slot.collection, slot.meta), t, version, slot.policy):
                    continue
                key = (id(t), version)
                payload = shared.get(key)
                if payload is None:
                    payload = shared[key] = TorchPayload(t, how="ref", policy=slot.policy, version=version)
            else:  # a payload that transforms the tensor is its own
                payload = payload_type(t, how="ref", policy=slot.policy, version=version)
            rows.rest.append(StepItem(slot.name, slot.collection, payload, values, slot.meta))
        return rows.finish()

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        raise RuntimeError("a ReferenceBatch is read in bulk by the writer (resolve_rows), never resolved itself")
