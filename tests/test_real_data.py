"""Files written by real detectors and other people's software (``../shared/real-data``, beside
the repository; CI has it there): shapes and calibrations as their headers state them
(``expected.json``, checked by hand against the headers), with the header field named for each;
one virtual image per file against a NumPy sum; RosettaSciIO's reading as an independent
cross-check of the frames and of the scan step where it reads one.

The folder is read-only: files that must be changed or written beside (the EMPAD frames, which
``make_raw.py`` synthesises as RosettaSciIO's own tests do) are copied to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA as REAL  # noqa: E402

from napari_4dstem_ml.detectors.engine import virtual_images
from napari_4dstem_ml.io import ReaderError, ScanShapeRequired, load

pytestmark = pytest.mark.skipif(not (REAL / "expected.json").is_file(),
                                reason=f"the real-data folder is not at {REAL}")
EXPECTED = json.loads((REAL / "expected.json").read_text()) if (REAL / "expected.json").is_file() else {}
FILES = [k for k in EXPECTED if not k.startswith("_")]
#: what each expected.json key's calibration is called in Calibration.sources
SOURCE_KEY = {"scan_step_angstrom": "scan_step", "energy_kev": "energy_ev",
              "detector_pixel_mrad": "detector_pixel", "convergence_mrad": "convergence_mrad"}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """A writable copy of the real-data folder with the synthetic EMPAD frames written
    (``make_raw.py``; the 136 MB one for the 64 x 32 scan is written as a sparse file of the
    same float32 ``arange`` pattern, block by block)."""
    root = tmp_path_factory.mktemp("real") / "real-data"
    shutil.copytree(REAL, root)
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    subprocess.run([sys.executable, "make_raw.py"], cwd=root / "rsciio" / "empad", check=True)
    big = np.memmap(root / "rsciio" / "empad" / "scan_x32_y64.raw", "<f4", "w+",
                    shape=(64 * 32 * 130 * 128,))
    step = 2**22
    for i in range(0, big.size, step):
        big[i:i + step] = np.arange(i, min(i + step, big.size), dtype=np.float64)
    big.flush()
    del big
    return root


def _close(a, b, tol=0.005) -> bool:
    return a is not None and abs(float(a) - float(b)) <= tol * abs(float(b))


@pytest.mark.parametrize("rel", FILES)
def test_shape_and_calibrations_as_the_header_states(real, rel):
    want = EXPECTED[rel]
    ds = load(real / rel, dataset=want.get("dataset"))
    info = ds.info()
    assert info["scan_shape"] == want["scan_shape"]
    assert info["detector_shape"] == want["detector_shape"]
    if "scan_step_angstrom" in want:
        assert all(_close(g, w) for g, w in zip(info["scan_step_angstrom"], want["scan_step_angstrom"]))
    if "energy_kev" in want:
        assert _close(info["energy_kev"], want["energy_kev"])
    if "convergence_mrad" in want:
        assert _close(info["convergence_mrad"], want["convergence_mrad"])
    if "detector_pixel_mrad" in want:
        accepted = want["detector_pixel_mrad"]
        accepted = accepted if isinstance(accepted, list) else [accepted]
        assert any(all(_close(v, a, 0.01) for v in info["detector_pixel_mrad"]) for a in accepted)
    for key, name in SOURCE_KEY.items():  # every stated calibration names where it came from
        if key in want:
            assert ds.calibration.sources.get(name), f"{rel}: no source for {name}"
    # what the file does not state stays unknown, never a guess
    for key in ("energy_kev", "convergence_mrad"):
        if key not in want:
            assert info[key] is None, (rel, key, info[key])


@pytest.mark.parametrize("rel", FILES)
def test_a_virtual_image_matches_numpy(real, rel):
    """A bright-field disk plus an annulus through the engine against ``einsum`` on the frames."""
    want = EXPECTED[rel]
    ds = load(real / rel, dataset=want.get("dataset"))
    frames = np.asarray(ds.data, dtype=np.float64)
    ky, kx = ds.detector_shape
    yy, xx = np.mgrid[:ky, :kx]
    r = np.hypot(yy - (ky - 1) / 2, xx - (kx - 1) / 2)
    masks = np.stack([(r < min(ky, kx) / 6), (r >= min(ky, kx) / 6) & (r < min(ky, kx) / 2.2)])
    got = virtual_images(ds.data, masks.astype(np.float32))
    ref = np.einsum("yxij,mij->myx", frames, masks.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6 * max(1.0, np.abs(ref).max()))


RSCIIO = {  # file -> RosettaSciIO plugin, for the cross-check of frames and scan step
    "rsciio/quantumdetector/001_4x2_6bit.mib": "quantumdetector",
    "rsciio/quantumdetector/002_4x2_6bit_roi128.mib": "quantumdetector",
    "rsciio/blockfile/test1.blo": "blockfile",
    "rsciio/emd/py4DSTEM_size2x3x4x5.h5": "emd",
    "rsciio/empad/map4x4.xml": "empad",
    "rsciio/empad/EMPAD_v1.2.2_x32_y64_size0.8.xml": "empad",
    "rsciio/arina/test_00_master.h5": "arina",
}
_TO_A = {"nm": 10.0, "µm": 1e4, "A": 1.0, "Å": 1.0}


@pytest.mark.parametrize("rel", sorted(RSCIIO))
def test_frames_and_scan_step_agree_with_rosettasciio(real, rel):
    import importlib

    mod = importlib.import_module(f"rsciio.{RSCIIO[rel]}")
    sig = mod.file_reader(str(real / rel))[0]
    ours = load(real / rel)
    np.testing.assert_array_equal(np.asarray(ours.data), np.asarray(sig["data"]))
    nav = sorted(sig["axes"], key=lambda a: a.get("index_in_array", 0))[:2]  # scan axes first
    units = [a.get("units") for a in nav]
    if all(u in _TO_A for u in units):
        theirs = [a["scale"] * _TO_A[u] for a, u in zip(nav, units)]
        assert ours.calibration.scan_step_A == pytest.approx(theirs, rel=1e-6)


def test_empad_051_header_tags_and_both_detector_calibrations(real):
    """The 0.51 header's flat dotted tags; the detector angle per pixel from
    calibrated_diffraction_angle, with the disagreeing calibrated_pixelsize noted, not used."""
    ds = load(real / "rsciio/empad/map4x4.xml")
    c = ds.calibration
    assert c.camera_length_m == pytest.approx(0.7225)
    assert "optics.get_cameralength" in c.sources["camera_length_m"]
    assert "source.get_voltage" in c.sources["energy_ev"]
    assert "calibrated_diffraction_angle" in c.sources["detector_pixel"]
    assert c.detector_pixel == pytest.approx((0.42906574, 0.42906574))
    assert any("calibrated_pixelsize" in n for n in ds.notes)


def test_arina_master_opens_by_its_master_and_data_file_alone(real):
    master = load(real / "rsciio/arina/test_00_master.h5")
    data_file = load(real / "rsciio/arina/test_00_data_000001.h5")
    assert master.shape == data_file.shape == (4, 4, 192, 192)
    assert str(real / "rsciio/arina/test_00_data_000001.h5") in master.input_files
    assert "NumPixelsY" in master.metadata["scan_shape_from"]


def _arina_copy(real: Path, where: Path, frames: np.ndarray) -> Path:
    """The real master file and companion, with a data file of ``frames`` written beside them
    as the detector writes it: (16, 192, 192) uint32, bitshuffle-LZ4, one frame per chunk."""
    import h5py
    import hdf5plugin

    where.mkdir()
    for name in ("test_00_master.h5", "test_00.h5"):
        shutil.copy(real / "rsciio/arina" / name, where / name)
    with h5py.File(where / "test_00_data_000001.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, 192, 192),
                         **hdf5plugin.Bitshuffle(cname="lz4"))
    return where / "test_00_master.h5"


def test_arina_adf_from_the_master_without_options(real, tmp_path):
    """``stemml adf`` on a Dectris master file, compressed data read through its external link
    with no extra option; the image against a NumPy annulus sum over the same frames."""
    from napari_4dstem_ml.cli import main

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:192, :192]
    disk = (np.hypot(yy - 95.5, xx - 96.5) < 20).astype(np.uint32) * 400
    frames = (disk[None] + rng.poisson(3, (16, 192, 192))).astype(np.uint32)
    master = _arina_copy(real, tmp_path / "arina", frames)
    out = tmp_path / "adf.npy"
    assert main(["adf", str(master), "--pixels", "--inner", "25", "--outer", "80",
                 "-o", str(out)]) == 0
    img = np.load(out)
    from napari_4dstem_ml.detectors.centre import find_bf_centre

    cy, cx = find_bf_centre(frames.mean(0).astype(np.float64))
    r = np.hypot(yy - cy, xx - cx)
    ref = (frames.astype(np.float64) * ((r >= 25) & (r < 80))).sum((1, 2)).reshape(4, 4)
    np.testing.assert_allclose(img, ref, rtol=0.02)


def test_arina_link_leaving_the_folder_is_refused(real, tmp_path):
    import h5py

    frames = np.ones((16, 192, 192), np.uint32)
    master = _arina_copy(real, tmp_path / "a", frames)
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "a" / "test_00_data_000001.h5", tmp_path / "elsewhere" / "d.h5")
    with h5py.File(master, "r+") as f:
        del f["entry/data/data_000001"]
        f["entry/data/data_000001"] = h5py.ExternalLink(str(tmp_path / "elsewhere" / "d.h5"),
                                                        "/entry/data/data")
    with pytest.raises(ReaderError, match="outside the master file's folder"):
        load(master)
    assert load(master, allow_external=True).shape == (4, 4, 192, 192)


def test_merlin_frame_stack_messages_name_the_frames_and_the_shapes_that_fit(real, tmp_path):
    import zipfile

    with zipfile.ZipFile(real / "rsciio/quantumdetector/Merlin_Single_Quad.zip") as z:
        z.extractall(tmp_path)
    nine = tmp_path / "Single_9_Frame_CounterDepth_6_Rows_256.mib"
    with pytest.raises(ScanShapeRequired, match=r"9 diffraction patterns.*3 x 3"):
        load(nine)
    with pytest.raises(ReaderError, match=r"3 x 4 = 12 positions .* 9 .*3 x 3"):
        load(nine, scan_shape=(3, 4))
    assert load(nine, scan_shape=(3, 3)).shape == (3, 3, 256, 256)
    single = load(tmp_path / "Single_1_Frame_CounterDepth_6_Rows_256.mib")
    assert single.shape == (1, 1, 256, 256)


def test_cli_output_has_no_terminal_colour_codes(real, capfd):
    """RosettaSciIO logs with ANSI colours to stdout; off a terminal nothing of it may reach
    the output (it would also corrupt ``--json``): it becomes a plain note."""
    from napari_4dstem_ml.cli import main

    assert main(["info", str(real / "merlintools/SingleMIB.mib"), "--json"]) == 0
    out, err = capfd.readouterr()
    assert "\x1b" not in out + err
    info = json.loads(out)
    assert info["scan_shape"] == [1, 1] and any("hdr" in n for n in info["notes"])


def test_napari_reader_opens_a_stack_without_scan_shape_as_one_row(real):
    from napari_4dstem_ml._reader import read_4dstem

    layers = read_4dstem(str(real / "rsciio/empad/stack_images.xml"))
    ds = layers[0][1]["metadata"]["dataset4d"]
    assert not ds.scan_shape_known and ds.metadata["n_frames"] == 10
    two = ds.with_scan_shape((2, 5))
    assert two.scan_shape_known and two.shape == (2, 5, 128, 128)
    np.testing.assert_array_equal(np.asarray(two.data[1, 2]), np.asarray(ds.data[0, 7]))
    with pytest.raises(ValueError, match="10 frames"):
        ds.with_scan_shape((3, 3))


def test_bright_field_disk_of_the_fpd_scan_is_its_own_size(real):
    """The Merlin scan's disk is about 2 px across the half maximum (its mean pattern peaks
    at ~200 counts and falls below half within 2-3 px); the old estimate, thrown by a disk
    holding 0.02 % of the detector, said 8.3 px."""
    from napari_4dstem_ml.detectors.centre import measure_bf_disk

    ds = load(real / "merlintools/FPD_HDF5.hdf5")
    mean = np.asarray(ds.data, dtype=np.float64).mean((0, 1))
    disk = measure_bf_disk(mean)
    peak = np.unravel_index(np.argmax(mean), mean.shape)
    assert np.hypot(disk.centre[0] - peak[0], disk.centre[1] - peak[1]) < 1.5
    yy, xx = np.mgrid[: mean.shape[0], : mean.shape[1]]
    half = mean[np.hypot(yy - disk.centre[0], xx - disk.centre[1]) < disk.radius_px]
    assert 1.7 < disk.radius_px < 2.6
    assert half.min() > 0.25 * mean.max()  # the circle holds the disk, not the background
