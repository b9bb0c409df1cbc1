"""Formats read through RosettaSciIO (lazy): files written with rsciio's own writers (.hspy,
.blo) and a Merlin .mib written by hand following the Quantum Detectors header layout."""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest

from napari_4dstem_ml.io import ReaderError, can_read, load

rsciio = pytest.importorskip("rsciio")

NY, NX, K = 3, 5, 6


def cube(ny=NY, nx=NX, ky=K, kx=K, dtype=np.float32):
    iy, ix, qy, qx = np.ix_(*(np.arange(n) for n in (ny, nx, ky, kx)))
    return (iy * 1000 + ix * 100 + qy * 10 + qx).astype(dtype)


def signal_dict(data, nav_units="nm", sig_units="1/nm", title="t", tem=True):
    axes = [dict(size=NY, name="y", scale=0.05, offset=0.0, units=nav_units, navigate=True),
            dict(size=NX, name="x", scale=0.04, offset=0.0, units=nav_units, navigate=True),
            dict(size=data.shape[2], name="ky", scale=0.2, offset=0.0, units=sig_units, navigate=False),
            dict(size=data.shape[3], name="kx", scale=0.3, offset=0.0, units=sig_units, navigate=False)]
    md = {"General": {"title": title}, "Signal": {"signal_type": "electron_diffraction"}}
    if tem:
        md["Acquisition_instrument"] = {"TEM": {"beam_energy": 300.0, "convergence_angle": 21.4,
                                                "camera_length": 120.0}}
    return dict(data=data, axes=axes, metadata=md, original_metadata={},
                attributes={"_lazy": False}, tmp_parameters={}, package_info={},
                learning_results={}, models={})


def write_hspy(path, data, **kw):
    hspy = pytest.importorskip("rsciio.hspy")
    hspy.file_writer(str(path), signal_dict(data, **kw))


