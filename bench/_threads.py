"""The CPU time each live thread of this process has used so far (for the probes)."""

from __future__ import annotations

import threading
import time


def thread_cpu() -> dict[str, float]:
    """Seconds of CPU by thread name, for every live thread (Linux: per-thread CPU clocks)."""
    out = {}
    for th in threading.enumerate():
        if th.ident is not None and th.is_alive():
            try:
                out[th.name] = time.clock_gettime(time.pthread_getcpuclockid(th.ident))
            except OSError:  # the thread ended meanwhile
                pass
    return out
