"""HDF5 reader: py4DSTEM/EMD 1.0 layout written with h5py by hand, generic files, 3D stacks."""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc

import h5py
import numpy as np
import pytest

from napari_4dstem_ml.io import (
    AmbiguousDatasetError,
    ReaderError,
    ScanShapeRequired,
    can_read,
    list_datasets,
    load,
    shapes,
)

NY, NX, KY, KX = 6, 10, 12, 16


def cube(ny=NY, nx=NX, ky=KY, kx=KX, dtype=np.float32):
    """Values encoding (iy, ix, ky, kx): exact in float32."""
    iy, ix, qy, qx = np.ix_(*(np.arange(n) for n in (ny, nx, ky, kx)))
    return (iy * 1_000_000 + ix * 10_000 + qy * 100 + qx).astype(dtype)


def write_emd_dims(grp, steps, units, names, base=0):
    for i, (step, unit, name) in enumerate(zip(steps, units, names)):
        d = grp.create_dataset(f"dim{i + base}", data=np.array([0.0, step]))  # linear: 2 values
        d.attrs["name"] = name
        d.attrs["units"] = unit


def write_py4dstem(path, with_calibration=True, extra_stack=True):
    """EMD 1.0 file as emdfile / py4DSTEM 0.14 lays it out."""
    data = cube()
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        root = f.create_group("4DSTEM_experiment")
        root.attrs["emd_group_type"] = "root"
        root.attrs["python_class"] = "Root"
        dc = root.create_group("datacube")
        dc.attrs["emd_group_type"] = "array"
        dc.attrs["python_class"] = "DataCube"
        dc.create_dataset("data", data=data, chunks=(1, NX, KY, KX)).attrs["units"] = "pixel intensity"
        write_emd_dims(dc, [0.5, 0.25, 1.5, 2.5], ["nm", "nm", "mrad", "mrad"],
                       ["Rx", "Ry", "Qx", "Qy"])
        if with_calibration:
            mb = root.create_group("metadatabundle")
            mb.attrs["emd_group_type"] = "metadatabundle"
            cal = mb.create_group("calibration")
            cal.attrs["emd_group_type"] = "metadata"
            cal.attrs["python_class"] = "Calibration"
            for k, v, t in [("R_pixel_size", 0.41, "number"), ("R_pixel_units", b"A", "string"),
                            ("Q_pixel_size", 0.0123, "number"), ("Q_pixel_units", b"A^-1", "string"),
                            ("convergence_semiangle_mrad", 21.4, "number"),
                            ("QR_flip", False, "bool")]:
                cal.create_dataset(k, data=v).attrs["type"] = t.encode()
        if extra_stack:
            st = root.create_group("some_stack")
            st.attrs["emd_group_type"] = "array"
            st.attrs["python_class"] = "Array"
            st.create_dataset("data", data=np.zeros((3, 4, 5), np.float32))
    return data


def test_py4dstem_layout_calibration_and_values(tmp_path):
    p = tmp_path / "experiment.h5"
    ref = write_py4dstem(p)
    assert can_read(p)
    assert sorted(list_datasets(p)) == ["/4DSTEM_experiment/datacube/data",
                                        "/4DSTEM_experiment/some_stack/data"]
    ds = load(p)  # the EMD datacube is the unambiguous choice
    assert ds.reader == "hdf5" and ds.metadata["dataset"] == "/4DSTEM_experiment/datacube/data"
    assert type(ds.data).__module__.startswith("dask") and ds.is_lazy
    assert ds.shape == (NY, NX, KY, KX)
    c = ds.calibration
    assert c.scan_step == pytest.approx((0.41, 0.41)) and c.scan_units == "A"
    assert c.detector_pixel == pytest.approx((0.0123, 0.0123)) and c.detector_units == "A^-1"
    assert c.convergence_mrad == pytest.approx(21.4)
    for iy, ix in [(0, 0), (1, 0), (0, 1), (NY - 1, NX - 1), (3, 7)]:
        np.testing.assert_array_equal(ds.pattern(iy, ix), ref[iy, ix])
    np.testing.assert_array_equal(ds.data.compute(), ref)


def test_emd_dims_only(tmp_path):
    p = tmp_path / "dims.emd"
    write_py4dstem(p, with_calibration=False, extra_stack=False)
    c = load(p).calibration
    # dims: Rx 0.5 nm, Ry 0.25 nm -> 5 Å, 2.5 Å (array order, no swap); Q in mrad
    assert c.scan_step == pytest.approx((5.0, 2.5)) and c.scan_units == "A"
    assert c.detector_pixel == pytest.approx((1.5, 2.5)) and c.detector_units == "mrad"


def test_older_emd_integer_type_and_one_based_dims(tmp_path):
    p = tmp_path / "old.h5"
    ref = cube()
    with h5py.File(p, "w") as f:
        g = f.create_group("data/datacube")
        g.attrs["emd_group_type"] = 1
        g.create_dataset("data", data=ref)
        write_emd_dims(g, [0.3, 0.2, 0.05, 0.04], ["[n_m]", "[n_m]", "[1/n_m]", "[1/n_m]"],
                       ["R_x", "R_y", "Q_x", "Q_y"], base=1)
        md = f.create_group("data/datacube/_metadata/calibration")
        md.create_dataset("convergence_semiangle_mrad", data=17.0)
        f.create_dataset("data/other", data=np.zeros((2, 2, 3, 3), np.float32))
    ds = load(p)
    assert ds.metadata["dataset"] == "/data/datacube/data"
    c = ds.calibration
    assert c.scan_step == pytest.approx((3.0, 2.0))
    assert c.detector_pixel == pytest.approx((0.005, 0.004)) and c.detector_units == "A^-1"
    assert c.convergence_mrad == 17.0


