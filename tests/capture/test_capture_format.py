"""The run format's pure parts: statistics (numpy reference and the torch fast path), storage
dtypes, chunk layout, URIs, and the save schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _capture_models import assert_stats_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trainaudit.capture import STAT_FIELDS, CaptureConfig, SaveSchedule, _compat, _torch_device
from trainaudit.capture import _format as F
from trainaudit.capture._torch import torch_stats
from trainaudit.capture._torch_device import (
    ROW,
    batched_device_stats,
    finish_device_stats_rows,
    parameter_differences,
    snapshot_parameters,
)
from trainaudit.capture._torch_snapshot import scalar_stats
from trainaudit.capture._writer import NumpyPayload, RunWriter, StepItem


def direct_stats(a: np.ndarray) -> dict[str, float]:
    """The statistics computed the obvious way, independently of _format.numpy_stats."""
    f = np.asarray(a).astype(np.float64).reshape(-1)
    fin = f[np.isfinite(f)]
    return {
        "count": f.size,
        "nan": int(np.isnan(f).sum()),
        "posinf": int((f == np.inf).sum()),
        "neginf": int((f == -np.inf).sum()),
        "zero": int((fin == 0).sum()),
        "min": float(fin.min()) if fin.size else math.nan,
        "max": float(fin.max()) if fin.size else math.nan,
        "sum": float(fin.sum()),
        "sumsq": float((fin * fin).sum()),
        "l1": float(np.abs(fin).sum()),
    }


def test_stat_fields_order_is_the_contract() -> None:
    assert STAT_FIELDS == ("count", "nan", "posinf", "neginf", "zero", "min", "max", "sum", "sumsq", "l1")
    assert F.N_STATS == 10 and [F.STAT[n] for n in STAT_FIELDS] == list(range(10))


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, -2.0, 0.0, 3.5], dtype=np.float32),
        np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float64),
        np.array([np.nan, np.nan], dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        np.array([0, 3, -7, 2], dtype=np.int64),
        np.array([True, False, True]),
        np.array([1.5, -0.0, 65504.0], dtype=np.float16),
        np.array(4.25),
    ],
    ids=["f32", "nonfinite", "all-nan", "empty", "int", "bool", "f16", "scalar"],
)
def test_numpy_stats_match_direct_numpy(values: np.ndarray) -> None:
    got = F.numpy_stats(values)
    assert got.dtype == np.float64 and got.shape == (F.N_STATS,)
    assert_stats_equal(got, direct_stats(values), rtol=0)
    # The derived L2 norm of the finite elements
    fin = values.astype(np.float64)[np.isfinite(values.astype(np.float64))]
    assert math.isclose(math.sqrt(got[F.STAT["sumsq"]]), float(np.linalg.norm(fin)), rel_tol=1e-12, abs_tol=0)


def test_numpy_stats_refuses_non_numeric() -> None:
    with pytest.raises(TypeError, match="numeric"):
        F.numpy_stats(np.array(["a", "b"]))


_float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
    elements={"allow_nan": True, "allow_infinity": True},
)
_int_arrays = hnp.arrays(
    dtype=st.sampled_from([np.int8, np.int32, np.int64, np.uint8]),
    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=9),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_float_arrays, _int_arrays))
def test_torch_stats_match_numpy_stats(a: np.ndarray) -> None:
    """The training-side torch statistics equal the numpy reference, for any float16/32/64
    or integer tensor, including NaN, +-Inf, empty and 0-d tensors."""
    t = torch.from_numpy(a.copy())
    want = F.numpy_stats(a)
    assert_stats_equal(torch_stats(t), want, rtol=1e-5)


_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", _CUDA])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.lists(st.one_of(_float_arrays, _int_arrays), min_size=1, max_size=5))
def test_batched_device_statistics_match_numpy_stats(device: str, arrays: list[np.ndarray]) -> None:
    """The statistics CUDA tensors get (a step's tensors reduced together on the device, no
    host round trip) equal the numpy reference, tensor by tensor, in the tensors' order
    whatever their mix of dtypes. The kernels are plain torch operations, so CPU checks their
    arithmetic everywhere; the CUDA case runs where there is a GPU."""
    tensors = [torch.from_numpy(a.copy()).to(device) for a in arrays]
    got = finish_device_stats_rows(batched_device_stats(tensors).cpu().numpy())
    assert got.shape == (len(arrays), F.N_STATS)
    for row, a in zip(got, arrays, strict=True):
        assert_stats_equal(row, F.numpy_stats(a), rtol=1e-5)


@pytest.mark.parametrize("big", [None, ROW // 2])
@pytest.mark.parametrize("device", ["cpu", _CUDA])
def test_batched_device_statistics_of_large_half_precision_bool_and_empty_tensors(
        device: str, big: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors of several reduction rows (a NaN and an Inf in different rows), float16 and
    bfloat16, booleans, integers, empty and 0-d tensors, float64, side by side in one batch;
    also with the two largest past the size from which a tensor is copied into the rows on
    its own (their rows then come after the small tensors')."""
    if big is not None:
        monkeypatch.setattr(_torch_device, "BIG", big)
    rng = np.random.default_rng(0)
    big = rng.normal(size=3 * ROW + 7).astype(np.float32)
    big[5], big[2 * ROW + 1] = np.nan, np.inf
    f32 = rng.normal(size=(7, 5)).astype(np.float32)
    tensors = [torch.from_numpy(f32).to(torch.bfloat16), torch.arange(-3, 9), torch.from_numpy(big), torch.zeros(0),
               torch.from_numpy(f32).half(), torch.tensor([True, False, True]), torch.tensor(float("nan")),
               torch.from_numpy(big[:ROW].astype(np.float64))]
    want = [F.numpy_stats(tensors[0].float().numpy()), F.numpy_stats(np.arange(-3, 9)), F.numpy_stats(big),
            F.numpy_stats(np.zeros(0)), F.numpy_stats(tensors[4].float().numpy()), F.numpy_stats(np.array([1, 0, 1])),
            F.numpy_stats(np.array(np.nan)), F.numpy_stats(big[:ROW].astype(np.float64))]
    got = finish_device_stats_rows(batched_device_stats([t.to(device) for t in tensors]).cpu().numpy())
    for row, w in zip(got, want, strict=True):
        assert_stats_equal(row, w, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", _CUDA])
def test_batched_device_statistics_of_integers_beyond_float32(device: str) -> None:
    """Integers are reduced in float64, each dtype concatenated on its own: token ids and
    counts above 2**24, which float32 would round, come out exact next to float32 tensors."""
    big = np.array([2**24 + 1, 2**40 + 3, -(2**30) - 1], dtype=np.int64)
    f32 = np.array([0.5, -1.5], dtype=np.float32)
    got = finish_device_stats_rows(batched_device_stats([torch.from_numpy(f32).to(device), torch.from_numpy(big).to(device)]).cpu().numpy())
    assert_stats_equal(got[0], F.numpy_stats(f32), rtol=0)
    assert got[1][F.STAT["sum"]] == float(big.sum()) and got[1][F.STAT["max"]] == 2**40 + 3


@pytest.mark.parametrize("device", ["cpu", _CUDA])
def test_parameter_differences_and_snapshots(device: str) -> None:
    """The update norms' device side: differences of float32/float64 parameters by one foreach
    subtraction (float16 and bfloat16 ones exact, in float32), and snapshots written into the
    earlier snapshot's memory where it fits, else new copies."""
    g = torch.Generator().manual_seed(0)
    cur = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g).half(), torch.randn(2, generator=g).double(),
           torch.randn(3, generator=g).bfloat16()]
    prev = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g).half(), torch.randn(2, generator=g).double(),
            torch.randn(3, generator=g).bfloat16()]
    cur, prev = [t.to(device) for t in cur], [t.to(device) for t in prev]
    diffs = parameter_differences(cur, prev)
    for c, p, d in zip(cur, prev, diffs, strict=True):
        assert d.dtype == (torch.float64 if c.dtype == torch.float64 else torch.float32)
        assert torch.equal(d.cpu(), c.cpu().to(d.dtype) - p.cpu().to(d.dtype))
    reuse = [prev[0], None, torch.empty(7, dtype=torch.float64, device=device), prev[3]]
    snaps = snapshot_parameters(cur, reuse)
    assert snaps[0] is prev[0] and snaps[3] is prev[3]  # written in place
    assert snaps[2] is not reuse[2]  # wrong shape: a new copy
    for c, s in zip(cur, snaps, strict=True):
        assert torch.equal(s, c) and s.data_ptr() != c.data_ptr()


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=12),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_torch_stats_of_bfloat16_equal_numpy_of_its_float32_image(a: np.ndarray) -> None:
    t = torch.from_numpy(a).to(torch.bfloat16)
    assert_stats_equal(torch_stats(t), F.numpy_stats(t.float().numpy()), rtol=1e-5)


