"""Statistics of CUDA tensors, many tensors to a handful of kernels.

A GPU training step is short on the host: the training thread launches kernels and the device
runs them later. Reducing each captured tensor on its own costs ~20 kernel launches (counts,
min, max, sums), ~10 us of host time each, for every tensor of every step: an MLP's ~40 tensors
made its 1.3 ms step 12-15x longer on an H200 (docs/BENCHMARKS.md, "Capture on a GPU"). So the
hook collects a step's CUDA tensors in a :class:`DeviceStatsBatch` and reduces them together
when the step's tensors stop being safe to read (before ``optimizer.step()`` changes the
weights, or when the step ends): the tensors are laid out as float64 rows (each tensor padded to
whole rows, :class:`_Layout`), then each statistic for all tensors at once, as row-wise
reductions, whose rows are then summed into their tensors; the ``(tensors, N_STATS)`` result
goes to pinned host memory with one asynchronous copy and one event. Nothing on the training
thread waits for the device. Those ~25 reduction kernels still cost a launch-bound step ~1.3 ms
of host time, so a layout that repeats (a training loop's steps) has them captured once as a
CUDA graph and replayed, one launch a step (:class:`_GraphedReduction`).

A tensor reaches the batch by reference when nothing changes it in place before the batch is
reduced (the version counter says so; :class:`CopyPolicy` learns which names need a copy, as
on CPU), else as a device copy. A reference that changed anyway is dropped and recorded, never
read wrong.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors as flatten_dense_tensors

from . import _format as F
from ._torch_snapshot import ChangedInPlace, CopyPolicy, _to_numpy, scalar_stats

__all__ = ["DeviceStatsBatch", "DevicePayload", "DeviceUpdatePayload", "batched_device_stats", "finish_device_stats_rows",
           "parameter_differences", "snapshot_parameters"]

#: Elements reduced by one batch at most: its temporaries (a float64 concatenation and terms,
#: ~30 bytes an element) stay under ~250 MB, and references it holds to tensors autograd would
#: have freed (eval under ``no_grad``) stay bounded. A step with more is reduced in parts.
MAX_BATCH_ELEMENTS = 1 << 23

_F64 = torch.float64

log = logging.getLogger("trainaudit.capture")


def finish_device_stats_rows(stats: np.ndarray) -> np.ndarray:
    """Host-side touch to the ``(tensors, N_STATS)`` result of :func:`batched_device_stats`,
    in place: min/max are NaN where no value was finite (the device reduction leaves +Inf/-Inf
    there), as ``numpy_stats`` has them."""
    finite = stats[:, F.STAT["count"]] - stats[:, F.STAT["nan"]] - stats[:, F.STAT["posinf"]] - stats[:, F.STAT["neginf"]]
    none = finite <= 0
    if none.any():
        stats[none, F.STAT["min"]] = np.nan
        stats[none, F.STAT["max"]] = np.nan
    return stats


#: Elements per row of the reduction: each tensor is padded (with NaN) to whole rows, so that
#: no row holds two tensors and every statistic is one row-wise reduction of the whole batch.
ROW = 2048

#: Tensors of at least this many elements are copied into the batch's rows one by one (one
#: launch each, reading them once); smaller ones are concatenated together (see _Layout).
BIG = 1 << 18


class _Layout:
    """How a batch's tensors are laid out in rows: each tensor's padding, which tensor owns
    each row (made once per list of sizes and dtypes, and cached by :class:`DeviceStatsBatch`).

    The batch is reduced in float64: float32, float16 and bfloat16 values exactly, integers
    exactly up to 2**53. (A float32 group for the floating tensors besides cost ~35 more
    launches a step: on a GPU, launches are the cost, not the device's arithmetic.)

    The rows are filled two ways. Small tensors (most of a step's: parameters, gradients, a
    small batch's activations), where launches are the cost, by concatenations of one dtype
    each: CUDA joins a same-dtype list with one kernel, a mixed one may copy each input with a
    kernel of its own. Their tensors are concatenated by dtype and converted to float64 (two
    launches a dtype), then interleaved with NaN padding by one more concatenation. Big
    tensors (a large batch's activations), where the device's memory traffic is the cost, by
    one conversion each straight into their rows (and a fill of their padding), not by three
    passes of concatenation. Small tensors' rows come first; the rows' owners say whose they
    are.
    """

    __slots__ = ("tensors", "rows", "small_rows", "row_owner", "counts", "pad_counts", "groups", "order", "pad_views",
                 "big", "uses", "graph")

    def __init__(self, numels: list[int], dtypes: list[torch.dtype], device: torch.device) -> None:
        self.tensors = len(numels)
        self.uses = 0
        # Its reduction as a CUDA graph (made by DeviceStatsBatch when the layout repeats);
        # False once making one failed.
        self.graph: _GraphedReduction | bool | None = None
        rows = [-(-n // ROW) for n in numels]
        pads = [r * ROW - n for r, n in zip(rows, numels, strict=True)]
        small = [i for i, n in enumerate(numels) if n < BIG]
        big_idx = [i for i, n in enumerate(numels) if n >= BIG]
        # Small tensors by dtype (first-seen order), and where each one's values sit in the
        # groups' pieces: (group, position in the group), in row order.
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in small:
            by_dtype.setdefault(dtypes[i], []).append(i)
        self.groups = [(idx, [numels[i] for i in idx]) for idx in by_dtype.values()]
        where = {i: (gi, k) for gi, idx in enumerate(by_dtype.values()) for k, i in enumerate(idx)}
        self.order = [where[i] for i in small]
        nan_pad = torch.full((ROW,), math.nan, dtype=_F64, device=device)
        self.pad_views = [nan_pad[: pads[i]] if pads[i] else None for i in small]
        self.small_rows = sum(rows[i] for i in small)
        # Big tensors: (index, its first element in the rows, elements, the end of its rows).
        self.big: list[tuple[int, int, int, int]] = []
        start = self.small_rows * ROW
        for i in big_idx:
            self.big.append((i, start, numels[i], start + rows[i] * ROW))
            start += rows[i] * ROW
        self.rows = start // ROW
        row_order = small + big_idx
        owner = np.repeat(np.array(row_order, dtype=np.int64), [rows[i] for i in row_order])
        self.row_owner = _to_device(torch.from_numpy(owner), device)
        self.counts = _to_device(torch.tensor(numels, dtype=_F64), device)
        self.pad_counts = _to_device(torch.tensor(pads, dtype=_F64), device)


def batched_device_stats(tensors: Sequence[torch.Tensor], layout: _Layout | None = None) -> torch.Tensor:
    """The :data:`STAT_FIELDS` of each tensor (all on one device) as one ``(len(tensors),
    N_STATS)`` float64 tensor on that device, launched asynchronously: about 30 kernels whatever
    the number of small tensors, and no host round trip. A reduction per row of the padded
    float64 rows, then the rows' partial results summed (or min/max-ed) into their tensors'.
    ``layout`` is ``_Layout`` of the tensors' sizes and dtypes, which a caller that sees the
    same tensors every step caches.
    """
    with torch.no_grad():
        g = layout if layout is not None else _Layout([t.numel() for t in tensors], [t.dtype for t in tensors],
                                                      tensors[0].device)
        return _reduce(tensors, g)


def _padded_rows(tensors: Sequence[torch.Tensor], g: _Layout, out: torch.Tensor | None = None) -> torch.Tensor:
    """The tensors' values as ``(g.rows, ROW)`` float64, each tensor NaN-padded to whole rows
    (see :class:`_Layout`), written into ``out`` when given."""
    small_len = g.small_rows * ROW
    x = torch.empty(g.rows * ROW, dtype=_F64, device=tensors[0].device) if out is None else out.view(-1)
    if g.small_rows:
        pieces: list[list[torch.Tensor]] = []
        for idx, sizes in g.groups:
            # (flatten_dense_tensors: the flattening and concatenation in one call into C++)
            flat = flatten_dense_tensors([tensors[i] for i in idx]) if len(idx) > 1 else tensors[idx[0]].reshape(-1)
            pieces.append(list(flat.to(_F64).split(sizes)))
        parts: list[torch.Tensor] = []
        for (gi, k), pad in zip(g.order, g.pad_views, strict=True):
            parts.append(pieces[gi][k])
            if pad is not None:
                parts.append(pad)
        torch.cat(parts, out=x[:small_len])
    for i, start, n, end in g.big:
        x[start : start + n].copy_(tensors[i].reshape(-1))
        if end > start + n:
            x[start + n : end].fill_(math.nan)
    return x.view(-1, ROW)


def _reduce(tensors: Sequence[torch.Tensor], g: _Layout) -> torch.Tensor:
    return _reduce_rows(_padded_rows(tensors, g), g)


def _reduce_rows(x: torch.Tensor, g: _Layout) -> torch.Tensor:
    """The statistics of the tensors laid out in ``x`` by ``g`` (~25 kernels, no host sync:
    what :class:`_GraphedReduction` captures)."""
    finite = torch.isfinite(x)
    fin = torch.where(finite, x, 0.0)
    # nan (with the padding, taken off below), +inf, -inf, zero: one reduction for the four
    counts = torch.stack([torch.isnan(x), x == math.inf, x == -math.inf, x == 0], dim=2).sum(1, dtype=_F64)
    partial = torch.cat([counts, torch.stack([fin.sum(1), (fin * fin).sum(1), fin.abs().sum(1)], dim=1)], dim=1)
    k = g.tensors
    sums = torch.zeros((k, 7), dtype=_F64, device=x.device).index_add_(0, g.row_owner, partial)
    mins = torch.full((k,), math.inf, dtype=_F64, device=x.device).scatter_reduce_(
        0, g.row_owner, torch.where(finite, x, math.inf).amin(1), "amin")
    maxs = torch.full((k,), -math.inf, dtype=_F64, device=x.device).scatter_reduce_(
        0, g.row_owner, torch.where(finite, x, -math.inf).amax(1), "amax")
    return torch.stack([g.counts, sums[:, 0] - g.pad_counts, sums[:, 1], sums[:, 2], sums[:, 3], mins, maxs,
                        sums[:, 4], sums[:, 5], sums[:, 6]], dim=1)


#: Padded elements of the batches whose reductions are kept as CUDA graphs (per
#: DeviceStatsBatch; see _GraphedReduction): a graph holds its static rows (8 bytes an element)
#: and its temporaries' memory pool for good, so the graphs of one hook hold ~550 MB of device
#: memory at most (an estimate from the temporaries' sizes, ~25 bytes an element at their
#: peak; not measured). A layout past the budget stays eager.
GRAPH_BUDGET_ELEMENTS = 1 << 24


class _GraphedReduction:
    """:func:`_reduce_rows` of one layout captured once as a CUDA graph, replayed each step.

    A GPU step of a small model is launch-bound: the reduction's ~25 kernels cost the training
    thread ~1.3 ms a step on an H200 host, a replay one launch. The graph reads a static
    buffer of rows, which each step fills (by the few launches of ``_padded_rows``) before the
    replay, and writes a static result, which the caller copies to the host before the next
    replay can overwrite it (both on the current stream: a stream switch between steps is
    ordered by a wait). Its temporaries live in the graph's own memory pool, about what the
    eager reduction keeps cached in PyTorch's allocator (~50 bytes an element of ``rows``).

    Captured on a side stream, with ``thread_local`` error mode (the writer thread may wait on
    events meanwhile), and with no device synchronisation (unlike ``torch.cuda.graph``'s
    context manager, which synchronises the device on entry).
    """

    __slots__ = ("rows", "result", "graph", "stream")

    def __init__(self, g: _Layout, device: torch.device) -> None:
        rows = torch.empty((g.rows, ROW), dtype=_F64, device=device)
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            rows.zero_()
            _reduce_rows(rows, g)  # warm-up, outside the capture
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                result = _reduce_rows(rows, g)
            finally:
                graph.capture_end()
        current.wait_stream(side)
        self.rows, self.result, self.graph, self.stream = rows, result, graph, current

    def __call__(self, tensors: Sequence[torch.Tensor], g: _Layout) -> torch.Tensor:
        current = torch.cuda.current_stream(self.rows.device)
        if current != self.stream:  # the last replay and its copy were queued on another stream
            current.wait_stream(self.stream)
            self.stream = current
        _padded_rows(tensors, g, out=self.rows)
        self.graph.replay()
        return self.result


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without waiting: ``torch.tensor(..., device=)`` copies from
    pageable memory and synchronises; a copy from pinned memory does not."""
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host


class _BatchResult:
    """A batch's statistics on their way to the host: pinned rows and the event after them.
    The writer reads every row of a batch, so the first read finishes all of them at once
    (one wait, one numpy pass): the writer's Python holds the GIL that a GPU training loop,
    launch-bound on the host, waits for."""

    __slots__ = ("host", "event", "rows")

    def __init__(self, host: torch.Tensor, event: Any) -> None:
        self.host, self.event = host, event
        self.rows: np.ndarray | None = None

    def row(self, i: int) -> np.ndarray:
        rows = self.rows
        if rows is None:
            self.event.synchronize()
            rows = self.rows = finish_device_stats_rows(self.host.numpy().copy())
        return rows[i]


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

    def __init__(self, diff: torch.Tensor, batch: DeviceStatsBatch) -> None:
        self.diff = DevicePayload(diff, batch, values=False, how="owned")

    def resolve(self, want_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.diff.stats()
        if s[F.STAT["nan"]] > 0:
            v = math.nan
        elif s[F.STAT["posinf"]] + s[F.STAT["neginf"]] > 0:
            v = math.inf
        else:
            v = math.sqrt(s[F.STAT["sumsq"]])
        return scalar_stats(v), (np.asarray(v, dtype=np.float64) if want_values else None)


def parameter_differences(cur: Sequence[torch.Tensor], prev: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``cur[i] - prev[i]`` for CUDA parameters and their previous snapshots, float32 and
    float64 ones by one ``torch._foreach_sub`` (a launch or two for all of them, not one each);
    float16 and bfloat16 ones in float32, where their difference is exact."""
    out: list[torch.Tensor | None] = [None] * len(cur)
    with torch.no_grad():
        exact = [i for i, t in enumerate(cur) if t.dtype in (torch.float32, torch.float64) and prev[i].dtype == t.dtype]
        if exact:
            for i, diff in zip(exact, torch._foreach_sub([cur[i] for i in exact], [prev[i] for i in exact]), strict=True):
                out[i] = diff
        for i, done in enumerate(out):
            if done is None:
                out[i] = torch.sub(cur[i].float(), prev[i].float())
    return out  # type: ignore[return-value]


def snapshot_parameters(params: Sequence[torch.Tensor], reuse: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """Device copies of ``params`` (their values now, stream-ordered), written into ``reuse[i]``
    when it is given and fits (an earlier snapshot that no one reads any more, after the
    kernels already queued that read it), by one ``torch._foreach_copy_``; else new clones."""
    out = list(reuse)
    with torch.no_grad():
        into = [i for i, (p, r) in enumerate(zip(params, reuse, strict=True))
                if r is not None and r.shape == p.shape and r.dtype == p.dtype and r.device == p.device]
        if into:
            torch._foreach_copy_([reuse[i] for i in into], [params[i] for i in into])  # type: ignore[misc]
        fits = set(into)
        for i, p in enumerate(params):
            if i not in fits:
                out[i] = p.detach().clone()
    return out  # type: ignore[return-value]


class DeviceStatsBatch:
    """The CUDA tensors of the current step waiting to be reduced together (see the module's
    docstring). The hook calls :meth:`launch` before anything may change them: at the
    optimizer's pre-hook and whenever a step ends."""

    def __init__(self) -> None:
        self.pending: list[DevicePayload] = []
        self.elements = 0
        self._layouts: dict[tuple[Any, ...], _Layout] = {}
        self._graph_elements = 0  # padded elements of the layouts of _layouts with a graph

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
        stats = self._stats(device, tensors, self._cached_layout(device, tensors))
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
        dtypes = [t.dtype for t in tensors]
        key = (device, *numels, *dtypes)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= 64:
                self._layouts.clear()  # (and their graphs)
                self._graph_elements = 0
            layout = self._layouts[key] = _Layout(numels, dtypes, device)
        return layout

    def _stats(self, device: torch.device, tensors: Sequence[torch.Tensor], g: _Layout) -> torch.Tensor:
        """The batch's statistics on the device: by the layout's CUDA graph once the layout
        repeats (within :data:`GRAPH_BUDGET_ELEMENTS`), else eagerly."""
        g.uses += 1
        if (g.graph is None and g.uses >= 2 and device.type == "cuda"
                and self._graph_elements + g.rows * ROW <= GRAPH_BUDGET_ELEMENTS
                and not torch.cuda.is_current_stream_capturing()):
            try:
                with torch.no_grad():
                    g.graph = _GraphedReduction(g, device)
                self._graph_elements += g.rows * ROW
            except Exception as exc:  # e.g. a platform without graphs: the eager way works too
                g.graph = False
                log.warning("trainaudit: CUDA statistics stay eager, a graph of their reduction failed: %s", exc)
        if isinstance(g.graph, _GraphedReduction):
            with torch.no_grad():
                return g.graph(tensors, g)
        return batched_device_stats(tensors, g)
