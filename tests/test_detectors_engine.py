"""Streaming engine against brute-force float64 references, across dtypes and storage."""

import numpy as np
import pytest

from napari_4dstem_ml.detectors import engine
from napari_4dstem_ml.detectors.engine import (
    EngineError,
    iter_virtual_images,
    mean_pattern,
    preview_virtual_images,
    virtual_images,
)

SHAPE = (13, 11, 24, 26)
CENTRE = (11.37, 12.81)


def _ring(inner, outer, centre=CENTRE, shape=SHAPE[2:]):
    """Independent float64 mask: loops, inner <= r < outer."""
    m = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            r = np.hypot(i - centre[0], j - centre[1])
            m[i, j] = inner <= r < outer
    return m


@pytest.fixture(scope="module")
def masks():
    weighted = _ring(0, 12) * np.linspace(0.2, 1.7, SHAPE[3])[None, :]  # a non-binary mask
    return np.stack([_ring(0, 4.5), _ring(2.25, 4.5), _ring(6.75, 11.5), weighted])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.integers(0, 60001, SHAPE).astype(np.uint16)


def _reference(data, masks):
    out = np.zeros((len(masks), *data.shape[:2]))
    d = data.astype(np.float64)
    for m, mask in enumerate(masks):
        for y in range(data.shape[0]):
            for x in range(data.shape[1]):
                out[m, y, x] = np.sum(d[y, x] * mask)
    return out


def _rel(a, ref):
    return np.max(np.abs(a - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32, np.uint32, np.float64])
def test_each_detector_matches_float64_reference(data, masks, dtype):
    ref = _reference(data, masks)
    d = data.astype(dtype)
    for m in range(len(masks)):
        img = virtual_images(d, masks[m], rows_per_chunk=4)
        assert img.shape == SHAPE[:2] and img.dtype == np.float32
        assert _rel(img, ref[m]) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_multi_mask_equals_single_masks(data, masks, dtype):
    d = data.astype(dtype)
    both = virtual_images(d, masks)
    assert both.shape == (len(masks), *SHAPE[:2])
    for m in range(len(masks)):
        np.testing.assert_allclose(both[m], virtual_images(d, masks[m]), rtol=2e-6, atol=1e-3)
    assert _rel(both, _reference(data, masks)) < 1e-5


@pytest.mark.parametrize("plan", ["dense", "fused", "runs"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32, ">u2"])
def test_every_plan_matches_reference(data, masks, plan, dtype):
    """Each compute plan on its own (BLAS product, fused dense kernel, run kernel), all masks."""
    m3 = masks.astype(np.float32)
    p = {"dense": engine._DensePlan, "fused": engine._FusedPlan}.get(plan)
    p = p(m3) if p is not None else engine._RunsPlan(m3, None, None, 1.0)
    d = data.astype(dtype)
    if plan != "dense":
        d = d.astype(np.dtype(dtype).newbyteorder("="))  # numba kernels take native dtypes
    out = np.full((len(m3), *SHAPE[:2]), np.nan, np.float32)
    for y0 in range(0, SHAPE[0], 5):
        blk = d[y0 : y0 + 5]
        p.apply(blk, out[:, y0 : y0 + 5], y0, 0)
    assert _rel(out, _reference(data, masks)) < 1e-5


def test_plan_choice():
    k = SHAPE[2:]
    annuli = np.stack([_ring(2.0 * i, 2.0 * (i + 1)) for i in range(6)]).astype(np.float32)
    full = np.ones((3, *k), np.float32) * np.arange(1, 4, dtype=np.float32)[:, None, None]
    f32, u16, swapped = np.dtype(np.float32), np.dtype(np.uint16), np.dtype(">u2")
    assert isinstance(engine._choose_plan(annuli[:1], f32), engine._DensePlan)  # gemv
    assert isinstance(engine._choose_plan(full, f32), engine._DensePlan)  # sgemm
    assert isinstance(engine._choose_plan(annuli, f32), engine._FusedPlan)  # rows differ
    assert isinstance(engine._choose_plan(annuli, u16), engine._FusedPlan)
    assert isinstance(engine._choose_plan(full, u16), engine._FusedPlan)
    assert isinstance(engine._choose_plan(annuli, swapped), engine._DensePlan)
    # many tiny masks far apart: runs are cheaper than dense rows
    dots = np.zeros((4, *k), np.float32)
    for i in range(4):
        dots[i, 6 * i, 6 * i] = 1
    dots[:, -1, -1] = 1
    assert isinstance(engine._choose_plan(dots, u16), engine._RunsPlan)


def test_nan_propagates_through_fused_kernel(masks):
    d = np.ones((2, 3, *SHAPE[2:]), np.float64)
    d[1, 2, 11, 12] = np.nan  # inside the first mask (a disc around CENTRE)
    img = virtual_images(d, masks[0])
    assert np.isnan(img[1, 2]) and np.isfinite(np.delete(img.ravel(), 5)).all()


