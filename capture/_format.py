"""The run format: the one definition of a trainaudit run's layout on a store.

The writer (``_writer.py``) and every reader (``_reader.py``, the audit's scan) import their
keys, dtypes, chunk shapes and statistic fields from here, so the two sides cannot drift apart.
``docs/FORMAT.md`` is the prose version of this module; change both together and bump
``FORMAT_VERSION`` for any change an older reader would misread.

Layout (Zarr v3)::

    <run>/                          group; attrs["trainaudit"] = run attributes (format_version, ...)
      control/                      group; attrs["trainaudit_control"] = {"stop": {...}} (watchers)
      rank_<r>/                     group per rank; attrs["trainaudit_rank"] = the commit record
        steps        int64 (cap, 3)         rows: [global_step, mode code, mode_step]
        step_time    float64 (cap,)         wall-clock time of the row (unix seconds)
        stats        float64 (cap, N_STATS) the statistics log: STAT_FIELDS of every tensor
        stats_index  int64 (cap, 2)         per log row: [tensor index, row of ``steps``]
        tensors/t<k>/                       the tensor with index k (its name: commit record)
          values       <dtype> (cap, *shape)    full values at value-saved steps (padded)
          values_index int64 (cap, 1 + ndim)    per value row: [row of ``steps``, real shape...]

All tensors of a rank share one statistics log, so a flush costs a handful of store writes
whatever the size of the model (zarr costs milliseconds per operation, S3 tens of them).
Arrays grow by capacity doubling; what a reader may see is given by the *commit record* in the
rank's attributes (``committed_steps``, ``committed_stats`` and, per tensor, ``n_stats`` and
``n_values``). The writer writes chunks first and the commit record last, so a reader never
sees a step whose data is not fully written, and a process killed mid-write leaves a readable
run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "MODES",
    "COLLECTIONS",
    "STAT_FIELDS",
    "N_STATS",
    "STAT",
    "mode_code",
    "mode_name",
    "rank_key",
    "tensor_key",
    "storage_dtype",
    "values_layout",
    "numpy_stats",
    "scalar_stats",
    "normalize_uri",
    "open_root",
]

FORMAT_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

ROOT_ATTR = "trainaudit"
RANK_ATTR = "trainaudit_rank"
CONTROL_ATTR = "trainaudit_control"
CONTROL_GROUP = "control"

MODES: tuple[str, ...] = ("train", "eval", "predict")

#: The collections a capture hook knows. ``updates`` holds per-step optimizer update norms
#: (one scalar per parameter: ||W_s - W_{s-1}||_2), computed off the training thread.
COLLECTIONS: tuple[str, ...] = (
    "weights",
    "biases",
    "gradients",
    "outputs",
    "activation_inputs",
    "inputs",
    "losses",
    "metrics",
    "labels",
    "predictions",
    "tokens",
    "updates",
    "trees",
    "feature_importance",
    "other",
)

#: Per-step statistics of every captured tensor, in this order. ``min``, ``max``, ``sum``,
#: ``sumsq`` and ``l1`` are over the *finite* elements only; ``count`` counts all elements, so
#: finite = count - nan - posinf - neginf. Everything merges by addition except min and max.
STAT_FIELDS: tuple[str, ...] = (
    "count",
    "nan",
    "posinf",
    "neginf",
    "zero",
    "min",
    "max",
    "sum",
    "sumsq",
    "l1",
)
N_STATS = len(STAT_FIELDS)
STAT: Mapping[str, int] = {name: i for i, name in enumerate(STAT_FIELDS)}

# Chunking targets: many steps per chunk and per shard, because S3 is slow with one object per
# step (NOTES.md: sharding cut 1,005 objects to 25 and tripled read throughput).
CHUNK_TARGET_BYTES = 256 << 10
SHARD_TARGET_BYTES = 2 << 20
UNSHARDED_STEP_BYTES = 1 << 20
MAX_CHUNK_STEPS = 512
MAX_CHUNKS_PER_SHARD = 64
STATS_CHUNK_ROWS = 1024
ROW_CHUNK = 4096


def mode_code(mode: str) -> int:
    """Return the integer code stored for ``mode``."""
    try:
        return MODES.index(mode)
    except ValueError:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}") from None


def mode_name(code: int) -> str:
    """Return the mode name stored as ``code``."""
    return MODES[int(code)]


def rank_key(rank: int) -> str:
    """Key of the group that rank ``rank`` writes."""
    return f"rank_{int(rank)}"


def tensor_key(index: int) -> str:
    """Key of the group of the ``index``-th tensor a rank captured.

    Tensors are keyed by position, not name: user names (``<script>``, ``a/b``) never become
    store keys; the name lives in the commit record.
    """
    return f"tensors/t{int(index):05d}"


_RANK_RE = re.compile(r"^rank_(\d+)$")


def parse_rank_key(key: str) -> int | None:
    """Inverse of :func:`rank_key`; ``None`` for other keys."""
    m = _RANK_RE.match(key)
    return int(m.group(1)) if m else None


def storage_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype a tensor of ``dtype`` is stored as: numeric only, lossless.

    bfloat16 (which numpy lacks) becomes float32, exactly; bool becomes uint8; complex and
    object dtypes are refused: the format holds no object arrays and nothing pickled.
    """
    name = str(dtype)
    if name in ("bfloat16", "torch.bfloat16"):
        return np.dtype("float32")
    dt = np.dtype(name.removeprefix("torch."))
    if dt == np.bool_:
        return np.dtype("uint8")
    if dt.kind in "iuf":
        return dt
    raise TypeError(f"trainaudit stores numeric tensors only; got dtype {name!r}")