def test_fast_stats_extension_is_built() -> None:
    """``./dev`` builds capture/_fastats.c (gcc is on every machine of ours); a missing build
    would silently fall back to the five-pass path, several times slower."""
    assert _compat.HAS_FAST_STATS


@st.composite
def _long_float_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays long enough to cross the C kernel's vector lanes and blocks, with NaN, +-Inf,
    zeros, tiny and huge (square overflows float32) values planted anywhere."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * draw(st.sampled_from([1e-3, 1.0, 1e3]))).astype(dtype)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3e20, -3e20, 1e-40, np.finfo(dtype).max]
    for _ in range(draw(st.integers(0, 6)) if n else 0):
        a[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
    return a


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_long_float_arrays())
def test_fast_stats_match_numpy_stats(a: np.ndarray) -> None:
    want = F.numpy_stats(a)
    assert_stats_equal(_compat.fast_stats(a), want, rtol=1e-6)
    assert_stats_equal(torch_stats(torch.from_numpy(a)), want, rtol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_long_float_arrays(), max_size=6))
def test_fast_stats_many_equal_one_by_one(arrays: list[np.ndarray]) -> None:
    got = _compat.fast_stats_many(arrays)
    assert got is not None and len(got) == len(arrays)
    for g, a in zip(got, arrays, strict=True):
        assert_stats_equal(g, F.numpy_stats(a), rtol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_long_float_arrays(), max_size=5), st.integers(0, 2**32 - 1))
