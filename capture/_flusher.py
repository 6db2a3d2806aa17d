"""The writer's store calls on a thread of their own, one at a time.

A flush waits on the store for most of a second at a time (the store process's zarr writes;
on S3, requests and retries). When the writer thread waited itself, it resolved no steps
meanwhile: a hundred steps queued up behind it (the queue's 64 filled, so training waited for
room and steps were dropped), each holding its tensors alive, and the writer then worked
through them in a burst of GIL-holding Python beside training. On this thread the writer goes
on resolving steps while the previous batch is written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ._compat import lower_thread_priority

__all__ = ["Flusher"]

log = logging.getLogger("trainaudit.capture")


class Flusher:
    """A daemon thread that runs the calls it is given, one at a time, in order.

    :meth:`start` hands it a call (while it is busy with another, the call waits its turn);
    :meth:`wait` waits until every call given so far has run. A call should not raise: one
    that does is logged and the thread goes on.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._given = 0
        self._done = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether a call given to it has not finished yet."""
        return self._done < self._given

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        self._given += 1
        self._calls.put((fn, args))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the calls given so far have run; False if ``timeout`` passed first."""
        given = self._given
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= given, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Run what was given, then end the thread."""
        self._calls.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, args = call
            try:
                fn(*args)
            except BaseException:  # pragma: no cover - the writer's calls record their own errors
                log.exception("trainaudit: a store call failed")
            with self._cond:
                self._done += 1
                self._cond.notify_all()