def write_generic(path):
    a, b = cube(), (cube(dtype=np.int64) % 65521).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.attrs["energy_ev"] = 300e3
        f.attrs["scan_step_A"] = 9.9  # overridden on the dataset
        da_ = f.create_dataset("sample/patterns", data=a)
        da_.attrs["scan_step_A"] = (0.41, 0.5)
        da_.attrs["detector_pixel_mrad"] = 0.82
        da_.attrs["convergence_mrad"] = 21.4
        f.create_dataset("sample/dark", data=b)
        f.create_dataset("sample/image", data=np.zeros((NY, NX)))
    return a, b


def test_generic_two_4d_datasets(tmp_path):
    p = tmp_path / "generic.hdf5"
    a, b = write_generic(p)
    with pytest.raises(AmbiguousDatasetError) as e:
        load(p)
    assert sorted(e.value.candidates) == ["/sample/dark", "/sample/patterns"]
    assert "/sample/dark" in str(e.value) and "/sample/patterns" in str(e.value)
    assert e.value.option == "dataset" and isinstance(e.value, ValueError)
    ds = load(p, dataset="/sample/patterns")
    c = ds.calibration
    assert c.scan_step == (0.41, 0.5) and c.scan_units == "A"
    assert c.detector_pixel == (0.82, 0.82) and c.detector_units == "mrad"
    assert c.energy_ev == 300e3 and c.convergence_mrad == 21.4
    np.testing.assert_array_equal(ds.data.compute(), a)
    ds2 = load(p, dataset="sample/dark")
    assert ds2.dtype == np.uint16 and ds2.calibration.scan_step == (9.9, 9.9)
    np.testing.assert_array_equal(ds2.data[2:4].compute(), b[2:4])
    with pytest.raises(AmbiguousDatasetError, match="nothing"):
        load(p, dataset="/sample/nothing")


def test_3d_stack_viewed_as_4d(tmp_path):
    p = tmp_path / "stack.h5"
    ref = cube()
    stack = ref.reshape(NY * NX, KY, KX)
    with h5py.File(p, "w") as f:
        f.create_dataset("frames", data=stack, chunks=(7, KY, KX))
        f.create_dataset("frames_attr", data=stack).attrs["scan_shape"] = (NY, NX)
    with pytest.raises(AmbiguousDatasetError):
        load(p)
    with pytest.raises(ScanShapeRequired) as e:
        load(p, dataset="frames")
    assert e.value.n_frames == NY * NX
    with pytest.raises(ReaderError, match="does not match"):
        load(p, dataset="frames", scan_shape=(7, 7))
    for kw in ({"dataset": "frames", "scan_shape": (NY, NX)}, {"dataset": "frames_attr"}):
        ds = load(p, **kw)
        assert ds.shape == (NY, NX, KY, KX)
        np.testing.assert_array_equal(ds.data.compute(), ref)
        np.testing.assert_array_equal(ds.pattern(4, 9), ref[4, 9])
        np.testing.assert_array_equal(np.asarray(ds.data[1:5:2, 3:8:3, 2:5, ::4]),
                                      ref[1:5:2, 3:8:3, 2:5, ::4])
        np.testing.assert_array_equal(np.asarray(ds.data[2, :, 0, 0]), ref[2, :, 0, 0])


def test_chunks_are_whole_rows(tmp_path, monkeypatch):
    p = tmp_path / "chunks.h5"
    ref = cube(ny=20)
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=ref, chunks=(3, NX, KY, KX))
    row_bytes = NX * KY * KX * 4
    monkeypatch.setattr(shapes, "CHUNK_BYTES", 7 * row_bytes)
    ds = load(p)
    ch = ds.data.chunks
    assert ch[1] == (NX,) and ch[2] == (KY,) and ch[3] == (KX,)
    assert ch[0][:-1] == (6,) * (len(ch[0]) - 1)  # 7 rows rounded down to the h5 chunking (3)
    np.testing.assert_array_equal(ds.data.compute(), ref)


def test_lazy_and_file_kept_open(tmp_path):
    p = tmp_path / "big.h5"
    ref = cube(ny=64, nx=64, ky=32, kx=32)  # 16 MB
    with h5py.File(p, "w") as f:
        f.create_dataset("d", data=ref)
    del ref
    tracemalloc.start()
    ds = load(p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2e6, f"open allocated {peak / 1e6:.1f} MB"
    gc.collect()
    np.testing.assert_array_equal(ds.pattern(63, 5), cube(ny=64, nx=64, ky=32, kx=32)[63, 5])


def test_no_3d_or_4d_dataset(tmp_path):
    p = tmp_path / "flat.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("image", data=np.zeros((5, 5)))
    with pytest.raises(ReaderError, match=r"flat\.h5.*no 3D or 4D dataset"):
        load(p)
    q = tmp_path / "fake.h5"
    q.write_bytes(b"not hdf5 at all")
    with pytest.raises(ReaderError, match="fake.h5"):
        load(q)


def test_file_not_modified(tmp_path):
    p = tmp_path / "ro.h5"
    write_py4dstem(p)
    before = (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    ds = load(p)
    _ = ds.data.sum().compute()
    del ds
    gc.collect()
    assert (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) == before
