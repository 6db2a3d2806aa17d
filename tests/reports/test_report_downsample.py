"""Min/max-preserving downsampling: bounded size, extremes and non-finite values kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trainaudit.reports._downsample import (
    as_floats,
    as_matrix,
    bin_bands,
    bin_columns,
    bin_rows,
    downsample_xy,
    minmax_indices,
)


def test_as_floats_reads_the_json_encoding_of_non_finite_values():
    out = as_floats([1, "nan", "inf", "-inf", None, 2.5])
    assert out[0] == 1 and np.isnan(out[1]) and out[2] == np.inf and out[3] == -np.inf
    assert np.isnan(out[4]) and out[5] == 2.5
    assert np.isnan(as_floats(["garbage", 1])[0])


def test_as_matrix_pads_ragged_rows_with_nan():
    m = as_matrix([[1, 2, 3], [4]])
    assert m.shape == (2, 3) and np.isnan(m[1, 1:]).all()


def test_short_series_are_untouched():
    assert minmax_indices(np.arange(10.0), 100).tolist() == list(range(10))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 5000),
              elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
       st.integers(10, 400))
def test_downsampling_keeps_extremes_and_nonfinite(y, max_points):
    idx = minmax_indices(y, max_points)
    assert len(idx) <= max_points if len(y) > max_points else len(idx) == len(y)
    assert np.all(np.diff(idx) > 0)
    kept = y[idx]
    fin = np.isfinite(y)
    if fin.any():
        assert np.nanmax(kept[np.isfinite(kept)]) == y[fin].max()
        assert np.nanmin(kept[np.isfinite(kept)]) == y[fin].min()
    if (~fin).any():  # the first non-finite value is kept, so a blow-up is never hidden
        assert int(np.argmin(fin)) in idx.tolist()


def test_downsample_xy_truncates_to_common_length():
    x, y = downsample_xy([0, 1, 2, 3], [5, 6], 100)
    assert x.tolist() == [0, 1] and y.tolist() == [5, 6]


def test_bin_columns_keeps_max_and_marks_nonfinite_bins():
    z = np.ones((2, 1000))
    z[0, 500] = 7.0
    z[1, 900] = np.nan
    starts, zmax, bad = bin_columns(z, 100)
    assert len(starts) == 100 and zmax.shape == (2, 100)
    assert zmax[0].max() == 7.0
    assert bad[1].sum() == 1 and bad[0].sum() == 0
    assert starts[np.argmax(bad[1])] <= 900


def test_bin_rows_merges_adjacent_layers_with_range_labels():
    z = np.arange(12.0).reshape(6, 2)
    zz, bb, labels = bin_rows(z, np.zeros_like(z, bool), [f"l{i}" for i in range(6)], 3)
    assert zz.shape == (3, 2) and labels[0] == "l0 … l1" and zz[0].tolist() == [2.0, 3.0]


def test_bin_bands_never_narrows_a_band():
    x = np.arange(1000.0)
    lo, hi = -np.ones(1000), np.ones(1000)
    lo[123], hi[456] = -50, 60
    xb, mb, [(blo, bhi)] = bin_bands(x, np.zeros(1000), [(lo, hi)], 50)
    assert len(xb) == 50 and blo.min() == -50 and bhi.max() == 60


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_inputs(n):
    assert len(minmax_indices(np.ones(n), 10)) == n