def test_snapshot_many_copies_and_measures_like_numpy(arrays: list[np.ndarray], seed: int) -> None:
    """The parameter copier's pass: each dst becomes a copy of its src, with src's statistics
    and sum((src - prev)**2) (prev: src moved a little, or none), NaN and Inf included."""
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):  # Inf - Inf, finfo.max + a little
        prevs = [None if i % 3 == 2 else (a + rng.standard_normal(a.size).astype(a.dtype) * a.dtype.type(1e-2)) for i, a in enumerate(arrays)]
    dsts = [np.full_like(a, 7.0) for a in arrays]
    got = _compat.snapshot_many(list(zip(arrays, dsts, prevs, strict=True)))
    assert got is not None and len(got) == len(arrays)
    for (stats, update), a, dst, prev in zip(got, arrays, dsts, prevs, strict=True):
        np.testing.assert_array_equal(dst, a)
        assert_stats_equal(stats, F.numpy_stats(a), rtol=1e-6)
        if prev is None:
            assert update is None
        else:
            with np.errstate(all="ignore"):
                want = float(np.sum((a.astype(np.float64) - prev.astype(np.float64)) ** 2))
            assert np.isclose(update, want, rtol=1e-5, equal_nan=True), (update, want)


def test_snapshot_many_refuses_mismatched_buffers_and_releases_them() -> None:
    a = np.ones(10, dtype=np.float32)
    for bad in [(a, np.empty(9, dtype=np.float32), None), (a, np.empty(10, dtype=np.float64), None),
                (a, np.empty(10, dtype=np.float32), np.ones(10, dtype=np.float64))]:
        with pytest.raises(ValueError, match="one format and size"):
            _compat.snapshot_many([(a, np.empty_like(a), None), bad])
    a.resize(20, refcheck=False)  # raises BufferError if a failed call left a view of it open