#: Collections whose values are float noise to a general-purpose compressor: zstd gains 1-8% on
#: weights and gradients at 2-4 ms per MB (writing them raw costs 0.5 ms per MB).
RAW_VALUE_COLLECTIONS = frozenset({"weights", "biases", "gradients", "updates"})


def values_compressors(collection: str) -> tuple[Any, ...]:
    """The compression of a tensor's value array: none for parameters and gradients (see
    :data:`RAW_VALUE_COLLECTIONS`), zstd at its fastest level (-1) for the rest: nearly as
    cheap as none, and it still halves ReLU outputs and integer labels or token ids."""
    if collection in RAW_VALUE_COLLECTIONS:
        return ()
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=-1),)


def values_layout(step_shape: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Return ``(chunk_steps, shard_steps)`` for a tensor of ``step_shape`` per step.

    A chunk holds ~256 KiB of steps (at most 512 steps) and a shard ~2 MiB (at most 64 chunks),
    so a scalar gets 512 steps per chunk and 32,768 per object. (zarr rewrites a whole shard
    on every append, so shards stay small enough to rewrite cheaply at each flush.) A step of 1 MiB or more is an
    object of its own: it is already large enough for S3, and sharding it would make every
    append read and rewrite the steps already in its shard.
    """
    step_bytes = max(1, math.prod(step_shape) * itemsize)
    chunk = int(min(MAX_CHUNK_STEPS, max(1, CHUNK_TARGET_BYTES // step_bytes)))
    if step_bytes >= UNSHARDED_STEP_BYTES:
        return chunk, chunk
    per_shard = int(min(MAX_CHUNKS_PER_SHARD, max(1, SHARD_TARGET_BYTES // (chunk * step_bytes))))
    return chunk, chunk * per_shard


def numpy_stats(values: np.ndarray) -> np.ndarray:
    """The :data:`STAT_FIELDS` of one tensor, as float64 (the reference the torch path matches).

    The common all-finite case takes five fast passes; only a tensor holding a NaN or Inf pays
    for masking.
    """
    a = np.asarray(values)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    flat = a.reshape(-1)
    out = np.zeros(N_STATS, dtype=np.float64)
    n = flat.size
    out[STAT["count"]] = n
    if n == 0:
        out[STAT["min"]] = np.nan
        out[STAT["max"]] = np.nan
        return out
    if flat.dtype.kind == "f":
        return _float_stats(flat, out)
    if flat.dtype.kind in "iu":
        return _finite_stats(flat, out)
    raise TypeError(f"trainaudit stores numeric tensors only; got dtype {flat.dtype}")


def scalar_stats(v: float) -> np.ndarray:
    """:data:`STAT_FIELDS` of one finite or non-finite number (``numpy_stats`` costs ~40x more)."""
    out = np.zeros(N_STATS, dtype=np.float64)
    out[STAT["count"]] = 1
    if math.isfinite(v):
        out[STAT["zero"]] = v == 0
        out[STAT["min"]] = out[STAT["max"]] = out[STAT["sum"]] = v
        out[STAT["sumsq"]] = v * v
        out[STAT["l1"]] = abs(v)
    else:
        out[STAT["nan" if math.isnan(v) else "posinf" if v > 0 else "neginf"]] = 1
        out[STAT["min"]] = out[STAT["max"]] = np.nan
    return out


def _float_stats(flat: np.ndarray, out: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # NaN and Inf are counted, not warned about
        f = flat.astype(np.float64, copy=False) if flat.dtype.itemsize < 4 else flat
        finite_mask = None
        total = float(np.sum(f, dtype=np.float64))
        if not math.isfinite(total):
            finite_mask = np.isfinite(f)
            out[STAT["nan"]] = int(np.count_nonzero(np.isnan(f)))
            out[STAT["posinf"]] = int(np.count_nonzero(f == np.inf))
            out[STAT["neginf"]] = int(np.count_nonzero(f == -np.inf))
            f = f[finite_mask]
        if f.size == 0:
            out[STAT["min"]] = np.nan
            out[STAT["max"]] = np.nan
            return out
        return _finite_stats(f, out)


def _finite_stats(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill zero, min, max, sum, sumsq and l1 of finite ``values`` (float64 accumulation)."""
    f64 = values.astype(np.float64)
    out[STAT["zero"]] = int(values.size - np.count_nonzero(values))
    out[STAT["min"]] = float(f64.min())
    out[STAT["max"]] = float(f64.max())
    out[STAT["sum"]] = float(f64.sum())
    out[STAT["sumsq"]] = float(np.dot(f64, f64))
    out[STAT["l1"]] = float(np.abs(f64).sum())
    return out


# --------------------------------------------------------------------------------------------
# Stores


def normalize_uri(uri: str | os.PathLike[str]) -> str:
    """Return the canonical form of a run URI: an absolute local path, ``s3://...`` or
    ``memory://...``. ``file://`` URLs become local paths (zarr's LocalStore creates folders
    and writes atomically; fsspec's file system does neither)."""
    s = os.fspath(uri)
    if s.startswith("file://"):
        s = s[len("file://") :]
    if "://" in s:
        scheme = s.split("://", 1)[0]
        if scheme not in ("s3", "memory", "gs", "gcs", "az", "abfs"):
            raise ValueError(
                f"Unsupported run URI scheme {scheme!r} in {s!r}: use a local path, file://, s3:// "
                f"or memory://"
            )
        return s.rstrip("/")
    return os.path.abspath(os.path.expanduser(s))


def is_remote(uri: str) -> bool:
    return "://" in uri


def s3_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Default s3fs options: honour ``AWS_ENDPOINT_URL`` (moto, MinIO) and never reuse an
    s3fs instance across event loops (NOTES.md: fsspec's cache is bound to one loop)."""
    opts: dict[str, Any] = {"skip_instance_cache": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    opts.update(storage_options or {})
    return opts


def make_store(uri: str, *, read_only: bool, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Return a zarr store for ``uri`` (already normalized)."""
    from zarr.storage import FsspecStore, LocalStore

    if not is_remote(uri):
        return LocalStore(uri, read_only=read_only)
    opts = s3_storage_options(storage_options) if uri.startswith("s3://") else dict(storage_options or {})
    return FsspecStore.from_url(uri, storage_options=opts, read_only=read_only)


def open_root(uri: str, *, mode: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Open the run's root group (``mode`` as in :func:`zarr.open_group`)."""
    import zarr

    store = make_store(uri, read_only=(mode == "r"), storage_options=storage_options)
    return zarr.open_group(store=store, mode=mode, zarr_format=3)  # type: ignore[arg-type]
