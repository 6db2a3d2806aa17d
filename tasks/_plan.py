"""The planner: from the rules' needs to one read of each chunk.

A rule declares what it needs as :class:`Need` objects: which tensors (collections, a name
regex, a predicate on the tensor's metadata), from which source (the per-step ``stats`` that
capture wrote, or the full ``values``) and, for values, which :mod:`kernel <._kernels>` and
which rows (all, the first, the last *n*). :func:`make_plan` resolves every need against the
run's tensor list and merges them per tensor: all kernels that any rule wants on a tensor are
computed in one task per (tensor, block of value rows), so each chunk is read and decompressed
once. Blocks are aligned with the tensor's shards and sized by ``block_bytes``, which bounds a
worker's memory whatever the size of the run. Per-step stats are read once per tensor (they
are tiny) and preferred by the rules wherever they suffice.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._catalog import RuleSpec, get_rule, registry, resolve_params
from ._kernels import Kernel

__all__ = [
    "Need",
    "TensorKey",
    "TensorMeta",
    "TensorPlan",
    "PlannedRule",
    "Plan",
    "RunOpener",
    "make_plan",
    "DEFAULT_BLOCK_BYTES",
]

#: (rank, tensor name)
TensorKey = tuple[int, str]
Rows = Literal["all", "first"] | int

#: Target size of the values one scan task holds in memory (a multiple of the tensor's shard).
DEFAULT_BLOCK_BYTES = 64 << 20
#: collections whose per-step statistics every audit reads for the report's series
SERIES_COLLECTIONS = ("losses", "gradients")


@dataclass(frozen=True, kw_only=True)
class Need:
    """What a rule reads.

    Args:
        name: how the rule refers to these tensors (``ctx.tensors(name)``).
        collections: the collections to select from (empty: any).
        regex: a regular expression the tensor name must match (``re.search``).
        where: a predicate on :class:`TensorMeta` (e.g. ReLU modules only).
        source: ``"stats"`` (per-step statistics) or ``"values"`` (full values through a kernel).
        kernel: a kernel, or a function of the tensor returning one (or None to skip it).
        rows: which value rows: ``"all"``, ``"first"`` or an int ``n`` (the last n).
        pair: for a paired kernel, the collection of the partner tensor (labels).
        ranks: ``"first"`` (rank 0 or the lowest) or ``"all"``.
        what: the words a ``not_evaluable`` message uses for this data.
        fallback_of: names of earlier needs of the same rule; this need is only read when none
            of them selected a tensor (e.g. full weights only when update norms were not captured).
    """

    name: str
    collections: tuple[str, ...] = ()
    regex: str | None = None
    where: Callable[[TensorMeta], bool] | None = None
    source: Literal["stats", "values"] = "stats"
    kernel: Kernel | Callable[[TensorMeta], Kernel | None] | None = None
    rows: Rows = "all"
    pair: str | None = None
    ranks: Literal["first", "all"] = "first"
    what: str = ""
    fallback_of: tuple[str, ...] = ()

    def selects(self, t: TensorMeta) -> bool:
        if self.collections and t.collection not in self.collections:
            return False
        if self.regex is not None and not re.search(self.regex, t.name):
            return False
        return self.where is None or bool(self.where(t))

    def kernel_for(self, t: TensorMeta) -> Kernel | None:
        if self.kernel is None or isinstance(self.kernel, Kernel):
            return self.kernel
        return self.kernel(t)


@dataclass(frozen=True, kw_only=True)
class TensorMeta:
    """What the plan knows about a captured tensor (picklable, reader-independent)."""

    name: str
    rank: int
    collection: str
    shape: tuple[int, ...]
    dtype: str
    meta: Mapping[str, Any]
    n_stats: int
    n_values: int
    shard_steps: int
    chunk_steps: int = 0
    value_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False)

    @property
    def key(self) -> TensorKey:
        return (self.rank, self.name)

    @property
    def module_type(self) -> str:
        return str(self.meta.get("module_type", ""))

    @property
    def activation(self) -> str:
        """``relu``/``tanh``/``sigmoid`` for activation modules (from meta), else ``""``."""
        act = self.meta.get("activation")
        if act:
            return str(act).lower()
        mt = self.module_type.lower()
        for a in ("relu", "tanh", "sigmoid"):
            if mt == a or mt.endswith(a) and mt in ("relu", "relu6", "leakyrelu", "tanh", "sigmoid"):
                return a
        return ""

    @property
    def depth(self) -> float:
        d = self.meta.get("depth")
        return float(d) if isinstance(d, int | float) else math.inf

    @property
    def layer(self) -> str:
        """A short name for reports: the module or parameter name without the collection."""
        return str(self.meta.get("module") or self.name.split("/", 1)[-1])

    @staticmethod
    def from_info(info: Any, value_steps: np.ndarray | None = None) -> TensorMeta:
        return TensorMeta(
            name=str(info.name),
            rank=int(getattr(info, "rank", 0)),
            collection=str(info.collection),
            shape=tuple(int(s) for s in getattr(info, "shape", ()) or ()),
            dtype=str(getattr(info, "dtype", "float32")),
            meta=dict(getattr(info, "meta", {}) or {}),
            n_stats=int(getattr(info, "n_stats", 0) or 0),
            n_values=int(getattr(info, "n_values", 0) or 0),
            shard_steps=max(1, int(getattr(info, "shard_steps", 1) or 1)),
            chunk_steps=max(0, int(getattr(info, "chunk_steps", 0) or 0)),
            value_steps=np.asarray(value_steps if value_steps is not None else np.zeros(0), dtype=np.int64),
        )


@dataclass(frozen=True, kw_only=True)
class TensorPlan:
    """Everything the scan reads of one tensor.

    ``kernels`` maps each kernel to the value-row range ``[lo, hi)`` it wants; ``blocks`` are
    the row ranges one task each reads (shard-aligned); ``partners`` maps a paired kernel hosted
    here to its guest tensor (read at the same steps in the same task).
    """

    tensor: TensorMeta
    stats: bool
    kernels: Mapping[Kernel, tuple[int, int]]
    blocks: tuple[tuple[int, int], ...]
    partners: Mapping[Kernel, TensorMeta] = field(default_factory=dict)

    @property
    def key(self) -> TensorKey:
        return self.tensor.key


@dataclass(frozen=True, kw_only=True)
class PlannedRule:
    """A rule with its resolved parameters and the tensors each of its needs selected.

    ``selected[need.name]`` is a list of ``(tensor key, kernel or None)``.
    """

    spec: RuleSpec
    params: Mapping[str, Any]
    needs: tuple[Need, ...]
    selected: Mapping[str, list[tuple[TensorKey, Kernel | None]]]
    error: str | None = None


@dataclass(frozen=True)
class RunOpener:
    """A picklable way for a worker to reopen the run (``open_run(uri, storage_options=...)``).

    The open run is cached per process and per ``token`` (one per plan): the tasks of one audit
    share it (and the statistics log it read once), while the next audit of a live run reopens
    it and sees the steps committed since.
    """

    uri: str
    storage_options: tuple[tuple[str, Any], ...] = ()
    token: str = ""

    def __call__(self) -> Any:
        return _open_cached(self.uri, self.storage_options, self.token)


def _open_cached(uri: str, so: tuple[tuple[str, Any], ...], token: str) -> Any:
    from trainaudit.capture import open_run

    key = (uri, repr(so), token)  # storage options may hold dicts: key on their repr
    with _RUN_CACHE_LOCK:
        run = _RUN_CACHE.get(key)
    if run is None:
        run = open_run(uri, storage_options=dict(so) or None)
        with _RUN_CACHE_LOCK:
            while len(_RUN_CACHE) >= 4:  # oldest first
                _RUN_CACHE.pop(next(iter(_RUN_CACHE)))
            _RUN_CACHE[key] = run
    return run


_RUN_CACHE: dict[tuple[str, str, str], Any] = {}
_RUN_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The audit's plan: the rules and, per tensor, what to read."""

    uri: str
    opener: Callable[[], Any]
    run_info: Mapping[str, Any]
    rules: tuple[PlannedRule, ...]
    tensors: Mapping[TensorKey, TensorPlan]
    all_tensors: Mapping[TensorKey, TensorMeta]
    block_bytes: int = DEFAULT_BLOCK_BYTES
    #: (global_step, mode code, mode_step) arrays of the first rank, sorted by global step
    step_table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: (tensor, paired kernel) -> the tensor whose task computes it (the partner, e.g. labels)
    hosted: Mapping[tuple[TensorKey, Kernel], TensorKey] = field(default_factory=dict)

    def host_of(self, key: TensorKey, kernel: Kernel | None) -> TensorKey:
        """The tensor under which the scan stores ``kernel``'s state for ``key``."""
        if kernel is None:
            return key
        return self.hosted.get((key, kernel), key)

    @property
    def n_tasks(self) -> int:
        return sum(len(t.blocks) for t in self.tensors.values())

    def value_bytes(self) -> int:
        """Bytes of values the plan reads (padded rows)."""
        total = 0
        for tp in self.tensors.values():
            row = _row_bytes(tp.tensor)
            total += sum(hi - lo for lo, hi in tp.blocks) * row
        return total