def test_fast_stats_many_refuses_other_dtypes() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        _compat.fast_stats_many([np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.int32)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_long_float_arrays())
def test_torch_stats_without_the_extension_match_numpy_stats(a: np.ndarray) -> None:
    saved = _compat._fastats
    _compat._fastats = None  # the fallback path of an install without a C compiler
    try:
        assert_stats_equal(torch_stats(torch.from_numpy(a)), F.numpy_stats(a), rtol=1e-5)
    finally:
        _compat._fastats = saved


@pytest.mark.parametrize("v", [0.0, -0.0, 1.5, -3.25, 1e200, np.nan, np.inf, -np.inf])
def test_scalar_stats_equal_numpy_stats(v: float) -> None:
    assert_stats_equal(scalar_stats(v), F.numpy_stats(np.array(v)), rtol=0)


def test_recorded_numbers_and_arrays_take_the_batched_statistics_like_numpy_stats() -> None:
    """What ``record()`` and the XGBoost callback hand the writer (NumpyPayload): numbers get
    their statistics written down directly, arrays join the step's one C call; both equal
    ``numpy_stats``, whatever the dtype, NaN and Inf included."""
    rng = np.random.default_rng(3)
    planted = rng.standard_normal(700).astype(np.float32)
    planted[[3, 500]] = [np.nan, -np.inf]
    values = [
        0.25, -0.0, np.nan, np.inf, 7, True, np.float16(1.5), np.int64(2**40 + 1),
        planted, rng.standard_normal((20, 3)), rng.standard_normal(50).astype(np.float16),
        rng.integers(-5, 5, 300), rng.random(40) > 0.5, np.zeros(0, dtype=np.float32),
        np.array([np.nan, np.nan]),
    ]
    items = [StepItem(f"t{i}", "other", NumpyPayload(v), False) for i, v in enumerate(values)]
    RunWriter._batch_stats(None, items)  # type: ignore[arg-type]  (uses no writer state)
    batched = [i for i, item in enumerate(items) if item.payload._stats is not None]  # type: ignore[union-attr]
    assert batched == [8, 9, 10, 11, 12, 14]  # the arrays, not the numbers or the empty one
    for item, v in zip(items, values, strict=True):
        stats, got = item.payload.resolve(True)  # type: ignore[union-attr]
        assert_stats_equal(stats, F.numpy_stats(np.array(v)), rtol=1e-6)
        np.testing.assert_array_equal(got, np.array(v))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_diff_sumsq(dtype: type) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal(5000).astype(dtype)
    b = (a + rng.standard_normal(5000) * 1e-3).astype(dtype)
    want = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert math.isclose(_compat.diff_sumsq(a, b), want, rel_tol=1e-6)
    big = np.full(40, 3e20, dtype=dtype)
    assert math.isclose(_compat.diff_sumsq(big, -big), 40 * (6e20 if dtype == np.float64 else 2 * float(np.float32(3e20))) ** 2, rel_tol=1e-6)
    assert _compat.diff_sumsq(a, b.astype(np.float16)) is None  # mixed dtypes: the caller's fallback


def test_torch_stats_float32_overflow_of_sumsq_is_redone_in_float64() -> None:
    a = np.full(4, 3e20, dtype=np.float32)  # finite, but a*a overflows float32
    got = torch_stats(torch.from_numpy(a))
    assert math.isfinite(got[F.STAT["sumsq"]])
    assert math.isclose(got[F.STAT["sumsq"]], 4 * float(np.float32(3e20)) ** 2, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [("float16", "float16"), ("bfloat16", "float32"), ("torch.bfloat16", "float32"), ("float32", "float32"),
     ("float64", "float64"), ("int64", "int64"), ("uint8", "uint8"), ("bool", "uint8"), ("int8", "int8")],
)
def test_storage_dtype_is_lossless(dtype: str, stored: str) -> None:
    assert F.storage_dtype(dtype) == np.dtype(stored)


