"""Capture: record what happens inside training into a trainaudit run.

Runs inside the training process, so it stays light: importing it loads neither Prefect, Dask
nor the report code (torch and xgboost only when their hooks are used).
"""

from __future__ import annotations

from typing import Any

from ._config import CaptureConfig, SaveSchedule
from ._errors import (
    CorruptRunError,
    DuplicateRuleError,
    FormatVersionError,
    InvalidParameterError,
    NotARunError,
    RunNotFoundError,
    StoreUnavailableError,
    TrainauditError,
    UnknownRuleError,
)
from ._format import COLLECTIONS, FORMAT_VERSION, MODES, STAT_FIELDS
from ._reader import Run, StepTable, TensorInfo, TensorStats, open_run
from ._recorder import Recorder

__all__ = [
    "COLLECTIONS",
    "FORMAT_VERSION",
    "MODES",
    "STAT_FIELDS",
    "CaptureConfig",
    "SaveSchedule",
    "Recorder",
    "TorchHook",
    "XGBoostCallback",
    "open_run",
    "request_stop",
    "Run",
    "StepTable",
    "TensorInfo",
    "TensorStats",
    "TrainauditError",
    "RunNotFoundError",
    "NotARunError",
    "FormatVersionError",
    "CorruptRunError",
    "StoreUnavailableError",
    "InvalidParameterError",
    "UnknownRuleError",
    "DuplicateRuleError",
]


def __getattr__(name: str) -> Any:
    # The framework adapters import torch / xgboost: load them only when asked for.
    if name == "TorchHook":
        from ._torch import TorchHook

        return TorchHook
    if name == "XGBoostCallback":
        from ._xgboost import XGBoostCallback

        return XGBoostCallback
    if name == "request_stop":
        from ._control import request_stop

        return request_stop
    raise AttributeError(f"module 'trainaudit.capture' has no attribute {name!r}")
