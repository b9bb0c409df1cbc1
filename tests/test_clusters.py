"""Clusters (reflection at the edges, gathering from lazy data) and region splits."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_ml.training.clusters import (
    PatternSource,
    RegionSplit,
    SplitError,
    check_cluster_size,
    cluster_indices,
    reflect_index,
)

CAL = Calibration(detector_pixel=(1.0, 1.0))


def test_reflect_index_matches_numpy_pad_reflect():
    for n in (1, 2, 3, 7):
        idx = np.arange(-3 * n, 4 * n)
        ref = np.pad(np.arange(n), 4 * n, mode="reflect")[idx + 4 * n] if n > 1 else np.zeros_like(idx)
        np.testing.assert_array_equal(reflect_index(idx, n), ref)


def _source(shape=(9, 11, 6, 6), seed=0, lazy=False, cache=True):
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32) * 10
    if lazy:
        import dask.array as da

        arr = da.from_array(data, chunks=(4, -1, -1, -1))
    else:
        arr = data
    ds = Dataset4D(arr, CAL)
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="power", centre=(2.5, 2.5)))
    src = PatternSource(ds, pre, cache_budget_bytes=2e9 if cache else 0)
    for _ in src.fill_cache():
        pass
    return data, pre, src


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize(("lazy", "cache"), [(False, True), (False, False), (True, False)])
def test_clusters_equal_brute_force_reflect_padding(k, lazy, cache):
    data, pre, src = _source(lazy=lazy, cache=cache)
    assert (src.cache is not None) == cache
    h = k // 2
    full = pre.transform(data)
    padded = np.pad(full, ((h, h), (h, h), (0, 0), (0, 0)), mode="reflect")
    ys = np.array([0, 0, 8, 4, 8, 1])
    xs = np.array([0, 10, 10, 5, 0, 9])
    got = src.clusters(ys, xs, k)
    assert got.shape == (len(ys), k, k, 6, 6) and got.dtype == np.float32
    for b, (y, x) in enumerate(zip(ys, xs)):
        np.testing.assert_allclose(got[b], padded[y : y + k, x : x + k], rtol=1e-6)
    # the padded tile used for predict_field
    tile = src.padded_tile(2, 6, k)
    np.testing.assert_allclose(tile, padded[2 : 6 + 2 * h], rtol=1e-6)
    # an arbitrary rectangle of the padded field (the input of a training patch)
    ry = reflect_index(np.arange(3 - h, 7 + h), 9)
    rx = reflect_index(np.arange(-h, 4 + h), 11)
    rect = src.rect(ry, rx)
    assert rect.shape == (4 + 2 * h, 4 + 2 * h, 6, 6) and rect.dtype == np.float32
    np.testing.assert_allclose(rect, padded[3 : 7 + 2 * h, 0 : 4 + 2 * h], rtol=1e-6)


def test_cluster_size_checks():
    with pytest.raises(SplitError, match="odd"):
        check_cluster_size(4, (10, 10))
    with pytest.raises(SplitError, match="at least"):
        check_cluster_size(7, (3, 10))
    assert check_cluster_size(5, (3, 3)) == 5


def _members(pos_mask, k, scan_shape):
    ys, xs = np.nonzero(pos_mask)
    ry, rx = cluster_indices(ys, xs, k, scan_shape)
    return {(int(a), int(b)) for yrow, xrow in zip(ry, rx) for a in yrow for b in xrow}


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_default_split_has_no_leakage_and_keeps_border_clusters_out(k):
    shape = (20, 13)
    tr, va = RegionSplit().positions(shape, k)
    h = k // 2
    # upper half trains, lower half validates; the h rows on each side of the border are out
    assert tr[: 10 - h].all() and not tr[10 - h :].any()
    assert va[10 + h :].all() and not va[: 10 + h].any()
    assert not (_members(tr, k, shape) & _members(va, k, shape))
    # edge positions stay in (reflection keeps their clusters inside the region)
    assert tr[0, 0] and va[-1, -1]


def test_rectangles_masks_and_coverage():
    shape = (16, 16)
    split = RegionSplit(train=(0, 16, 0, 8), val=(0, 16, 9, 16))
    tr, va = split.positions(shape, 3)
    assert tr[:, :7].all() and not tr[:, 7:].any()
    assert va[:, 10:].all() and not va[:, :10].any()
    # val defaults to the complement of train
    tr2, va2 = RegionSplit(train=(0, 16, 0, 8)).positions(shape, 3)
    np.testing.assert_array_equal(tr2, tr)
    assert va2[:, 9:].all() and not va2[:, :9].any()
    # masks, combined with the label coverage
    m = np.zeros(shape, bool)
    m[2:9, 3:12] = True
    cov = np.ones(shape, bool)
    cov[4, 5] = False
    tr3, va3 = RegionSplit(train_mask=m, val_mask=~m).positions(shape, 3, coverage=cov)
    assert tr3.sum() == 5 * 7 - 1 and not tr3[4, 5]
    assert not (_members(tr3, 3, shape) & _members(va3, 3, shape))
    # columns split
    tr4, _ = RegionSplit(axis=1, train_fraction=0.25).positions(shape, 1)
    assert tr4[:, :4].all() and not tr4[:, 4:].any()
    with pytest.raises(SplitError, match="overlap"):
        RegionSplit(train=(0, 10, 0, 16), val=(8, 16, 0, 16)).region_masks(shape)
    with pytest.raises(SplitError, match="outside"):
        RegionSplit(train=(0, 20, 0, 16)).region_masks(shape)
    with pytest.raises(SplitError, match="scan shape"):
        RegionSplit().positions(shape, 3, coverage=np.ones((3, 3), bool))
    assert RegionSplit(train=(0, 16, 0, 8)).to_dict()["train"] == [0, 16, 0, 8]