@pytest.mark.parametrize("dtype", ["complex64", "object", "U3"])
def test_storage_dtype_refuses_non_numeric(dtype: str) -> None:
    with pytest.raises(TypeError, match="numeric tensors only"):
        F.storage_dtype(dtype)


def test_values_layout_of_a_scalar_packs_many_steps_per_object() -> None:
    assert F.values_layout((), 8) == (F.MAX_CHUNK_STEPS, F.MAX_CHUNK_STEPS * F.MAX_CHUNKS_PER_SHARD)


def test_values_layout_bounds_object_sizes() -> None:
    for shape in [(), (10,), (128, 128), (1024, 1024), (4096, 4096)]:
        chunk, shard = F.values_layout(shape, 4)
        step = max(1, math.prod(shape) * 4)
        assert 1 <= chunk <= F.MAX_CHUNK_STEPS and shard % chunk == 0
        assert chunk == 1 or chunk * step <= F.CHUNK_TARGET_BYTES
        assert shard // chunk <= F.MAX_CHUNKS_PER_SHARD
        assert shard // chunk == 1 or shard * step <= F.SHARD_TARGET_BYTES


@pytest.mark.parametrize(
    ("uri", "want"),
    [("s3://b/runs/x/", "s3://b/runs/x"), ("memory://a", "memory://a"), ("file:///tmp/r", "/tmp/r")],
)
def test_normalize_uri(uri: str, want: str) -> None:
    assert F.normalize_uri(uri) == want


def test_normalize_uri_makes_local_paths_absolute_and_refuses_unknown_schemes() -> None:
    import os

    assert F.normalize_uri("runs/x") == os.path.abspath("runs/x")
    with pytest.raises(ValueError, match="Unsupported run URI scheme 'ftp'"):
        F.normalize_uri("ftp://host/run")


def test_mode_codes_round_trip() -> None:
    assert [F.mode_code(m) for m in F.MODES] == [0, 1, 2]
    assert [F.mode_name(c) for c in (0, 1, 2)] == ["train", "eval", "predict"]
    with pytest.raises(ValueError, match="mode must be one of"):
        F.mode_code("test")


def test_keys() -> None:
    assert F.rank_key(3) == "rank_3" and F.parse_rank_key("rank_12") == 12 and F.parse_rank_key("control") is None
    assert F.tensor_key(7) == "tensors/t00007"


# ------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    ("schedule", "saved"),
    [
        (SaveSchedule(every=1), list(range(12))),
        (SaveSchedule(every=5), [0, 5, 10]),
        (SaveSchedule(every=5, first=3), [0, 1, 2, 5, 10]),
        (SaveSchedule(every=None, first=2), [0, 1]),
        (SaveSchedule(every=4, start=3, end=9), [4, 8]),
        (SaveSchedule(every=None, steps=(7, 2, 2, 11)), [2, 7, 11]),
        (SaveSchedule.never(), []),
        (SaveSchedule(every=3, start=4, first=2), [4, 5, 6, 9]),
    ],
    ids=["every1", "every5", "first3", "first-only", "start-end", "explicit", "never", "start-first"],
)
def test_schedule_due(schedule: SaveSchedule, saved: list[int]) -> None:
    assert [s for s in range(12) if schedule.due(s)] == saved


