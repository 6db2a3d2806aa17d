"""What to capture and how often: save schedules per collection and mode, name filters.

Two kinds of saving per tensor and step: **statistics** (the small per-step summary every rule
can use) and **values** (the full tensor, for rules that need per-unit or per-class detail).
The defaults keep capture within its overhead budget (docs/BENCHMARKS.md): statistics of every
tensor every step, values every ``DEFAULT_VALUE_INTERVAL`` steps plus the first
``DEFAULT_FIRST_STEPS`` steps of each mode (PoorWeightInitialization needs step 0), gradients'
values every ``DEFAULT_GRADIENT_VALUE_INTERVAL`` steps (their rules read statistics), and labels
and predictions (small, needed by the data rules) in full every step.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._format import COLLECTIONS, MODES

__all__ = ["SaveSchedule", "CaptureConfig", "DEFAULT_VALUE_INTERVAL", "DEFAULT_FIRST_STEPS", "DEFAULT_GRADIENT_VALUE_INTERVAL"]

#: Full values every 50 steps: 20 saved steps per 1,000 are plenty for the activation and
#: weight rules, and the cost stays small (docs/BENCHMARKS.md).
DEFAULT_VALUE_INTERVAL = 50
#: The first steps of each mode are saved in full: initialization checks look at step 0.
DEFAULT_FIRST_STEPS = 2
#: Gradients are as large as the weights, and every gradient rule reads their statistics, not
#: their values: a full copy every 500 steps is for people, not for the default catalog.
DEFAULT_GRADIENT_VALUE_INTERVAL = 500
#: What :meth:`SaveSchedule.unchanged_for` answers for a schedule that no longer changes.
FOREVER = sys.maxsize


@dataclass(frozen=True, kw_only=True)
class SaveSchedule:
    """When a tensor is saved, by mode step (the step counter of the current mode).

    A step is saved when any of these holds, and it lies in ``[start, end)``:
    ``every`` divides it, it is one of the ``first`` steps, or it is listed in ``steps``.
    ``every=None`` (and ``first=0``, no ``steps``) never saves.
    """

    every: int | None = 1
    first: int = 0
    start: int = 0
    end: int | None = None
    steps: tuple[int, ...] = ()
    modes: tuple[str, ...] = MODES

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"every={self.every!r} is out of range: expected an integer >= 1 or None")
        if self.first < 0:
            raise ValueError(f"first={self.first!r} is out of range: expected >= 0")
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"modes contains {m!r}: expected a subset of {MODES}")
        object.__setattr__(self, "steps", tuple(sorted(set(int(s) for s in self.steps))))

    def due(self, mode_step: int, mode: str = "train") -> bool:
        """Whether ``mode_step`` of ``mode`` is saved under this schedule."""
        if mode not in self.modes or mode_step < self.start:
            return False
        if self.end is not None and mode_step >= self.end:
            return False
        if mode_step - self.start < self.first:
            return True
        if self.every is not None and mode_step % self.every == 0:
            return True
        return mode_step in self.steps

    def unchanged_for(self, mode_step: int, mode: str = "train") -> int:
        """How many steps from ``mode_step`` on (``mode_step`` included, at least 1)
        :meth:`due` keeps the answer it gives at ``mode_step``; ``FOREVER`` when it never
        changes. Lets the hooks work out a collection's schedule once per change, not once
        per step: between two saved steps of values nothing changes."""
        if mode not in self.modes or (self.end is not None and mode_step >= self.end):
            return FOREVER
        if mode_step < self.start:
            return self.start - mode_step
        if self.due(mode_step, mode):
            if self.every == 1:  # due at every step until the end
                return FOREVER if self.end is None else self.end - mode_step
            return 1
        # Not due: until the next multiple of ``every``, the next listed step or the end.
        # (The ``first`` steps lie behind: a step among them is due.)
        nxt = FOREVER
        if self.every is not None:
            nxt = (mode_step // self.every + 1) * self.every
        i = bisect.bisect_right(self.steps, mode_step)
        if i < len(self.steps):
            nxt = min(nxt, self.steps[i])
        if self.end is not None:
            nxt = min(nxt, self.end)
        return FOREVER if nxt == FOREVER else nxt - mode_step

    @classmethod
    def never(cls) -> SaveSchedule:
        return cls(every=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_stats() -> dict[str, SaveSchedule]:
    return {c: SaveSchedule(every=1) for c in COLLECTIONS}


def _default_values() -> dict[str, SaveSchedule]:
    sampled = SaveSchedule(every=DEFAULT_VALUE_INTERVAL, first=DEFAULT_FIRST_STEPS)
    every = SaveSchedule(every=1)
    out = {c: sampled for c in COLLECTIONS}
    # Labels and predictions feed the data rules' counts: small, needed at every step. Losses,
    # metrics and update norms are scalars whose statistics row already holds the value, so
    # their values follow the sampled schedule like everything else.
    for c in ("labels", "predictions", "trees", "feature_importance"):
        out[c] = every
    # The data rules want >= 500 samples early: the first 8 batches of 64 give them at once.
    for c in ("inputs", "tokens"):
        out[c] = SaveSchedule(every=DEFAULT_VALUE_INTERVAL, first=8)
    out["gradients"] = SaveSchedule(every=DEFAULT_GRADIENT_VALUE_INTERVAL, first=DEFAULT_FIRST_STEPS)
    return out


@dataclass(frozen=True, kw_only=True)
class CaptureConfig:
    """The capture configuration of a hook. Stored in the run's attributes.

    Args:
        collections: the collections to capture at all.
        stats: save schedule of the per-step statistics, per collection.
        values: save schedule of the full values, per collection.
        include: regexes; when given, only tensors whose name matches one are captured.
        exclude: regexes; tensors whose name matches one are not captured.
        module_types: when given, only modules of these class names are hooked for
            ``outputs`` / ``activation_inputs`` (e.g. ``("ReLU", "Linear")``).
        queue_size: steps waiting for the writer thread before new ones are dropped (and
            the drop recorded in the run). Each holds the step's tensor snapshots until the
            writer computes its statistics (immediately, unless it is behind), so this bounds
            capture's memory: 64 steps of a 9 MB model are under 600 MB. Capture never
            blocks training for more than 0.1 s a step.
        flush_steps: write at least every this many queued steps. Every write is a few zarr
            operations per tensor (milliseconds of CPU each, tens of milliseconds on S3), so
            fewer, larger writes are cheaper; steps waiting for a write hold only their
            statistics (and the values due, at most 64 MiB of them: more starts a write),
            not tensor copies.
        flush_seconds: and at least this often (seconds), so a live audit sees progress. A
            process killed without warning loses at most this much of its last steps. (Stop
            requests are looked for every 2 s, whatever this is.)
        retries: attempts per write before the steps are recorded as lost.
        store_process: do the store writes in a process of their own (local and ``s3://``
            runs; ``memory://`` is always written in-process). A flush is ~150 zarr operations
            of Python for a model of a few dozen tensors, which in the training process hold
            the GIL training needs; in a store process they run beside it. False keeps them in
            the training process (one process fewer, training slower during flushes).
    """

    collections: tuple[str, ...] = COLLECTIONS
    stats: Mapping[str, SaveSchedule] = field(default_factory=_default_stats)
    values: Mapping[str, SaveSchedule] = field(default_factory=_default_values)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()
    queue_size: int = 64
    flush_steps: int = 1000
    flush_seconds: float = 5.0
    retries: int = 3
    store_process: bool = True

    def __post_init__(self) -> None:
        for c in self.collections:
            if c not in COLLECTIONS:
                raise ValueError(f"collections contains {c!r}: expected names from {COLLECTIONS}")
        for label, mapping in (("stats", self.stats), ("values", self.values)):
            for c in mapping:
                if c not in COLLECTIONS:
                    raise ValueError(f"{label} has a schedule for unknown collection {c!r}")
        for label, value, lo in (("queue_size", self.queue_size, 1), ("flush_steps", self.flush_steps, 1), ("retries", self.retries, 1)):
            if value < lo:
                raise ValueError(f"{label}={value!r} is out of range: expected >= {lo}")
        if self.flush_seconds <= 0:
            raise ValueError(f"flush_seconds={self.flush_seconds!r} is out of range: expected > 0")
        # Fill collections a user left out of a partial mapping with the defaults.
        object.__setattr__(self, "stats", {**_default_stats(), **dict(self.stats)})
        object.__setattr__(self, "values", {**_default_values(), **dict(self.values)})
        object.__setattr__(self, "_include_re", [re.compile(p) for p in self.include])
        object.__setattr__(self, "_exclude_re", [re.compile(p) for p in self.exclude])

    # -- queries used on the training thread: keep them cheap --------------------------------
    def wants(self, collection: str, name: str) -> bool:
        """Whether tensor ``name`` of ``collection`` is captured at all."""
        if collection not in self.collections:
            return False
        inc: list[re.Pattern[str]] = self._include_re  # type: ignore[attr-defined]
        exc: list[re.Pattern[str]] = self._exclude_re  # type: ignore[attr-defined]
        if inc and not any(p.search(name) for p in inc):
            return False
        return not any(p.search(name) for p in exc)

    def due(self, collection: str, mode: str, mode_step: int) -> tuple[bool, bool]:
        """``(stats_due, values_due)`` for ``collection`` at ``mode_step`` of ``mode``."""
        return (
            self.stats[collection].due(mode_step, mode),
            self.values[collection].due(mode_step, mode),
        )

    def unchanged_for(self, collection: str, mode: str, mode_step: int) -> int:
        """How many steps from ``mode_step`` on :meth:`due` gives the same answer for
        ``collection`` (see :meth:`SaveSchedule.unchanged_for`)."""
        return min(self.stats[collection].unchanged_for(mode_step, mode), self.values[collection].unchanged_for(mode_step, mode))

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def full(cls, **kwargs: Any) -> CaptureConfig:
        """Statistics and full values of everything, every step (tests, small runs)."""
        every = {c: SaveSchedule(every=1) for c in COLLECTIONS}
        return cls(stats=every, values=every, **kwargs)

    @classmethod
    def with_values_every(cls, n: int, *, first: int = DEFAULT_FIRST_STEPS, collections: Iterable[str] | None = None, **kwargs: Any) -> CaptureConfig:
        """Defaults, but full values every ``n`` steps (plus the first ``first``) for
        ``collections`` (all sampled collections when None)."""
        values = _default_values()
        for c in collections or [c for c, s in values.items() if s.every != 1]:
            values[c] = SaveSchedule(every=n, first=first)
        return cls(values=values, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "stats": {c: s.to_dict() for c, s in self.stats.items()},
            "values": {c: s.to_dict() for c, s in self.values.items()},
            "include": list(self.include),
            "exclude": list(self.exclude),
            "module_types": list(self.module_types),
            "queue_size": self.queue_size,
            "flush_steps": self.flush_steps,
            "flush_seconds": self.flush_seconds,
            "retries": self.retries,
            "store_process": self.store_process,
        }