def _row_bytes(t: TensorMeta) -> int:
    try:
        itemsize = np.dtype(t.dtype.removeprefix("torch.")).itemsize
    except TypeError:
        itemsize = 4
    return max(1, math.prod(t.shape) * itemsize)


def _row_range(rows: Rows, n: int) -> tuple[int, int]:
    if rows == "all":
        return 0, n
    if rows == "first":
        return 0, min(1, n)
    k = int(rows)
    return max(0, n - k), n


def _blocks(t: TensorMeta, ranges: Iterable[tuple[int, int]], block_bytes: int) -> tuple[tuple[int, int], ...]:
    """Blocks of at most ~``block_bytes`` covering every range, aligned with the tensor's
    shards (or, when a shard is larger than a block, its chunks), so no chunk is read twice.
    Only a ``block_bytes`` smaller than one chunk gives unaligned blocks."""
    shard = max(1, t.shard_steps)
    chunk = max(1, min(t.chunk_steps or shard, shard))
    rows = max(1, block_bytes // _row_bytes(t))
    if rows >= shard:
        per = (rows // shard) * shard
    elif rows >= chunk:
        per = (rows // chunk) * chunk
    else:
        per = rows
    wanted = sorted({(lo, hi) for lo, hi in ranges if hi > lo})
    out: list[tuple[int, int]] = []
    for lo, hi in wanted:
        start = (lo // per) * per
        while start < hi:
            b = (start, min(start + per, t.n_values))
            if b not in out and not any(a <= b[0] and b[1] <= z for a, z in out):
                out.append(b)
            start += per
    # blocks from overlapping ranges may overlap: keep disjoint pieces
    out.sort()
    disjoint: list[tuple[int, int]] = []
    for lo, hi in out:
        if disjoint and lo < disjoint[-1][1]:
            lo = disjoint[-1][1]
        if hi > lo:
            disjoint.append((lo, hi))
    return tuple(disjoint)


def run_tensors(run: Any) -> dict[TensorKey, TensorMeta]:
    """Every tensor of every rank, as :class:`TensorMeta` (the steps of their saved values are
    read concurrently: on S3 each is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    infos = [(rank, info) for rank in run.ranks for info in run.tensors(rank=rank)]

    def steps_of(item: tuple[int, Any]) -> np.ndarray | None:
        rank, info = item
        if not int(getattr(info, "n_values", 0) or 0):
            return None
        return np.asarray(run.value_steps(info.name, rank=rank).step, dtype=np.int64)

    with ThreadPoolExecutor(max_workers=16) as pool:
        vsteps = list(pool.map(steps_of, infos))
    out: dict[TensorKey, TensorMeta] = {}
    for (rank, info), vs in zip(infos, vsteps, strict=True):
        t = TensorMeta.from_info(info, vs)
        t = dataclasses.replace(t, rank=rank)
        out[t.key] = t
    return out


def run_info(run: Any) -> dict[str, Any]:
    """The run's identity and step table summary, as plain data."""
    from trainaudit.capture._format import MODES

    steps = run.steps(rank=run.ranks[0]) if run.ranks else None
    per_mode: dict[str, int] = {}
    gsteps: list[int] = []
    if steps is not None:
        codes = np.asarray(steps.mode)
        for code, name in enumerate(MODES):
            k = int(np.count_nonzero(codes == code))
            if k:
                per_mode[name] = k
        gsteps = [int(s) for s in np.asarray(steps.global_step)[[0, -1]]] if len(codes) else []
    return {
        "uri": str(run.uri),
        "run_id": str(getattr(run, "run_id", "")),
        "framework": str(getattr(run, "framework", "")),
        "status": str(getattr(run, "status", "")),
        "created": str(getattr(run, "created", "")),
        "ranks": [int(r) for r in run.ranks],
        "modes": list(per_mode),
        "steps": per_mode,
        "step_range": gsteps,
        "config": dict(getattr(run, "config", {}) or {}),
        "capture_errors": list(getattr(run, "errors", []) or []),
        "lost": dict(getattr(run, "lost", {}) or {}),
    }


def _select(need: Need, tensors: Mapping[TensorKey, TensorMeta], first_rank: int) -> list[TensorMeta]:
    out = [t for t in tensors.values() if need.selects(t)]
    if need.ranks == "first":
        out = [t for t in out if t.rank == first_rank]
    return sorted(out, key=lambda t: (t.rank, t.depth, t.name))


def _partner(t: TensorMeta, collection: str, tensors: Mapping[TensorKey, TensorMeta]) -> TensorMeta | None:
    """The tensor of ``collection`` paired with ``t``: same name suffix, else the only one."""
    cands = [u for u in tensors.values() if u.collection == collection and u.rank == t.rank and u.n_values]
    suffix = t.name.split("/", 1)[-1]
    for u in cands:
        if u.name.split("/", 1)[-1] == suffix:
            return u
    return cands[0] if len(cands) == 1 else None


def make_plan(
    run: Any,
    rules: Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    opener: Callable[[], Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Plan:
    """Plan an audit of ``run`` (an open run) with ``rules`` (ids; None: the whole catalog).

    ``params`` maps a rule id to parameter overrides; they are validated here, so a bad value
    fails before anything is read (:class:`InvalidParameterError`). A rule whose ``needs``
    function fails is planned as an error and the others go on.
    """
    from trainaudit.capture._errors import InvalidParameterError

    params = dict(params or {})
    ids = list(rules) if rules is not None else list(registry())
    unknown_params = sorted(set(params) - set(ids))
    if unknown_params:
        get_rule(unknown_params[0])  # UnknownRuleError when the id does not exist at all
        raise InvalidParameterError(
            f"params given for rule {unknown_params[0]!r}, which is not part of this audit"
        )
    specs = [get_rule(i) for i in ids]
    resolved = [resolve_params(s, params.get(s.id)) for s in specs]

    tensors = run_tensors(run)
    first_rank = min(run.ranks) if run.ranks else 0

    planned: list[PlannedRule] = []
    wants_stats: set[TensorKey] = set()
    wants_kernels: dict[TensorKey, dict[Kernel, tuple[int, int]]] = {}
    partners: dict[TensorKey, dict[Kernel, TensorMeta]] = {}
    hosted: dict[tuple[TensorKey, Kernel], TensorKey] = {}
    for spec, p in zip(specs, resolved, strict=True):
        try:
            needs = tuple(spec.needs(p))
            selected: dict[str, list[tuple[TensorKey, Kernel | None]]] = {}
            for need in needs:
                sel: list[tuple[TensorKey, Kernel | None]] = []
                if any(selected.get(n) for n in need.fallback_of):
                    selected[need.name] = sel
                    continue
                for t in _select(need, tensors, first_rank):
                    if need.source == "stats":
                        if t.n_stats:
                            wants_stats.add(t.key)
                            sel.append((t.key, None))
                        continue
                    kernel = need.kernel_for(t)
                    if kernel is None:
                        continue
                    host = t
                    if kernel.paired:
                        # hosted on the partner (labels): its task reads this tensor's rows at the
                        # same steps, so the labels are read once for every kernel on them
                        partner = _partner(t, need.pair or "labels", tensors)
                        if partner is None or not t.n_values:
                            sel.append((t.key, kernel))
                            continue
                        if hasattr(kernel, "guest"):
                            kernel = dataclasses.replace(kernel, guest=t.name)  # type: ignore[type-var]
                        host = partner
                        hosted[(t.key, kernel)] = partner.key
                        partners.setdefault(partner.key, {})[kernel] = t
                    sel.append((t.key, kernel))
                    if not host.n_values:
                        continue
                    lo, hi = _row_range(need.rows if host is t else "all", host.n_values)
                    k = wants_kernels.setdefault(host.key, {})
                    if kernel in k:  # two rules, one kernel: read the union of their rows
                        a, b = k[kernel]
                        lo, hi = min(a, lo), max(b, hi)
                    k[kernel] = (lo, hi)
                selected[need.name] = sel
            planned.append(PlannedRule(spec=spec, params=p, needs=needs, selected=selected))
        except Exception as e:  # a broken custom rule must not stop the audit
            planned.append(
                PlannedRule(spec=spec, params=p, needs=(), selected={},
                            error=f"planning its needs failed: {type(e).__name__}: {e}")
            )

    # the run-level series of the report (loss curves, gradient norms) come from stats
    for t in tensors.values():
        if t.rank == first_rank and t.collection in SERIES_COLLECTIONS and t.n_stats:
            wants_stats.add(t.key)

    tplans: dict[TensorKey, TensorPlan] = {}
    for key in sorted(wants_stats | set(wants_kernels)):
        t = tensors[key]
        ks = wants_kernels.get(key, {})
        tplans[key] = TensorPlan(
            tensor=t,
            stats=key in wants_stats,
            kernels=ks,
            blocks=_blocks(t, ks.values(), block_bytes) if ks else (),
            partners=partners.get(key, {}),
        )
    if storage_options is None:
        storage_options = getattr(run, "storage_options", None)
    so = tuple(sorted((storage_options or {}).items()))
    uri = str(run.uri)
    table = None
    if run.ranks:
        st = run.steps(rank=first_rank)
        g = np.asarray(st.global_step, dtype=np.int64)
        order = np.argsort(g, kind="stable")
        table = (g[order], np.asarray(st.mode, dtype=np.int64)[order], np.asarray(st.mode_step, dtype=np.int64)[order])
    return Plan(
        step_table=table,
        hosted=hosted,
        uri=uri,
        opener=opener or RunOpener(uri, so, uuid.uuid4().hex),
        run_info=run_info(run),
        rules=tuple(planned),
        tensors=tplans,
        all_tensors=tensors,
        block_bytes=block_bytes,
    )
