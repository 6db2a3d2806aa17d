"""Statistics of CUDA tensors, many tensors to a handful of kernels.

A GPU training step is short on the host: the training thread launches kernels and the device
runs them later. Reducing each captured tensor on its own costs ~20 kernel launches (counts,
min, max, sums), ~10 us of host time each, for every tensor of every step: an MLP's ~40 tensors
made its 1.3 ms step 12-15x longer on an H200 (docs/BENCHMARKS.md, "Capture on a GPU"). So the
hook collects a step's CUDA tensors in a :class:`DeviceStatsBatch` and reduces them together
when the step's tensors stop being safe to read (before ``optimizer.step()`` changes the
weights, or when the step ends): one concatenation, then each statistic for all tensors at once
with ``torch.segment_reduce``; the ``(tensors, N_STATS)`` result goes to pinned host memory with
one asynchronous copy and one event. Nothing on the training thread waits for the device.

A tensor reaches the batch by reference when nothing changes it in place before the batch is
reduced (the version counter says so; :class:`CopyPolicy` learns which names need a copy, as
on CPU), else as a device copy. A reference that changed anyway is dropped and recorded, never
read wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import _format as F
from ._torch_snapshot import ChangedInPlace, CopyPolicy, _to_numpy, scalar_stats

__all__ = ["DeviceStatsBatch", "DevicePayload", "DeviceUpdatePayload", "batched_device_stats", "finish_device_stats"]

#: Elements reduced by one batch at most: its temporaries (a float32 concatenation and float64
#: terms, ~22 bytes an element) stay under ~350 MB, and references it holds to tensors autograd
#: would have freed (eval under ``no_grad``) stay bounded. A step with more is reduced in parts.
MAX_BATCH_ELEMENTS = 1 << 24

_F64 = torch.float64


def finish_device_stats(stats: np.ndarray) -> np.ndarray:
    """Host-side touch to a row of :func:`batched_device_stats`: min/max are NaN when no value
    was finite (the device reduction leaves +Inf/-Inf there), as ``numpy_stats`` has them."""
    finite = stats[F.STAT["count"]] - stats[F.STAT["nan"]] - stats[F.STAT["posinf"]] - stats[F.STAT["neginf"]]
    if finite <= 0:
        stats[F.STAT["min"]] = stats[F.STAT["max"]] = np.nan
    return stats


def _group_stats(flats: Sequence[torch.Tensor], lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(len(flats), N_STATS)`` float64 statistics of 1-D tensors, concatenated in ``dtype``."""
    x = torch.cat([f.to(dtype) for f in flats]) if len(flats) > 1 else flats[0].to(dtype)

    def seg(v: torch.Tensor, how: str = "sum", initial: float | None = None) -> torch.Tensor:
        # unsafe: skip segment_reduce's argument checks, which read the lengths on the host
        return torch.segment_reduce(v, how, lengths=lengths, unsafe=True, initial=initial)

    finite = torch.isfinite(x)
    fin = torch.where(finite, x, 0.0).to(_F64)
    columns = [
        lengths.to(_F64),
        seg(torch.isnan(x).to(_F64)),
        seg((x == math.inf).to(_F64)),
        seg((x == -math.inf).to(_F64)),
        seg((x == 0).to(_F64)),
        seg(torch.where(finite, x, math.inf), "min", math.inf).to(_F64),
        seg(torch.where(finite, x, -math.inf), "max", -math.inf).to(_F64),
        seg(fin),
        seg(fin * fin),
        seg(fin.abs()),
    ]
    return torch.stack(columns, dim=1)


