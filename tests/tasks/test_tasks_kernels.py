"""Statistic kernels against NumPy, under any split of the data (hypothesis)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trainaudit.tasks import (
    Block,
    ChannelMoments,
    ClassCounts,
    ConfusionCounts,
    FirstRowChecks,
    Histogram,
    LastRows,
    Moments,
    StepDiffs,
    StepMoments,
    StepQuantiles,
    TokenCounts,
    UnitBand,
)
from trainaudit.tasks._kernels import (
    moments_axis_chunk,
    moments_chunk,
    moments_finalize,
    moments_merge,
)

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0])


def _splits(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return list(zip(points[:-1], points[1:], strict=True))


@st.composite
def arrays_with_cuts(draw: st.DrawFn, specials: bool = True) -> tuple[np.ndarray, list[int]]:
    n = draw(st.integers(min_value=0, max_value=200))
    elems = st.one_of(FLOATS, SPECIALS) if specials else FLOATS
    x = np.asarray(draw(st.lists(elems, min_size=n, max_size=n)), dtype=np.float64)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=max(n, 1)), max_size=6))
    return x, cuts


@settings(max_examples=200, deadline=None)
@given(arrays_with_cuts())
def test_moments_any_split_matches_numpy(data: tuple[np.ndarray, list[int]]) -> None:
    x, cuts = data
    parts = [moments_chunk(x[a:b]) for a, b in _splits(len(x), cuts)]
    rng = np.random.default_rng(len(parts))
    order = rng.permutation(len(parts))  # merge order must not matter either
    state = functools.reduce(moments_merge, [parts[i] for i in order], moments_chunk(np.zeros(0)))
    got = moments_finalize(state)
    f = x[np.isfinite(x)]
    assert got["count"] == f.size
    assert got["nan"] == np.isnan(x).sum()
    assert got["posinf"] == (x == np.inf).sum()
    assert got["neginf"] == (x == -np.inf).sum()
    assert got["zero"] == (f == 0).sum()
    if f.size:
        scale = max(1.0, float(np.abs(f).max()))
        assert got["mean"] == pytest.approx(f.mean(), rel=1e-9, abs=1e-9 * scale)
        assert got["var"] == pytest.approx(f.var(), rel=1e-7, abs=1e-7 * scale * scale)
        assert got["min"] == f.min() and got["max"] == f.max()
    else:
        assert np.isnan(got["mean"])


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                  elements=st.one_of(FLOATS, SPECIALS)), st.integers(0, 12))
def test_per_channel_moments_any_split(x: np.ndarray, cut: int) -> None:
    cut = cut % (x.shape[0] + 1)
    s = moments_merge(moments_axis_chunk(x[:cut], 1), moments_axis_chunk(x[cut:], 1))
    for c in range(x.shape[1]):
        col = x[:, c]
        f = col[np.isfinite(col)]
        got = moments_finalize(s[c])
        assert got["count"] == f.size
        assert got["nan"] == np.isnan(col).sum()
        if f.size:
            assert got["var"] == pytest.approx(f.var(), rel=1e-7, abs=1e-3)
            assert got["min"] == f.min()


def _block_split(rows: list[np.ndarray], cuts: list[int]) -> list[Block]:
    steps = list(range(0, 2 * len(rows), 2))
    return [Block.from_rows(rows[a:b], steps=steps[a:b]) for a, b in _splits(len(rows), cuts) if b > a]


def _run(kernel, blocks: list[Block]):  # type: ignore[no-untyped-def]
    state = kernel.init()
    for b in blocks:
        state = kernel.merge(state, kernel.chunk(b))
    return kernel.finalize(state)


@st.composite
def rows_with_cuts(draw: st.DrawFn, shape: tuple[int, ...] = (4, 3)) -> tuple[list[np.ndarray], list[int]]:
    n = draw(st.integers(min_value=1, max_value=12))
    rows = [draw(hnp.arrays(np.float64, shape, elements=st.floats(-10, 10, allow_nan=False))) for _ in range(n)]
    cuts = draw(st.lists(st.integers(0, n), max_size=4))
    return rows, cuts


@settings(max_examples=60, deadline=None)
@given(rows_with_cuts())
def test_block_kernels_any_split(data: tuple[list[np.ndarray], list[int]]) -> None:
    rows, cuts = data
    blocks = _block_split(rows, cuts)
    allx = np.stack(rows)
    m = _run(Moments(), blocks)
    assert m["count"] == allx.size
    assert m["var"] == pytest.approx(allx.var(), abs=1e-9)
    band = _run(UnitBand(lo=-1.0, hi=1.0, axis=1), blocks)
    for i, (per_unit, counts) in enumerate(band.records):
        np.testing.assert_array_equal(counts, ((rows[i] > -1) & (rows[i] < 1)).sum(axis=0))
        assert per_unit == rows[i].shape[0]
    ch = _run(ChannelMoments(axis=1), blocks)
    merged = functools.reduce(moments_merge, [r[1] for r in ch.records])
    np.testing.assert_allclose([moments_finalize(s)["var"] for s in merged], allx.reshape(-1, 3).var(axis=0),
                               atol=1e-9)
    sm = _run(StepMoments(), blocks)
    np.testing.assert_allclose([r["var"] for r in sm.records], [r.var() for r in rows], atol=1e-12)
    last = _run(LastRows(n=2), blocks)
    assert [s for s, _, _ in last] == list(range(0, 2 * len(rows), 2))[-2:]
    np.testing.assert_array_equal(last[-1][2], rows[-1])
    diffs = _run(StepDiffs(), blocks)
    assert list(diffs.steps) == list(range(2, 2 * len(rows), 2))
    for k, rec in enumerate(diffs.records, start=1):
        assert rec[0] == pytest.approx(np.linalg.norm(rows[k] - rows[k - 1]))
        assert rec[1] == pytest.approx(np.linalg.norm(rows[k - 1]))
    h = _run(Histogram(lo=-5, hi=5, bins=10), blocks)
    f = allx.reshape(-1)
    np.testing.assert_array_equal(h["counts"], np.histogram(f[(f >= -5) & (f <= 5)], bins=10, range=(-5, 5))[0])
    assert h["below"] == (f < -5).sum() and h["above"] == (f > 5).sum()
    q = _run(StepQuantiles(), blocks)
    np.testing.assert_allclose(q.records[0], np.quantile(rows[0], [0.05, 0.25, 0.5, 0.75, 0.95]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=20), min_size=1, max_size=8),
       st.lists(st.integers(0, 8), max_size=3))
def test_class_confusion_token_counts(batches: list[list[int]], cuts: list[int]) -> None:
    labels = [np.asarray(b) for b in batches]
    preds = [np.asarray([(v + i) % 5 for i, v in enumerate(b)]) for b in batches]
    steps = list(range(len(labels)))
    cc = _run(ClassCounts(), [Block.from_rows(labels[a:b], steps=steps[a:b])
                              for a, b in _splits(len(labels), cuts) if b > a])
    total: dict[int, int] = {}
    for r in cc.records:
        for k, v in r.items():
            total[k] = total.get(k, 0) + v
    allv = np.concatenate(labels)
    assert total == {int(k): int(v) for k, v in zip(*np.unique(allv, return_counts=True), strict=True)}
    conf = ConfusionCounts()
    state = conf.init()
    for a, b in _splits(len(labels), cuts):
        if b > a:
            state = conf.merge(state, conf.chunk(Block.from_rows(preds[a:b], steps=steps[a:b]),
                                                 Block.from_rows(labels[a:b], steps=steps[a:b])))
    cm: dict[tuple[int, int], int] = {}
    for r in conf.finalize(state).records:
        for k, v in r.items():
            cm[k] = cm.get(k, 0) + v
    allp = np.concatenate(preds)
    for (lab, pred), v in cm.items():
        assert v == int(np.count_nonzero((allv == lab) & (allp == pred)))
    assert sum(cm.values()) == allv.size
    tc = _run(TokenCounts(token_values=(0, 3)), [Block.from_rows(labels, steps=steps)])
    assert sum(n for n, _ in tc.records) == allv.size
    assert sum(c[1] for _, c in tc.records) == int((allv == 3).sum())


def test_class_ids_from_scores_and_probabilities() -> None:
    from trainaudit.tasks._kernels import is_class_ids, to_class_ids

    np.testing.assert_array_equal(to_class_ids(np.array([[0.1, 0.9], [0.8, 0.2]])), [1, 0])
    np.testing.assert_array_equal(to_class_ids(np.array([0.2, 0.7])), [0, 1])
    np.testing.assert_array_equal(to_class_ids(np.array([2.0, 0.0])), [2, 0])
    assert not is_class_ids(np.array([0.3, 1.7]))
    assert ClassCounts().record(np.array([0.3, 1.7])) is None


def test_first_row_checks() -> None:
    k = FirstRowChecks(atol=1e-7)
    w = np.random.default_rng(0).normal(0, 0.1, (8, 4))
    w[3] = w[5]
    b1 = Block.from_rows([w, w * 2], steps=[5, 6])
    b0 = Block.from_rows([np.ones((8, 4))], steps=[0])
    r = k.finalize(k.merge(k.chunk(b1), k.chunk(b0)))
    assert r["step"] == 0 and r["constant"]
    r1 = k.finalize(k.chunk(b1))
    assert r1["duplicate_rows"] == 2 and r1["fan_in"] == 4 and r1["fan_out"] == 8
    conv = k.finalize(k.chunk(Block.from_rows([np.zeros((6, 3, 5, 5)) + np.arange(6)[:, None, None, None]])))
    assert conv["fan_in"] == 75 and conv["fan_out"] == 150 and not conv["constant"]


def test_padded_rows_are_cut_to_their_real_shape() -> None:
    vals = np.full((2, 4, 3), np.nan)
    vals[0] = 1.0
    vals[1, :2] = 2.0
    b = Block(values=vals, shapes=np.array([[4, 3], [2, 3]]), steps=np.array([0, 1]), modes=np.array([0, 0]))
    m = Moments().finalize(Moments().chunk(b))
    assert m["count"] == 18 and m["nan"] == 0
    band = UnitBand(lo=0.0, hi=np.inf, axis=1).finalize(UnitBand(lo=0.0, hi=np.inf, axis=1).chunk(b))
    assert band.records[1][0] == 2


@settings(max_examples=50, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(1e-6, 1e2), st.integers(2, 5000))
def test_float32_moments_keep_precision(offset: float, scale: float, n: int) -> None:
    """float32 tensors stay float32 in the kernel: the centred M2 must still match float64."""
    x = (offset + scale * np.random.default_rng(n).normal(size=n)).astype(np.float32)
    got = moments_finalize(moments_chunk(x))
    ref = x.astype(np.float64)
    assert got["mean"] == pytest.approx(ref.mean(), rel=1e-9, abs=1e-9)
    assert got["var"] == pytest.approx(ref.var(), rel=1e-4, abs=1e-12 * max(1.0, offset * offset))
