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


_PLANS = {
    "dense": lambda m3, dt: engine._DensePlan(m3),
    "fused": lambda m3, dt: engine._FusedPlan(m3),
    "runs": lambda m3, dt: engine._RunsPlan(m3, None, None, 1.0),
    "spans": lambda m3, dt: engine._RunSumPlan(m3, np.dtype(dt), "rows"),
    "columns": lambda m3, dt: engine._RunSumPlan(m3, np.dtype(dt), "columns"),
}


@pytest.mark.parametrize("plan", list(_PLANS))
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32, ">u2", np.float64, np.int8])
def test_every_plan_matches_reference(data, masks, plan, dtype):
    """Each compute plan on its own (BLAS product, fused dense kernel, run kernels), all masks."""
    m3 = masks.astype(np.float32)
    d = (data // 500).astype(dtype) if np.dtype(dtype) == np.int8 else data.astype(dtype)
    if plan != "dense":
        d = d.astype(np.dtype(dtype).newbyteorder("="))  # numba kernels take native dtypes
    p = _PLANS[plan](m3, d.dtype)
    out = np.full((len(m3), *SHAPE[:2]), np.nan, np.float32)
    for y0 in range(0, SHAPE[0], 5):
        blk = d[y0 : y0 + 5]
        p.apply(blk, out[:, y0 : y0 + 5], y0, 0)
    assert _rel(out, _reference(d.astype(np.float64), masks)) < 1e-5


@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32])
def test_binary_run_sums_are_exact_for_integer_data(mode, dtype):
    """Binary masks on integer data: the integer sum, rounded once to float32 (bit-exact)."""
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    d = rng.integers(info.min, info.max, (3, 4, *SHAPE[2:]), dtype=np.int64, endpoint=True)
    d = d.astype(dtype)
    m3 = np.stack([_ring(0, 4.5), _ring(2.25, 9), _ring(6.75, 11.5), np.ones(SHAPE[2:])])
    m3 = m3.astype(np.float32)
    plan = engine._RunSumPlan(m3, d.dtype, mode)
    assert plan.exact
    out = np.zeros((len(m3), 3, 4), np.float32)
    plan.apply(d, out, 0, 0)
    ref = np.einsum("yxij,mij->myx", d.astype(np.int64), m3.astype(np.int64))  # exact integers
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    # weighted (non-integer) masks fall back to float64 sums
    assert not engine._RunSumPlan(m3 * 0.5, d.dtype, mode).exact


@pytest.mark.parametrize("n_patterns", [1, 2, 3, 4, 5, 7, 8, 9])
def test_span_sums_any_pattern_count(n_patterns):
    """The span kernel sums four patterns at a time: every count, remainders included, equals
    the float64 reference, and nothing is written past the last pattern."""
    rng = np.random.default_rng(n_patterns)
    d = rng.random((1, n_patterns, *SHAPE[2:])).astype(np.float32)
    m3 = np.stack([_ring(0, 4.5), _ring(4.5, 9), 2.0 * _ring(9, 11.5)]).astype(np.float32)
    plan = engine._RunSumPlan(m3, d.dtype, "rows")
    out = np.full((len(m3), 1, n_patterns + 1), np.nan, np.float32)
    plan.apply(d, out[:, :, :n_patterns], 0, 0)
    ref = np.einsum("yxij,mij->myx", d.astype(np.float64), m3.astype(np.float64))
    np.testing.assert_allclose(out[:, :, :n_patterns], ref, rtol=1e-6)
    assert np.all(np.isnan(out[:, :, n_patterns]))


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_run_sums_keep_nan_local(mode):
    """NaN / inf stay in the masks that contain them (unlike dense products, where 0 * inf is
    NaN); column prefix sums recompute such bands with row spans."""
    m3 = np.stack([_ring(0, 4.5), _ring(6.75, 11.5)]).astype(np.float32)
    d = np.random.default_rng(2).random((2, 3, *SHAPE[2:]))
    d[1, 2, 1, 3] = np.nan  # outside both masks, above the ring in its detector column
    d[0, 1, 11, 12] = np.inf  # inside the disc only
    plan = engine._RunSumPlan(m3, d.dtype, mode)
    out = np.zeros((2, 2, 3), np.float32)
    plan.apply(d, out, 0, 0)
    ref = np.einsum("yxij,mij->myx", np.nan_to_num(d, nan=0.0, posinf=0.0), m3.astype(np.float64))
    assert out[0, 0, 1] == np.inf and np.isfinite(out[1, 0, 1])
    finite = np.isfinite(out)
    assert np.count_nonzero(~finite) == 1
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-6)


def test_plan_choice():
    k = SHAPE[2:]
    full = np.ones((3, *k), np.float32) * np.arange(1, 4, dtype=np.float32)[:, None, None]
    smooth = np.hypot(*np.meshgrid(np.arange(k[0]), np.arange(k[1]), indexing="ij")) + 1.0
    smooth = np.stack([smooth, smooth[::-1]]).astype(np.float32)  # every pixel its own value
    f32, u16, swapped = np.dtype(np.float32), np.dtype(np.uint16), np.dtype(">u2")
    assert isinstance(engine._choose_plan(full, f32), engine._DensePlan)  # sgemm
    assert isinstance(engine._choose_plan(smooth, f32), engine._DensePlan)
    assert isinstance(engine._choose_plan(smooth, u16), engine._FusedPlan)
    # 128 x 128 detector: one annulus, ten thin annuli (the benchmark's masks)
    r = np.hypot(*np.meshgrid(np.arange(128) - 63.63, np.arange(128) - 64.21, indexing="ij"))
    one = ((r >= 25.6) & (r < 57.6)).astype(np.float32)[None]
    ten = np.stack([(r >= 5.76 * i) & (r < 5.76 * (i + 1)) for i in range(10)]).astype(np.float32)
    assert isinstance(engine._choose_plan(one, f32), engine._DensePlan)  # gemv
    assert isinstance(engine._choose_plan(one * 0.5, u16), engine._FusedPlan)  # not exact
    plan = engine._choose_plan(one, u16)
    assert isinstance(plan, engine._RunSumPlan) and plan.mode == "rows" and plan.exact
    plan = engine._choose_plan(ten, u16)  # row spans: faster than column runs when measured
    assert isinstance(plan, engine._RunSumPlan) and plan.mode == "rows" and plan.exact
    plan = engine._choose_plan(ten, f32)
    assert isinstance(plan, engine._RunSumPlan) and plan.mode == "rows" and not plan.exact
    assert isinstance(engine._choose_plan(ten, swapped), engine._DensePlan)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_clip_negative_readout_equals_numpy_on_clipped_data(dtype):
    """``clip_negative``: the readout of patterns clipped at 0 (as the models' preprocessing
    does) in the same pass; NaN stays NaN, as ``np.clip``; unclipped data give another image."""
    rng = np.random.default_rng(7)
    data = rng.normal(2.0, 4.0, (9, 11, 24, 20)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        data[4, 5, 3, 3] = np.nan
    masks = rng.random((3, 24, 20)).astype(np.float32)
    ref = np.einsum("yxij,mij->myx", np.clip(data.astype(np.float64), 0, None), masks)
    got = virtual_images(data, masks, clip_negative=True)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=2e-6, atol=1e-4)
    plain = virtual_images(data, masks)
    assert np.nanmax(np.abs(plain - got)) > 1.0