def batched_device_stats(tensors: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The :data:`STAT_FIELDS` of each tensor (all on one device) as one ``(len(tensors),
    N_STATS)`` float64 tensor on that device, launched asynchronously: a few dozen kernels
    whatever the number of tensors, no host round trip.

    Floating tensors other than float64 are reduced in float32 (float16 and bfloat16 exactly);
    float64, integer and boolean tensors in float64 (integers exactly up to 2**53).
    ``lengths``, when given, are the element counts as device int64 tensors, one per group in
    the order :func:`_groups` yields them (the caller caches them; see :class:`DeviceStatsBatch`).
    """
    groups = _groups(tensors)
    out: list[torch.Tensor] = []
    order: list[int] = []
    for g, (dtype, idx) in enumerate(groups):
        flats = [tensors[i].reshape(-1) for i in idx]
        lens = lengths[g] if lengths is not None else _device_lengths([f.numel() for f in flats], flats[0].device)
        out.append(_group_stats(flats, lens, dtype))
        order.extend(idx)
    stats = torch.cat(out) if len(out) > 1 else out[0]
    if order != sorted(order):
        inverse = [0] * len(order)
        for row, i in enumerate(order):
            inverse[i] = row
        stats = stats[_device_lengths(inverse, stats.device)]
    return stats


def _groups(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.dtype, list[int]]]:
    narrow = [i for i, t in enumerate(tensors) if t.is_floating_point() and t.dtype != _F64]
    wide = [i for i, t in enumerate(tensors) if not (t.is_floating_point() and t.dtype != _F64)]
    return [(dt, idx) for dt, idx in ((torch.float32, narrow), (_F64, wide)) if idx]


def _device_lengths(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """An int64 device tensor of ``values`` without waiting: ``torch.tensor(..., device=)``
    copies from pageable memory and synchronises; a pinned copy does not."""
    host = torch.tensor(values, dtype=torch.int64)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host


class _BatchResult:
    """A batch's statistics on their way to the host: pinned rows and the event after them."""

    __slots__ = ("host", "event", "ready")

    def __init__(self, host: torch.Tensor, event: Any) -> None:
        self.host, self.event, self.ready = host, event, False

    def row(self, i: int) -> np.ndarray:
        if not self.ready:
            self.event.synchronize()
            self.ready = True
        return finish_device_stats(self.host[i].numpy().copy())


class DevicePayload:
    """One CUDA tensor at one step: its statistics come from its :class:`DeviceStatsBatch`;
    its values, when due, are copied to pinned host memory at once (stream-ordered: the values
    as they are now)."""

    __slots__ = ("tensor", "version", "policy", "host_values", "result", "row", "changed")

    def __init__(self, t: torch.Tensor, batch: DeviceStatsBatch, *, values: bool, how: str = "copy",
                 policy: CopyPolicy | None = None) -> None:
        t = t.detach()
        if how == "copy":
            t = t.clone()
        self.tensor: torch.Tensor | None = t
        self.version: int | None = t._version if how == "ref" else None
        self.policy = policy
        self.host_values: torch.Tensor | None = None
        if values:
            self.host_values = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host_values.copy_(t, non_blocking=True)
        self.result: _BatchResult | None = None
        self.row = -1
        self.changed = False
        batch.add(self)

    def want_values(self) -> None:
        """Copy the values too (a second name of the same tensor wants them at this step)."""
        if self.host_values is None and self.tensor is not None:
            self.host_values = torch.empty(self.tensor.shape, dtype=self.tensor.dtype, pin_memory=True)
            self.host_values.copy_(self.tensor, non_blocking=True)

    def stats(self) -> np.ndarray:
        if self.changed:
            raise ChangedInPlace("changed in place before capture could read it; copied on the training thread from now on")
        if self.result is None:
            raise RuntimeError("its statistics were never computed (the step was handed over before its batch was reduced)")
        return self.result.row(self.row)

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        stats = self.stats()  # waits for the batch's event, which also covers the values' copy
        values = _to_numpy(self.host_values) if (want_values and self.host_values is not None) else None
        return stats, values


class DeviceUpdatePayload:
    """``||W_s - W_{s-1}||_2`` of a CUDA parameter: the difference goes into the batch, whose
    sum of squares gives the norm (NaN or Inf if the difference holds one)."""

    __slots__ = ("diff",)

    def __init__(self, cur: torch.Tensor, prev: torch.Tensor, batch: DeviceStatsBatch) -> None:
        if cur.dtype not in (torch.float32, torch.float64):  # float16 / bfloat16: exact in float32
            cur, prev = cur.float(), prev.float()
        self.diff = DevicePayload(torch.sub(cur, prev), batch, values=False, how="owned")

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.diff.stats()
        if s[F.STAT["nan"]] > 0:
            v = math.nan
        elif s[F.STAT["posinf"]] + s[F.STAT["neginf"]] > 0:
            v = math.inf
        else:
            v = math.sqrt(s[F.STAT["sumsq"]])
        return scalar_stats(v), (np.asarray(v, dtype=np.float64) if want_values else None)


class DeviceStatsBatch:
    """The CUDA tensors of the current step waiting to be reduced together (see the module's
    docstring). The hook calls :meth:`launch` before anything may change them: at the
    optimizer's pre-hook and whenever a step ends."""

    def __init__(self) -> None:
        self.pending: list[DevicePayload] = []
        self.elements = 0
        self._lengths: dict[tuple[Any, ...], list[torch.Tensor]] = {}

    def add(self, payload: DevicePayload) -> None:
        assert payload.tensor is not None
        self.pending.append(payload)
        self.elements += payload.tensor.numel()
        if self.elements >= MAX_BATCH_ELEMENTS:
            self.launch()

    def launch(self) -> None:
        """Reduce the pending tensors (asynchronously) and release them."""
        if not self.pending:
            return
        pending, self.pending, self.elements = self.pending, [], 0
        by_device: dict[torch.device, list[DevicePayload]] = {}
        for p in pending:
            t = p.tensor
            assert t is not None
            if p.version is not None and t._version != p.version:
                p.changed, p.tensor = True, None
                if p.policy is not None:
                    p.policy.copy = True
                continue
            by_device.setdefault(t.device, []).append(p)
        for device, payloads in by_device.items():
            self._launch_one(device, payloads)

    def _launch_one(self, device: torch.device, payloads: list[DevicePayload]) -> None:
        tensors: list[torch.Tensor] = [p.tensor for p in payloads]  # type: ignore[misc]
        # In group order, so that the rows come back in the payloads' order with no gather.
        order = [i for _, idx in _groups(tensors) for i in idx]
        payloads, tensors = [payloads[i] for i in order], [tensors[i] for i in order]
        stats = batched_device_stats(tensors, self._cached_lengths(device, tensors))
        host = torch.empty(stats.shape, dtype=_F64, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        result = _BatchResult(host, event)
        for row, p in enumerate(payloads):
            p.result, p.row, p.tensor = result, row, None

    def _cached_lengths(self, device: torch.device, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The per-group element counts on the device; a training loop repeats a few layouts,
        so each is copied to the device once."""
        key = (device, *((t.dtype, t.numel()) for t in tensors))
        lens = self._lengths.get(key)
        if lens is None:
            if len(self._lengths) >= 64:
                self._lengths.clear()
            lens = self._lengths[key] = [_device_lengths([tensors[i].numel() for i in idx], device) for _, idx in _groups(tensors)]
        return lens
