"""The framework-free capture core: steps, modes, schedules, and ``record()``.

:class:`Recorder` keeps the step counters (global step, mode, mode step), decides what is due
under the :class:`CaptureConfig`, groups everything recorded for one step into a
:class:`StepRecord` and hands it to the :class:`RunWriter`. The PyTorch hook and the XGBoost
callback are thin adapters over it; ``record()`` is also the public API for anything else
(a custom metric, a JAX loop, a synthetic run in a test).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._config import CaptureConfig
from ._format import MODES
from ._writer import NumpyPayload, Payload, RunWriter, StepItem, StepRecord

__all__ = ["Recorder"]

log = logging.getLogger("trainaudit.capture")

#: How long a new Recorder waits for its writer to open the run (to learn where a resumed
#: run's step numbering continues) before it starts counting from 0.
RESUME_WAIT_SECONDS = 30.0


class Recorder:
    """Record tensors of a training run into a trainaudit run.

    Args:
        uri: where the run goes: a local path, ``file://``, ``s3://bucket/prefix`` or
            ``memory://name``.
        framework: stored in the run (``pytorch``, ``xgboost``, ``generic``).
        config: what to save and how often; :class:`CaptureConfig` defaults when None.
        rank, world_size: for distributed jobs; each rank writes its own group.
        run_id: defaults to the last part of the URI.
        storage_options: s3fs / fsspec options (endpoint, credentials).

    Example::

        with Recorder("runs/exp1") as rec:
            for step in range(100):
                loss = train_step()
                rec.record("losses/loss", loss, collection="losses", step=step)
    """

    def __init__(
        self,
        uri: str,
        *,
        framework: str = "generic",
        config: CaptureConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        run_id: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or CaptureConfig()
        self.writer = RunWriter(
            uri,
            framework=framework,
            config=self.config,
            rank=rank,
            world_size=world_size,
            run_id=run_id,
            storage_options=storage_options,
            extra_attrs=extra_attrs,
        )
        self.uri = self.writer.uri
        self.mode = "train"
        self.global_step = 0
        self.mode_steps = {m: 0 for m in MODES}
        #: The step being recorded (None between steps): a new one is opened by the first
        #: ``add`` after a step ended, so its identity tells a hook that a step began.
        self.current: StepRecord | None = None
        self._closed = False
        #: Called as a step ends, before it is handed to the writer (the PyTorch hook reduces
        #: the step's CUDA tensors there). Exceptions are recorded, never raised.
        self.before_step_end: Callable[[], None] | None = None
        # Resumed training (this rank already holds committed steps): continue its numbering.
        # Opening the store takes milliseconds locally, about a second on S3; bounded wait.
        if self.writer.wait_ready(RESUME_WAIT_SECONDS) and self.writer.resume_from is not None:
            self.global_step, modes = self.writer.resume_from
            self.mode_steps.update(modes)

    # ------------------------------------------------------------------ step bookkeeping
    @property
    def mode_step(self) -> int:
        return self.mode_steps[self.mode]

    def set_mode(self, mode: str) -> None:
        """Switch to ``train``, ``eval`` or ``predict``; the current step (if any) ends."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != self.mode:
            self.end_step()
            self.mode = mode

    def due(self, collection: str, name: str) -> tuple[bool, bool]:
        """``(stats, values)`` due for ``name`` at the current step."""
        if not self.config.wants(collection, name):
            return False, False
        return self.config.due(collection, self.mode, self.mode_step)

    def add(self, name: str, collection: str, payload: Payload, *, values: bool, meta: Mapping[str, Any] | None = None) -> None:
        """Add one tensor to the current step (the hooks' fast path: no checks)."""
        rec = self.current
        if rec is None:
            rec = self.current = StepRecord(self.global_step, self.mode, self.mode_step, time.time())
        rec.put(StepItem(name, collection, payload, values, meta))

    def end_step(self) -> None:
        """Close the current step: submit what was recorded and advance the counters.
        A step in which nothing was recorded is not counted."""
        rec = self.current
        if rec is None:
            return
        if self.before_step_end is not None:
            try:
                self.before_step_end()
            except Exception as exc:  # capture never crashes training
                self.writer._record_error("hook", f"end of step {rec.global_step}: {type(exc).__name__}: {exc}")
        self.current = None
        self.writer.submit(rec)
        self.global_step += 1
        self.mode_steps[rec.mode] += 1

    # ------------------------------------------------------------------ public record API
    def record(
        self,
        name: str,
        value: Any,
        *,
        collection: str = "other",
        step: int | None = None,
        mode: str | None = None,
        meta: Mapping[str, Any] | None = None,
        save_values: bool | None = None,
    ) -> None:
        """Record ``value`` (a scalar or numpy array) as tensor ``name`` of ``collection``.

        With ``step`` given, records of one (step, mode) form one step, and a new step number
        closes the previous step. Without it, the value joins the current step. Never raises
        on bad values: the problem is recorded in the run instead.
        """
        try:
            if mode is not None and mode != self.mode:
                self.set_mode(mode)
            if step is not None and self.current is not None and step != self.current.global_step:
                self.end_step()
            if step is not None and self.current is None:
                self.global_step = int(step)
            stats_due, values_due = self.due(collection, name)
            if save_values is not None:
                values_due = save_values
                stats_due = stats_due or save_values
            if not (stats_due or values_due):
                return
            self.add(name, collection, NumpyPayload(value), values=values_due, meta=meta)
        except Exception as exc:  # capture never crashes training
            self.writer._record_error("record", f"{name!r}: {exc}", tensor=name)

    @property
    def stop_requested(self) -> bool:
        """True once a watcher asked this run to stop (``trainaudit watch --stop-on ...``)."""
        return self.writer.stop_requested

    def flush(self) -> None:
        """Write everything recorded so far (blocks until it is committed)."""
        self.end_step()
        self.writer.flush()

    def close(self) -> None:
        """Flush and mark the run complete. Idempotent; also called at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        self.end_step()
        self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