@given(
    every=st.one_of(st.none(), st.integers(1, 12)),
    first=st.integers(0, 5),
    start=st.integers(0, 10),
    end=st.one_of(st.none(), st.integers(0, 40)),
    steps=st.lists(st.integers(0, 50), max_size=4),
    modes=st.sampled_from([("train",), ("train", "eval", "predict")]),
    mode=st.sampled_from(["train", "eval"]),
    step=st.integers(0, 60),
)
def test_schedule_unchanged_for_is_a_run_of_equal_answers(every: int | None, first: int, start: int, end: int | None,
                                                          steps: list[int], modes: tuple[str, ...], mode: str, step: int) -> None:
    """``unchanged_for`` (the hooks work a schedule out once per change) never spans a step
    whose answer differs (so a saved step is never skipped), and between saved steps reaches
    the next one; FOREVER only when nothing changes again."""
    from trainaudit.capture._config import FOREVER

    sch = SaveSchedule(every=every, first=first, start=start, end=end, steps=tuple(steps), modes=modes)
    run = sch.unchanged_for(step, mode)
    assert run >= 1
    horizon = 130
    answers = [sch.due(t, mode) for t in range(step, step + horizon)]
    changes = [i for i in range(1, horizon) if answers[i] != answers[0]]
    assert all(a == answers[0] for a in answers[: min(run, horizon)])
    if changes and not answers[0] and step >= start:
        assert run == changes[0]  # (not due: up to the next saved step exactly; before start, to start)
    if run == FOREVER:
        assert not changes
    cfg = CaptureConfig(values={"weights": sch})
    assert cfg.unchanged_for("weights", mode, step) == run  # (statistics every step: never the shorter)


def test_schedule_modes() -> None:
    s = SaveSchedule(every=1, modes=("eval",))
    assert not s.due(0, "train") and s.due(0, "eval")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"every": 0}, "every=0"), ({"first": -1}, "first=-1"), ({"modes": ("test",)}, "modes contains 'test'")],
)
def test_schedule_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SaveSchedule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"collections": ("weights", "gradz")}, "collections contains 'gradz'"),
        ({"stats": {"gradz": SaveSchedule()}}, "unknown collection 'gradz'"),
        ({"queue_size": 0}, "queue_size=0"),
        ({"retries": 0}, "retries=0"),
        ({"flush_seconds": 0}, "flush_seconds=0"),
    ],
)
def test_config_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CaptureConfig(**kwargs)


def test_config_defaults() -> None:
    cfg = CaptureConfig()
    # statistics of everything every step
    assert all(cfg.due(c, "train", s)[0] for c in cfg.collections for s in (0, 1, 7, 49, 51))
    # values of the big tensors every DEFAULT_VALUE_INTERVAL steps plus the first ones
    from trainaudit.capture._config import DEFAULT_FIRST_STEPS, DEFAULT_VALUE_INTERVAL

    due = [s for s in range(120) if cfg.due("weights", "train", s)[1]]
    assert due == sorted(set(range(DEFAULT_FIRST_STEPS)) | set(range(0, 120, DEFAULT_VALUE_INTERVAL)))
    # gradients (read by their rules as statistics) far more rarely
    from trainaudit.capture._config import DEFAULT_GRADIENT_VALUE_INTERVAL

    due = [s for s in range(1200) if cfg.due("gradients", "train", s)[1]]
    assert due == sorted(set(range(DEFAULT_FIRST_STEPS)) | set(range(0, 1200, DEFAULT_GRADIENT_VALUE_INTERVAL)))
    # labels and predictions in full every step; scalars (losses, update norms) live in their
    # statistics every step and follow the sampled value schedule
    assert all(cfg.due(c, "eval", 13)[1] for c in ("labels", "predictions"))
    assert not any(cfg.due(c, "train", 13)[1] for c in ("losses", "updates"))


def test_config_partial_mapping_keeps_the_other_defaults_and_round_trips() -> None:
    cfg = CaptureConfig(values={"weights": SaveSchedule(every=7)})
    assert cfg.values["weights"].every == 7
    assert cfg.values["labels"].every == 1
    d = cfg.to_dict()
    assert d["values"]["weights"]["every"] == 7 and d["queue_size"] == cfg.queue_size
    import json

    json.dumps(d)  # stored in the run's attributes


