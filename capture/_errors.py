"""The exception hierarchy of trainaudit.

Every error trainaudit raises on purpose derives from :class:`TrainauditError` *and* the builtin
that matches it, so ``except FileNotFoundError`` keeps working for callers that do not know us.
Exceptions carry ids and strings only (never arrays), so they pickle across Dask workers.
"""

from __future__ import annotations

__all__ = [
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


class TrainauditError(Exception):
    """Base class of every error trainaudit raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other __init__ arguments than their message: rebuild from the
        # message and attributes, so the errors cross to Dask workers and back.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[TrainauditError], args: tuple[object, ...], state: dict[str, object]) -> TrainauditError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class RunNotFoundError(TrainauditError, FileNotFoundError):
    """Nothing exists at the URI given as a run."""

    def __init__(self, uri: str) -> None:
        super().__init__(
            f"No trainaudit run at {uri!r}. Check the URI (a local path, file://, s3://bucket/prefix "
            f"or memory://), and that the training job was started with a capture hook writing there."
        )
        self.uri = uri


class NotARunError(TrainauditError, ValueError):
    """Something exists at the URI, but it is not a trainaudit run."""

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(
            f"{uri!r} is not a trainaudit run ({detail}). Point trainaudit at the folder a capture "
            f"hook wrote (it holds a zarr.json with a 'trainaudit' attribute)."
        )
        self.uri = uri


class FormatVersionError(TrainauditError, ValueError):
    """The run was written in a format version this trainaudit cannot read."""

    def __init__(self, uri: str, found: object, supported: tuple[int, ...]) -> None:
        lo, hi = min(supported), max(supported)
        versions = f"version {lo}" if lo == hi else f"versions {lo}-{hi}"
        super().__init__(
            f"Run {uri!r} has format_version={found!r}; this trainaudit reads {versions}. "
            f"Upgrade trainaudit (pip install -U trainaudit)."
        )
        self.uri = uri


class CorruptRunError(TrainauditError, ValueError):
    """Part of a run could not be decoded: a corrupt chunk or metadata document."""

    def __init__(self, uri: str, where: str, cause: str) -> None:
        super().__init__(
            f"Run {uri!r} is damaged at {where}: {cause}. The other tensors and steps can still be "
            f"read; recapture the run to recover this part."
        )
        self.uri = uri
        self.where = where


class StoreUnavailableError(TrainauditError, OSError):
    """The store could not be reached (network, credentials, endpoint)."""

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(
            f"Could not reach the store of {uri!r}: {cause}. Check the endpoint and credentials "
            f"(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or pass storage_options."
        )
        self.uri = uri


class InvalidParameterError(TrainauditError, ValueError):
    """A rule or capture parameter is out of its allowed range or of the wrong type."""


class UnknownRuleError(TrainauditError, KeyError):
    """A rule id that is not in the catalog."""

    def __init__(self, rule_id: str, known: list[str]) -> None:
        super().__init__(f"Unknown rule id {rule_id!r}. Known rules: {', '.join(sorted(known))}.")
        self.rule_id = rule_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateRuleError(TrainauditError, ValueError):
    """Two rules registered under one id."""
