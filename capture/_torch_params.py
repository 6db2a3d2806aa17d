"""Copying a model's parameters off the training thread, between two optimizer steps.

The optimizer changes parameters in place, so the writer needs a private copy of the weights
each step it records them. Made in the optimizer's step pre-hook, that copy costs the
training thread a memcpy of the whole model every step (about a fifth of a small MLP's CPU
step). But the weights of step ``s`` are final as soon as step ``s-1``'s ``optimizer.step()``
returns, and nothing changes them through step ``s``'s forward and backward passes: a helper
thread copies them in that window, while the training thread computes.

The window is checked, not assumed. Step ``s``'s pre-hook (the end of the window) takes the
copy only if the helper started it in time (otherwise the pre-hook cancels it and the hook
copies on the training thread, as before) and only for parameters whose version counter
still reads what it read when the window opened (something that changes weights in place
between steps, such as a max-norm constraint after ``optimizer.step()``, sends those
parameters back to the training-thread copy). A copy the helper is still making when the
window closes is waited for: the optimizer must not change what it reads.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ._compat import lower_thread_priority, snapshot_many

__all__ = ["ParameterCopier", "ParameterCopy"]

log = logging.getLogger("trainaudit.capture")

#: Parameter dtypes the C pass copies and measures; others are copied by torch.
_FUSED_DTYPES = (torch.float32, torch.float64)

#: Copies kept per parameter for reuse. A step's copy lives until the writer has its statistics
#: (and the update norm of the next step used it): usually two or three are in use at a time.
POOL_SIZE = 4


def _free_refcount() -> int | None:
    """``sys.getrefcount`` of a pooled buffer nobody else holds, measured the way
    ``_free_buffer`` measures (the first item of a tuple in a list, read through a ``for``
    variable), so the
    check follows the interpreter's own counting (newer CPythons borrow some references).
    None where reference counts mean nothing (not CPython): buffers are then never reused."""
    if sys.implementation.name != "cpython":  # pragma: no cover
        return None
    pool = [(object(), None)]
    for entry in pool:
        obj = entry[0]
        return sys.getrefcount(obj)
    return None  # pragma: no cover


_FREE_REFCOUNT = _free_refcount()


class ParameterCopy(NamedTuple):
    """A parameter's private copy, and what the copy pass measured on the way (when the
    ``_fastats`` extension did it): its statistics and ``sum((W_s - W_{s-1})**2)``."""

    tensor: torch.Tensor
    stats: tuple[float, ...] | None = None
    update_sumsq: float | None = None


class _CopyJob:
    """One step's copies to make. Its fate is decided once, by whoever pops ``claim`` first
    (an atomic dict operation, no lock to make every step): the helper thread, which then
    makes the copies, or the training thread, which cancels the job."""

    __slots__ = ("step", "params", "versions", "claim", "copies", "numbers")

    def __init__(self, step: int, params: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]) -> None:
        self.step = step
        self.params = list(params)
        self.versions = [p._version for _, p, _ in self.params]
        self.claim = {0: True}
        self.copies: dict[str, ParameterCopy] = {}
        #: ``{name: (statistics, update sum of squares or None)}`` when the C pass measured
        #: every copy (see ParameterCopier.numbers).
        self.numbers: dict[str, tuple[tuple[float, ...], float | None]] | None = None


class ParameterCopier:
    """Copies parameters for a coming train step on a helper thread (see the module docstring).

    ``schedule(step, params)`` right after an optimizer step, with ``(name, parameter,
    previous copy or None)`` triples; ``take(step)`` in the next optimizer step's pre-hook
    returns ``{name: ParameterCopy}`` for the parameters whose copy is whole (possibly none).
    With the ``_fastats`` extension the copy pass also takes the statistics of the copy and
    its distance to the previous copy, so the writer never reads the weights again. Never
    raises into the training loop.
    """

    def __init__(self, name: str = "trainaudit-params") -> None:
        self._queue: queue.SimpleQueue[_CopyJob | None] = queue.SimpleQueue()
        self._job: _CopyJob | None = None
        self._name = name
        self._thread: threading.Thread | None = None
        # Held by the helper thread from before it claims a job until the job's copies are
        # made: take() waits for a claimed job by acquiring it.
        self._busy = threading.Lock()
        self.taken = 0  # copies handed out whole (for tests and benchmarks)
        self.missed = 0  # copies the training thread had to make after all
        #: What the C pass measured of the copies the last ``take()`` returned, as
        #: ``{name: (statistics, sum((W_s - W_{s-1})**2) or None)}``: set only when that
        #: ``take()`` returned every copy of its step and the pass measured them all, else None.
        #: Numbers, not tensors: the hook hands them to the writer without holding a copy.
        self.numbers: dict[str, tuple[tuple[float, ...], float | None]] | None = None
        # Reused copies, each with a numpy view of it: a fresh allocation of a large tensor
        # costs a page fault per 4 KiB on first touch, 3-4x the copy itself.
        self._pools: dict[str, list[tuple[torch.Tensor, np.ndarray]]] = {}
        # Each parameter's numpy view, with the storage address and shape it was made for.
        # This thread holds the GIL for its Python work right after optimizer.step(), while
        # the training thread runs the next forward pass: making a view costs microseconds that
        # training waits for, so views are made once, not every step. A view keeps its storage
        # alive, so a parameter given new storage (``p.data = ...``) shows a new address.
        self._views: dict[str, tuple[int, torch.Size, torch.dtype, np.ndarray]] = {}

    def schedule(self, step: int, params: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]) -> None:
        """Start copying ``params`` (CPU tensors) for train step ``step``; a previous copy
        given with a parameter gets its update norm measured."""
        self._cancel(self._job)  # an optimizer step was skipped (e.g. by a GradScaler)
        self._job = None
        if not params:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        job = _CopyJob(step, params)
        self._job = job
        self._queue.put(job)

    def take(self, step: int) -> dict[str, ParameterCopy]:
        """The whole copies made for ``step``; parameters missing from the result need a copy."""
        job, self._job = self._job, None
        self.numbers = None
        if job is None:
            return {}
        started = self._cancel(job)
        if job.step != step or not started:
            self.missed += len(job.params)
            return {}
        if not self._busy.acquire(timeout=30.0):  # pragma: no cover - a copy never takes this long
            return {}
        self._busy.release()
        out = {name: job.copies[name] for (name, p, _), v in zip(job.params, job.versions, strict=True)
               if name in job.copies and p._version == v}
        self.taken += len(out)
        self.missed += len(job.params) - len(out)
        if len(out) == len(job.params):
            self.numbers = job.numbers
        return out

    def close(self) -> None:
        self._cancel(self._job)
        self._job = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10.0)
            self._thread = None

    def _copy_all(self, params: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]) -> dict[str, ParameterCopy]:
        """Private copies of ``params`` (pooled buffers when free). Float32/float64 contiguous
        parameters go through one call of the C pass (copy, statistics, update norm, the GIL
        released once); any other parameter is copied by torch."""
        copies: dict[str, ParameterCopy] = {}
        fused: list[tuple[str, torch.Tensor]] = []
        triples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        for name, p, prev in params:
            src = self._view(name, p)
            if src is None:
                copies[name] = ParameterCopy(self._free_buffer(name, p)[0].copy_(p.detach()))
                continue
            dst, dst_view = self._free_buffer(name, p)
            prev_view = None if prev is None else self._pooled_view(name, prev)
            if prev is not None and prev_view is None:
                # The previous copy is not a pooled one (the training thread made it, or the
                # pool was full): copy only; the writer takes the update norm from the two.
                copies[name] = ParameterCopy(dst.copy_(p.detach()))
                continue
            fused.append((name, dst))
            triples.append((src, dst_view, prev_view))
        results = snapshot_many(triples) if triples else None
        if results is None:  # no extension: plain copies, the writer computes the rest
            for (name, dst), (src, dst_view, _) in zip(fused, triples, strict=True):
                np.copyto(dst_view, src)
                copies[name] = ParameterCopy(dst)
        else:
            for (name, dst), (stats, update_sumsq) in zip(fused, results, strict=True):
                copies[name] = ParameterCopy(dst, stats, update_sumsq)
        return copies

    def _view(self, name: str, p: torch.Tensor) -> np.ndarray | None:
        """``p``'s values as a numpy array sharing its memory, when the C pass can read it."""
        ptr = p.data_ptr()
        cached = self._views.get(name)
        if cached is not None and cached[0] == ptr and cached[1] == p.shape and cached[2] == p.dtype:
            return cached[3]
        if p.dtype not in _FUSED_DTYPES or not p.is_contiguous() or p.is_cuda:
            return None
        view = p.detach().numpy()
        self._views[name] = (ptr, p.shape, p.dtype, view)
        return view

    def _pooled_view(self, name: str, t: torch.Tensor) -> np.ndarray | None:
        for buf, view in self._pools.get(name, ()):
            if buf is t:
                return view
        return None

    def _free_buffer(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        pool = self._pools.setdefault(name, [])
        for entry in pool:
            # Free when only the pool and this loop refer to it. Everyone else holds the tensor
            # object itself (the writer's payload, the hook's previous-weights snapshot, a copy
            # job); values handed to the writer as numpy are copies, not views, and the pool's
            # own view refers to the tensor's storage, not to the tensor object.
            buf = entry[0]
            if sys.getrefcount(buf) == _FREE_REFCOUNT and buf.shape == like.shape and buf.dtype == like.dtype:
                return entry
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        entry = (buf, buf.numpy() if buf.dtype in _FUSED_DTYPES else np.empty(0))
        if len(pool) < POOL_SIZE:
            pool.append(entry)
        return entry

    @staticmethod
    def _cancel(job: _CopyJob | None) -> bool:
        """Cancel ``job`` if the helper thread has not claimed it; True when it had (the
        copies are being made, or made)."""
        if job is None:
            return False
        # (dict.pop with a default is one atomic call that raises nothing: in the usual case,
        # a job the helper claimed, an IndexError raised and caught here cost microseconds)
        return job.claim.pop(0, None) is None

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._busy:
                if job.claim.pop(0, None) is None:
                    continue  # cancelled
                try:
                    job.copies = self._copy_all(job.params)
                    if all(c.stats is not None for c in job.copies.values()):
                        job.numbers = {name: (c.stats, c.update_sumsq) for name, c in job.copies.items()}  # type: ignore[misc]
                except Exception as exc:  # capture never crashes training: the pre-hook copies instead
                    log.warning("trainaudit: could not copy parameters off the training thread: %s", exc)
                    job.copies = {}