def test_config_filters() -> None:
    cfg = CaptureConfig(include=(r"\.weight$", "loss"), exclude=("^gradients/2",))
    assert cfg.wants("gradients", "gradients/0.weight")
    assert not cfg.wants("gradients", "gradients/2.weight")
    assert not cfg.wants("biases", "biases/0.bias")
    assert cfg.wants("losses", "losses/loss")
    assert not CaptureConfig(collections=("losses",)).wants("weights", "weights/0.weight")


@pytest.mark.skipif(not _compat.HAS_FAST_STATS, reason="needs the _fastats extension")
def test_yield_gil_lets_another_thread_run_python_meanwhile() -> None:
    """The writer hands the GIL over between pieces of its work with ``yield_gil``: while it
    spins, a thread that wants the GIL gets it (a Python loop there makes progress), and a
    request past 1 ms is held to 1 ms. Bad arguments raise; zero or less is a no-op."""
    import threading
    import time

    from trainaudit.capture import _fastats  # type: ignore[attr-defined]

    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        progressed = 0
        for _ in range(20):
            before = counter[0]
            _fastats.yield_gil(0.001)  # this thread holds the GIL before and after the call
            progressed += counter[0] > before
        assert progressed >= 10  # (the other thread must also be scheduled: most calls suffice)
    finally:
        stop.set()
        thread.join()
    t0 = time.monotonic()
    _fastats.yield_gil(5.0)
    assert time.monotonic() - t0 < 1.0
    _fastats.yield_gil(0.0)
    _fastats.yield_gil(-1.0)
    with pytest.raises(TypeError):
        _fastats.yield_gil("1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
                                   torch.uint8, torch.bool])
def test_stats_at_reads_tensors_like_numpy_stats(dtype: torch.dtype) -> None:
    """The writer's bulk read of the tensors it holds references to (``_compat.stats_at``):
    every dtype it takes, NaN and Inf in the floats, an empty tensor and a view into the
    middle of another tensor's storage (the address of its first element, not the storage's)."""
    g = torch.Generator().manual_seed(4)
    if dtype.is_floating_point:
        a = torch.randn(3000, generator=g, dtype=dtype)
        a[[7, 1500]] = torch.tensor([float("nan"), float("-inf")], dtype=dtype)
        a[2999] = float("inf")
    elif dtype == torch.bool:
        a = torch.rand(3000, generator=g) > 0.3
    else:
        lo, hi = (0, 200) if dtype == torch.uint8 else (-100, 100)
        a = torch.randint(lo, hi, (3000,), generator=g, dtype=dtype)
    tensors = [a, a[1000:2000], a[:0], a.reshape(60, 50)]
    specs = [(t.data_ptr(), t.numel(), _compat.STATS_AT_CODES[str(dtype).removeprefix("torch.")]) for t in tensors]
    got = _compat.stats_at(specs)
    assert got is not None and got.shape == (len(tensors), len(STAT_FIELDS))
    for row, t in zip(got, tensors, strict=True):
        assert_stats_equal(row, F.numpy_stats(t.numpy()), rtol=1e-6)


def test_stats_at_refuses_bad_specs_and_a_small_output() -> None:
    from trainaudit.capture import _fastats

    a = torch.ones(4)
    with pytest.raises(ValueError, match="bad tensor 0"):
        _fastats.stats_at([(a.data_ptr(), 4, 99)], np.empty((1, 10)))
    with pytest.raises(ValueError, match="bad tensor 0"):
        _fastats.stats_at([(0, 4, 0)], np.empty((1, 10)))
    with pytest.raises(ValueError, match="10 numbers per tensor"):
        _fastats.stats_at([(a.data_ptr(), 4, 0)] * 2, np.empty((1, 10)))
    with pytest.raises(ValueError, match="10 numbers per tensor"):
        _fastats.stats_at([(a.data_ptr(), 4, 0)], np.empty((1, 10), dtype=np.float32))
    with pytest.raises(TypeError):
        _fastats.stats_at([(a.data_ptr(), 4)], np.empty((1, 10)))