def test_memmap_h5py_dask_give_the_same_answer(tmp_path, data, masks):
    h5py = pytest.importorskip("h5py")
    da = pytest.importorskip("dask.array")
    expected = virtual_images(data.astype(np.float32), masks)
    for dtype in (np.float32, np.uint16):
        arr = data.astype(dtype)
        np.save(tmp_path / f"d_{np.dtype(dtype).name}.npy", arr)
        mm = np.load(tmp_path / f"d_{np.dtype(dtype).name}.npy", mmap_mode="r")
        np.testing.assert_allclose(virtual_images(mm, masks, rows_per_chunk=3), expected, rtol=1e-6)
        dk = da.from_array(arr, chunks=(4, 5, -1, -1))
        np.testing.assert_allclose(virtual_images(dk, masks), expected, rtol=1e-6)
        with h5py.File(tmp_path / f"d_{np.dtype(dtype).name}.h5", "w") as f:
            f["contig"] = arr
            f.create_dataset("chunked", data=arr, chunks=(2, SHAPE[1], *SHAPE[2:]))
            f.create_dataset("small_chunks", data=arr, chunks=(3, 4, *SHAPE[2:]))
            f.create_dataset("gzip", data=arr, chunks=(4, 4, 12, 13), compression="gzip")
        with h5py.File(tmp_path / f"d_{np.dtype(dtype).name}.h5", "r") as f:
            for name in ("contig", "chunked", "small_chunks", "gzip"):
                got = virtual_images(f[name], masks)
                np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)


def test_h5_direct_paths_are_used(tmp_path, data):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["contig"] = data
        f.create_dataset("chunked", data=data, chunks=(2, SHAPE[1], *SHAPE[2:]))
        f.create_dataset("gzip", data=data, chunks=(2, 2, *SHAPE[2:]), compression="gzip")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert isinstance(engine._h5_direct(f["contig"]), np.memmap)
        assert isinstance(engine._h5_direct(f["chunked"]), engine._H5Chunks)
        assert engine._h5_direct(f["gzip"]) is None


def test_progress_events_and_preview(data, masks):
    events = list(iter_virtual_images(data, masks[0], rows_per_chunk=5))
    assert [e.rows_done for e in events] == [0, 5, 10, 13]
    assert all(e.rows_total == 13 for e in events) and events[-1].done
    assert events[-1].image.shape == SHAPE[:2]
    ref = _reference(data, masks[:1])[0]
    assert _rel(events[-1].image, ref) < 1e-5
    prev = preview_virtual_images(data, masks[0], step=3)
    assert prev.shape == (5, 4)
    assert _rel(prev, ref[::3, ::3]) < 1e-5


def test_descan_masks_follow_centres(data):
    masks = np.stack([_ring(0, 4.5), _ring(5, 9)])
    yy, xx = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    cy = CENTRE[0] + 0.21 * yy - 0.1 * xx
    cx = CENTRE[1] + 0.05 * yy + 0.13 * xx
    got = virtual_images(data, masks, centres=np.stack([cy, cx]), reference_centre=CENTRE)
    ref = np.zeros(got.shape)
    d = data.astype(np.float64)
    for y in range(SHAPE[0]):
        for x in range(SHAPE[1]):
            # whole-pixel rounded shift (shift_step = 1): the documented accuracy
            c = (CENTRE[0] + round(cy[y, x] - CENTRE[0]), CENTRE[1] + round(cx[y, x] - CENTRE[1]))
            ref[0, y, x] = np.sum(d[y, x] * _ring(0, 4.5, c))
            ref[1, y, x] = np.sum(d[y, x] * _ring(5, 9, c))
    assert _rel(got, ref) < 1e-5
    # without descan the answer differs (the test can fail)
    assert _rel(virtual_images(data, masks), ref) > 1e-2


def test_mean_pattern(data):
    np.testing.assert_allclose(mean_pattern(data), data.astype(np.float64).mean((0, 1)), rtol=1e-12)


def test_bad_input():
    with pytest.raises(EngineError, match="4D"):
        virtual_images(np.zeros((3, 4, 5)), np.ones((4, 5)))
    with pytest.raises(EngineError, match="masks"):
        virtual_images(np.zeros((2, 2, 4, 5)), np.ones((5, 4)))
    with pytest.raises(EngineError, match="dtype"):
        virtual_images(np.zeros((2, 2, 4, 5), complex), np.ones((4, 5)))


def test_memmap_pages_released_only_for_big_files(tmp_path, data, masks, monkeypatch):
    np.save(tmp_path / "d.npy", data)
    mm = np.load(tmp_path / "d.npy", mmap_mode="r")
    assert engine._release_root(mm) is None  # small file: stays mapped
    monkeypatch.setattr(engine, "RELEASE_BYTES", 0)
    assert engine._release_root(mm) is not None
    released = []
    orig = engine._releaser

    def counting(root, block):
        rel = orig(root, block)
        released.append(rel is not None)
        return rel

    monkeypatch.setattr(engine, "_releaser", counting)
    got = virtual_images(mm, masks, rows_per_chunk=4)
    assert released and all(released)
    assert _rel(got, _reference(data, masks)) < 1e-5
    assert _rel(virtual_images(mm, masks), _reference(data, masks)) < 1e-5  # re-faulted pages
