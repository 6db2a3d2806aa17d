"""Statistics of CUDA tensors, many tensors to a handful of kernels.

A GPU training step is short on the host: the training thread launches kernels and the device
runs them later. Reducing each captured tensor on its own costs ~20 kernel launches (counts,
min, max, sums), ~10 us of host time each, for every tensor of every step: an MLP's ~40 tensors
made its 1.3 ms step 12-15x longer on an H200 (docs/BENCHMARKS.md, "Capture on a GPU"). So the
hook collects a step's CUDA tensors in a :class:`DeviceStatsBatch` and reduces them together
when the step's tensors stop being safe to read (before ``optimizer.step()`` changes the
weights, or when the step ends): one concatenation, then each statistic for all tensors at once,
as row-wise reductions of the concatenation (each tensor padded to whole rows), whose rows
are then summed into their tensors; the ``(tensors, N_STATS)`` result goes to pinned host memory with
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

#: Elements reduced by one batch at most: its temporaries (a float64 concatenation and terms,
#: ~30 bytes an element) stay under ~250 MB, and references it holds to tensors autograd would
#: have freed (eval under ``no_grad``) stay bounded. A step with more is reduced in parts.
MAX_BATCH_ELEMENTS = 1 << 23

_F64 = torch.float64


def finish_device_stats(stats: np.ndarray) -> np.ndarray:
    """Host-side touch to a row of :func:`batched_device_stats`: min/max are NaN when no value
    was finite (the device reduction leaves +Inf/-Inf there), as ``numpy_stats`` has them."""
    finite = stats[F.STAT["count"]] - stats[F.STAT["nan"]] - stats[F.STAT["posinf"]] - stats[F.STAT["neginf"]]
    if finite <= 0:
        stats[F.STAT["min"]] = stats[F.STAT["max"]] = np.nan
    return stats


#: Elements per row of the reduction: each tensor is padded (with NaN) to whole rows, so that
#: no row holds two tensors and every statistic is one row-wise reduction of the whole batch.
ROW = 2048


class _Layout:
    """How a batch's tensors are laid out in rows: each tensor's padding, which tensor owns
    each row (made once per list of sizes, and cached by :class:`DeviceStatsBatch`).

    The batch is reduced in float64: float32, float16 and bfloat16 values exactly, integers
    exactly up to 2**53. (A float32 group for the floating tensors besides cost ~35 more
    launches a step: on a GPU, launches are the cost, not the device's arithmetic.)
    """

    __slots__ = ("pads", "row_owner", "counts", "pad_counts", "nan_pad")

    def __init__(self, numels: list[int], device: torch.device) -> None:
        rows = [-(-n // ROW) for n in numels]
        self.pads = [r * ROW - n for r, n in zip(rows, numels, strict=True)]
        owner = np.repeat(np.arange(len(numels), dtype=np.int64), rows)
        self.row_owner = _to_device(torch.from_numpy(owner), device)
        self.counts = _to_device(torch.tensor(numels, dtype=_F64), device)
        self.pad_counts = _to_device(torch.tensor(self.pads, dtype=_F64), device)
        self.nan_pad = torch.full((ROW,), math.nan, dtype=_F64, device=device)


def batched_device_stats(tensors: Sequence[torch.Tensor], layout: _Layout | None = None) -> torch.Tensor:
    """The :data:`STAT_FIELDS` of each tensor (all on one device) as one ``(len(tensors),
    N_STATS)`` float64 tensor on that device, launched asynchronously: about 30 kernels whatever
    the number of tensors, and no host round trip. A reduction per row of the padded
    concatenation, then the rows' partial results summed (or min/max-ed) into their tensors'.
    ``layout`` is ``_Layout`` of the tensors' sizes, which a caller that sees the same tensors
    every step caches.
    """
    with torch.no_grad():
        g = layout if layout is not None else _Layout([t.numel() for t in tensors], tensors[0].device)
        return _reduce(tensors, g)


def _reduce(tensors: Sequence[torch.Tensor], g: _Layout) -> torch.Tensor:
    parts: list[torch.Tensor] = []
    for t, pad in zip(tensors, g.pads, strict=True):
        parts.append(t.reshape(-1))
        if pad:
            parts.append(g.nan_pad[:pad])
    x = torch.cat(parts).to(_F64).view(-1, ROW)  # (cat promotes float16, bfloat16, integers)
    finite = torch.isfinite(x)
    fin = torch.where(finite, x, 0.0)
    # nan (with the padding, taken off below), +inf, -inf, zero: one reduction for the four
    counts = torch.stack([torch.isnan(x), x == math.inf, x == -math.inf, x == 0], dim=2).sum(1, dtype=_F64)
    partial = torch.cat([counts, torch.stack([fin.sum(1), (fin * fin).sum(1), fin.abs().sum(1)], dim=1)], dim=1)
    k = len(tensors)
    sums = torch.zeros((k, 7), dtype=_F64, device=x.device).index_add_(0, g.row_owner, partial)
    mins = torch.full((k,), math.inf, dtype=_F64, device=x.device).scatter_reduce_(
        0, g.row_owner, torch.where(finite, x, math.inf).amin(1), "amin")
    maxs = torch.full((k,), -math.inf, dtype=_F64, device=x.device).scatter_reduce_(
        0, g.row_owner, torch.where(finite, x, -math.inf).amax(1), "amax")
    return torch.stack([g.counts, sums[:, 0] - g.pad_counts, sums[:, 1], sums[:, 2], sums[:, 3], mins, maxs,
                        sums[:, 4], sums[:, 5], sums[:, 6]], dim=1)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without waiting: ``torch.tensor(..., device=)`` copies from
    pageable memory and synchronises; a copy from pinned memory does not."""
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
        if how == "copy":
            t = t.detach().clone()
        # A reference is the very object the hook saw: the hook's per-step dedupe keys on its
        # id, which must not be reused while this payload lives.
        self.tensor: torch.Tensor | None = t
        self.version: int | None = t._version if how == "ref" else None
        self.policy = policy
        self.host_values: torch.Tensor | None = None
        if values:
            self.want_values()
        self.result: _BatchResult | None = None
        self.row = -1
        self.changed = False
        batch.add(self)

    def want_values(self) -> None:
        """Copy the values too (a second name of the same tensor wants them at this step)."""
        t = self.tensor
        if self.host_values is None and t is not None:
            self.host_values = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host_values.copy_(t.detach(), non_blocking=True)

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
        self._layouts: dict[tuple[Any, ...], _Layout] = {}

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
        stats = batched_device_stats(tensors, self._cached_layout(device, tensors))
        host = torch.empty(stats.shape, dtype=_F64, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        result = _BatchResult(host, event)
        for row, p in enumerate(payloads):
            p.result, p.row, p.tensor = result, row, None

    def _cached_layout(self, device: torch.device, tensors: Sequence[torch.Tensor]) -> _Layout:
        """A training loop repeats a few layouts (the sizes of a step's tensors): each is
        made, and its row owners copied to the device, once."""
        numels = [t.numel() for t in tensors]
        key = (device, *numels)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= 64:
                self._layouts.clear()
            layout = self._layouts[key] = _Layout(numels, device)
        return layout
