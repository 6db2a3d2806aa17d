"""Control messages from watchers to a training job: the stop request.

A watcher (``trainaudit watch``) writes a stop request into the run's ``control`` group; each
rank's writer polls it after every flush, and the hooks turn it into ``hook.stop_requested``
(and, for XGBoost, a clean end of boosting). The training process is never killed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import _format as F

__all__ = ["request_stop", "stop_request"]


def request_stop(uri: str, *, reason: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Ask the training job writing ``uri`` to stop at its next step."""
    import zarr

    root = F.open_root(F.normalize_uri(uri), mode="a", storage_options=storage_options)
    ctrl = zarr.open_group(store=root.store, path=F.CONTROL_GROUP, mode="a", zarr_format=3)
    ctrl.attrs[F.CONTROL_ATTR] = {"stop": {"reason": reason, "time": time.time()}}


def stop_request(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The stop request written into ``uri``, or None."""
    import zarr

    root = F.open_root(F.normalize_uri(uri), mode="r", storage_options=storage_options)
    try:
        ctrl = zarr.open_group(store=root.store, path=F.CONTROL_GROUP, mode="r", zarr_format=3)
    except Exception:
        return None
    control: Any = ctrl.attrs.asdict().get(F.CONTROL_ATTR) or {}
    stop = control.get("stop")
    return dict(stop) if stop else None