def test_hspy_lazy_with_calibrations(tmp_path):
    p = tmp_path / "s.hspy"
    ref = cube()
    write_hspy(p, ref)
    assert can_read(p)
    before = (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    ds = load(p)
    assert ds.reader == "rsciio:hspy" and ds.is_lazy
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    c = ds.calibration
    assert c.scan_step == pytest.approx((0.5, 0.4)) and c.scan_units == "A"  # nm x 10
    assert c.detector_pixel == pytest.approx((0.02, 0.03)) and c.detector_units == "A^-1"
    assert c.energy_ev == pytest.approx(300e3) and c.convergence_mrad == pytest.approx(21.4)
    assert c.camera_length_m == pytest.approx(0.12)
    del ds
    assert (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) == before


def test_hspy_mrad_units_and_hyperspy_hdf5_delegation(tmp_path):
    p = tmp_path / "s.hdf5"  # HyperSpy's older extension: the HDF5 reader hands it over
    ref = cube()
    write_hspy(p, ref, nav_units="Å", sig_units="mrad", tem=False)
    ds = load(p)
    assert ds.reader == "rsciio:hspy"
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    c = ds.calibration
    assert c.scan_step == pytest.approx((0.05, 0.04))
    assert c.detector_pixel == pytest.approx((0.2, 0.3)) and c.detector_units == "mrad"
    assert c.energy_ev is None


def test_blockfile(tmp_path):
    blockfile = pytest.importorskip("rsciio.blockfile")
    p = tmp_path / "s.blo"
    ref = (cube() % 251).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rsciio warns that 1/nm is not its 'cm' signal unit
        blockfile.file_writer(str(p), signal_dict(ref), navigator=None, show_progressbar=False)
    ds = load(p)
    assert ds.reader == "rsciio:blockfile" and ds.is_lazy
    np.testing.assert_array_equal(np.asarray(ds.data), ref)
    assert ds.calibration.scan_step == pytest.approx((0.5, 0.4))
    assert ds.calibration.detector_pixel is None  # .blo stores the pattern scale in cm


def test_blockfile_header_that_does_not_fit_is_refused_before_reading(tmp_path):
    """A blockfile header (layout from the format: 'IMGBLO', magic 0x0102, two u4 offsets, a
    u4, then u2 DP_SZ, rotation, NX, NY) claiming 60000 x 60000 patterns in a 4 kB file."""
    pytest.importorskip("rsciio.blockfile")
    p = tmp_path / "huge.blo"
    head = b"IMGBLO" + np.array([0x0102], "<u2").tobytes() + np.array([256, 512, 0], "<u4").tobytes()
    head += np.array([128, 0, 60000, 60000], "<u2").tobytes()
    p.write_bytes(head + bytes(4096 - len(head)))
    with pytest.raises(ReaderError, match="does not fit the file"):
        load(p)
    p.write_bytes(b"IMGBLO" + b"\x00\x00" + bytes(4000))
    with pytest.raises(ReaderError, match="not a blockfile"):
        load(p)


def mib_header(index: int, ky: int, kx: int, t_us: int) -> bytes:
    """A 384-byte single-chip Merlin frame header (comma-separated ASCII fields)."""
    ts = f"2024-01-01T00:00:{t_us // 1_000_000:02d}.{t_us % 1_000_000:06d}000Z"
    fields = ["MQ1", f"{index:06d}", "00384", "01", f"{kx:04d}", f"{ky:04d}", "U16", "   1x1",
              "01", "2024-01-01 00:00:00.000000", "0.001000", "0", "0", "0",
              "1.200000E+2", "5.110000E+2", "0.000000E+0", "0.000000E+0", "0.000000E+0",
              "0.000000E+0", "0.000000E+0", "0.000000E+0", "0.000000E+0", "3RX",
              "175", "511", "000", "000", "000", "000", "000", "000", "125", "255", "125", "125",
              "100", "100", "082", "100", "087", "030", "128", "004", "255", "129", "128", "176",
              "168", "511", "511", "MQ1A", ts, "1000000ns", "12", ""]
    head = ",".join(fields).encode()
    assert len(head) < 384
    return head + b"\0" * (384 - len(head))


def write_mib(path, frames: np.ndarray, line_gap=True):
    """frames (N, ky, kx) uint16, written big-endian after each header."""
    n, ky, kx = frames.shape
    with open(path, "wb") as f:
        t = 0
        for i in range(n):
            t += 1000 + (50_000 if line_gap and i % NX == 0 else 0)
            f.write(mib_header(i + 1, ky, kx, t))
            f.write(frames[i].astype(">u2").tobytes())


def test_mib_by_hand(tmp_path):
    pytest.importorskip("rsciio.quantumdetector")
    ref = cube(dtype=np.uint16)
    p = tmp_path / "scan.mib"
    write_mib(p, ref.reshape(NY * NX, K, K))
    assert can_read(p)
    ds = load(p, scan_shape=(NY, NX))
    assert ds.reader == "rsciio:quantumdetector" and ds.shape == (NY, NX, K, K)
    # RosettaSciIO flips Merlin frames upside down (rows stored bottom-up); positions keep
    # frame order i = iy * nx + ix
    np.testing.assert_array_equal(np.asarray(ds.data), ref[:, :, ::-1, :])
    with open(tmp_path / "scan.hdr", "w") as f:  # acquisition header beside the .mib
        f.write("HDR,\t\nFrames in Acquisition (Number):\t15\nFrames per Trigger (Number):\t5\n"
                "End\t\n")
    ds2 = load(p)
    assert ds2.shape == (NY, NX, K, K)
    np.testing.assert_array_equal(np.asarray(ds2.data), ref[:, :, ::-1, :])


def test_broken_file_and_wrong_scan_shape(tmp_path):
    p = tmp_path / "broken.hspy"
    p.write_bytes(b"garbage")
    with pytest.raises(ReaderError, match="broken.hspy"):
        load(p)
    q = tmp_path / "ok.hspy"
    write_hspy(q, cube())
    with pytest.raises(ReaderError, match="not the requested"):
        load(q, scan_shape=(5, 3))


def test_zspy_skips_without_zarr(tmp_path):
    zspy = pytest.importorskip("rsciio.zspy")
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) >= 3:
        # RosettaSciIO's zspy plugin uses the zarr 2 API; abTEM (the [sim] extra) needs zarr 3
        pytest.skip(f"RosettaSciIO's zspy plugin needs zarr<3, zarr {zarr.__version__} is installed")
    p = tmp_path / "s.zspy"
    ref = cube()
    zspy.file_writer(str(p), signal_dict(ref))
    np.testing.assert_array_equal(np.asarray(load(p).data), ref)

