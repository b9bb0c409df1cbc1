"""NumPy reader: .npy memory-mapped, .npz members memory-mapped by offset when stored."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import numpy as np
import pytest

from napari_4dstem_ml.io import (
    AmbiguousDatasetError,
    ReaderError,
    ScanShapeRequired,
    can_read,
    list_datasets,
    load,
)
from napari_4dstem_ml.io.numpy_files import npz_members

NY, NX, KY, KX = 5, 7, 8, 9


def cube(ny=NY, nx=NX, ky=KY, kx=KX, dtype=np.float32):
    iy, ix, qy, qx = np.ix_(*(np.arange(n) for n in (ny, nx, ky, kx)))
    return (iy * 1_000_000 + ix * 10_000 + qy * 100 + qx).astype(dtype)


def test_npy_4d_memmapped_read_only(tmp_path):
    p = tmp_path / "a.npy"
    ref = cube()
    np.save(p, ref)
    assert can_read(p)
    before = (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    ds = load(p)
    assert isinstance(ds.data, np.memmap) and ds.is_lazy and not ds.data.flags.writeable
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    with pytest.raises(ValueError):
        ds.data[0, 0, 0, 0] = 5
    del ds
    assert (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) == before


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_3d_stack_with_scan_shape(tmp_path, order):
    p = tmp_path / "stack.npy"
    ref = cube()
    np.save(p, np.asarray(ref.reshape(NY * NX, KY, KX), order=order))
    with pytest.raises(ScanShapeRequired) as e:
        load(p)
    assert e.value.n_frames == NY * NX and "stack.npy" in str(e.value)
    ds = load(p, scan_shape=(NY, NX))
    assert isinstance(ds.data, np.memmap)  # a view, not a copy
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    with pytest.raises(ReaderError, match="does not match"):
        load(p, scan_shape=(NX, NX))


def test_npy_2d_and_garbage(tmp_path):
    p = tmp_path / "img.npy"
    np.save(p, np.zeros((4, 4)))
    with pytest.raises(ReaderError, match=r"img\.npy.*expected a 4D array.*\(4, 4\)"):
        load(p)
    q = tmp_path / "junk.npy"
    q.write_bytes(b"hello, not numpy")
    assert not can_read(q)
    with pytest.raises(ReaderError, match="junk.npy"):
        load(q)


def test_npz_uncompressed_is_memory_mapped(tmp_path):
    p = tmp_path / "data.npz"
    ref = cube(ny=16, nx=16, ky=64, kx=64)  # 4 MB
    np.savez(p, data=ref, scan_step_A=np.array([0.41, 0.5]), detector_pixel_mrad=0.82,
             energy_ev=300e3, convergence_mrad=21.4, label=np.zeros((16, 16)))
    assert can_read(p) and list_datasets(p) == ["data"]
    tracemalloc.start()
    ds = load(p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1e6, f"open allocated {peak / 1e6:.1f} MB"
    assert isinstance(ds.data, np.memmap) and ds.metadata["memory_mapped"]
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    c = ds.calibration
    assert c.scan_step == (0.41, 0.5) and c.detector_pixel == (0.82, 0.82)
    assert c.detector_units == "mrad" and c.energy_ev == 300e3 and c.convergence_mrad == 21.4


def test_npz_compressed_is_loaded(tmp_path):
    p = tmp_path / "c.npz"
    ref = cube()
    np.savez_compressed(p, stack=ref.reshape(-1, KY, KX), scan_shape=np.array([NY, NX]))
    m = {x.key: x for x in npz_members(p)}
    assert m["stack"].offset is None and m["stack"].shape == (NY * NX, KY, KX)
    ds = load(p)
    assert not ds.metadata["memory_mapped"]
    np.testing.assert_array_equal(np.asarray(ds.data), ref)


def test_npz_key_choice(tmp_path):
    p = tmp_path / "two.npz"
    a, b = cube(), cube() + 1
    np.savez(p, first=a, second=b)
    with pytest.raises(AmbiguousDatasetError) as e:
        load(p)
    assert sorted(e.value.candidates) == ["first", "second"] and e.value.option == "key"
    np.testing.assert_array_equal(np.asarray(load(p, key="second").data), b)
    np.testing.assert_array_equal(np.asarray(load(p, dataset="first").data), a)
    with pytest.raises(AmbiguousDatasetError, match="third"):
        load(p, key="third")


def test_npz_fortran_member(tmp_path):
    p = tmp_path / "f.npz"
    ref = np.asfortranarray(cube())
    np.savez(p, data=ref)
    ds = load(p)
    assert isinstance(ds.data, np.memmap)
    np.testing.assert_array_equal(np.asarray(ds.data), ref)


def test_npz_without_4d(tmp_path):
    p = tmp_path / "none.npz"
    np.savez(p, img=np.zeros((3, 3)))
    with pytest.raises(ReaderError, match=r"none\.npz.*no 4D"):
        load(p)
