"""EMPAD reader: raw frames + XML written here by hand following the format (128 columns x 130
rows of little-endian float32 per frame, frame i = iy * nx + ix, last two rows metadata)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc

import numpy as np
import pytest

from napari_4dstem_ml.io import ReaderError, ScanShapeRequired, can_read, load
from napari_4dstem_ml.io.empad import FRAME_BYTES, parse_xml

NY, NX = 24, 40  # non-square on purpose: x = columns = fast axis
META_SENTINEL = -7777.0


def frame(iy: int, ix: int) -> np.ndarray:
    """The (130, 128) frame written at scan position (iy, ix): 128 image rows of values
    unique to (iy, ix, row, col) in practice, then two metadata rows of a sentinel."""
    i = iy * NX + ix
    p = np.arange(128 * 128, dtype=np.int64)
    # injective in the pixel index p (7919 is prime to 65521 > 128 * 128), shifted per frame
    img = ((p * 7919 + i * 104729) % 65521).astype("<f4").reshape(128, 128) + np.float32(0.25)
    meta = np.full((2, 128), META_SENTINEL - (iy * NX + ix), dtype="<f4")
    return np.concatenate([img, meta], axis=0)


def write_raw(path, ny=NY, nx=NX, truncate_by=0):
    with open(path, "wb") as f:
        for i in range(ny * nx):
            iy, ix = divmod(i, nx)
            f.write(frame(iy, ix).astype("<f4").tobytes())
        if truncate_by:
            f.truncate(ny * nx * FRAME_BYTES - truncate_by)
    return path


def xml_v12(raw_name, acquire=(NY, NX), search=(16, 16), fov=(1.2e-8, 1.2e-8), search_first=True):
    """v1.2-style XML (structure of EMPAD software 1.2.2 files)."""
    sy, sx = search
    ay, ax = acquire
    s_block = (f'<scan_parameters mode="search"><scan_size>0.8</scan_size>'
               f"<scan_center_x>0.5</scan_center_x><scan_resolution_y>{sy}</scan_resolution_y>"
               f"<scan_resolution_x>{sx}</scan_resolution_x><scan_center_y>0.5</scan_center_y>"
               "</scan_parameters>")
    a_block = (f'<scan_parameters mode="acquire"><scan_size>0.6</scan_size>'
               f"<scan_center_x>0.5</scan_center_x><scan_resolution_y>{ay}</scan_resolution_y>"
               f"<scan_resolution_x>{ax}</scan_resolution_x><scan_center_y>0.5</scan_center_y>"
               "</scan_parameters>")
    blocks = s_block + a_block if search_first else a_block + s_block
    return (
        '<root name="EMPAD_test"><timestamp timestamp="1774471672.5" '
        'isoformat="2026-03-25T16:47:52.586728"/>'
        "<software_version>1.2.2  (2021-08-20)</software_version>"
        f'<raw_file filename="{raw_name}"/><exposure_time>1</exposure_time>'
        f"{blocks}"
        "<iom_measurements><scan_rotation>12.5</scan_rotation>"
        "<full_scan_field_of_view><scale_factor>0.72</scale_factor>"
        f"<x>{fov[0]}</x><y>{fov[1]}</y></full_scan_field_of_view>"
        "<nominal_camera_length>0.369</nominal_camera_length>"
        "<high_voltage_state>True</high_voltage_state><high_voltage>300000.0</high_voltage>"
        "</iom_measurements></root>"
    )


def xml_old(raw_name, ny=NY, nx=NX):
    """Older-software XML: scan size as root-level pix_x / pix_y."""
    return (f'<root><raw_file filename="{raw_name}"/><pix_x>{nx}</pix_x><pix_y>{ny}</pix_y>'
            "<iom_measurements><high_voltage>80000</high_voltage></iom_measurements></root>")


@pytest.fixture(scope="module")
def io_empad_raw(tmp_path_factory):
    """One 24 x 40 raw file (64 MB), copied by hard link into each test's folder."""
    d = tmp_path_factory.mktemp("empad_src")
    return write_raw(d / "src.raw")


def place(src, dst):
    os.link(src, dst)
    return dst


def check_values(ds):
    assert ds.shape == (NY, NX, 128, 128)
    assert ds.dtype == np.float32
    for iy, ix in [(0, 0), (0, 1), (1, 0), (0, NX - 1), (NY - 1, 0), (7, 33), (NY - 1, NX - 1)]:
        np.testing.assert_array_equal(ds.pattern(iy, ix), frame(iy, ix)[:128])
    # metadata rows dropped: no sentinel anywhere
    assert float(np.asarray(ds.data).min()) > META_SENTINEL / 2


def test_v12_xml_acquire_block_found_in_folder(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "acquisition_01.raw")
    (tmp_path / "EMPAD_v1.2.2_x40_y24.xml").write_text(xml_v12("acquisition_01.raw"))
    (tmp_path / "unrelated.xml").write_text('<root><raw_file filename="other.raw"/></root>')
    ds = load(raw)
    assert ds.reader == "empad"
    assert isinstance(ds.data, np.memmap) and ds.is_lazy
    assert not ds.data.flags.writeable
    check_values(ds)
    c = ds.calibration
    assert c.energy_ev == 300000.0
    assert c.camera_length_m == pytest.approx(0.369)
    # EMPAD 1.2.x stores the field of view of the larger scan dimension (40 columns) times
    # scale_factor: 1.2e-8 m / 0.72 / 40 = 4.1667 Å, square pixels (as RosettaSciIO reads it)
    step = 1.2e-8 / 0.72 / 40 * 1e10
    assert c.scan_step == pytest.approx((step, step))
    assert c.scan_units == "A"
    assert "scale_factor" in c.sources["scan_step"] and "full_scan_field_of_view" in c.sources["scan_step"]
    assert c.detector_pixel is None
    assert c.scan_rotation_deg == 12.5
    assert "scan_rotation" in c.sources["scan_rotation_deg"]


def test_acquire_block_first_and_loading_via_xml(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "scan.raw")
    xml = tmp_path / "scan.xml"
    xml.write_text(xml_v12("scan.raw", search_first=False))
    check_values(load(xml))
    check_values(load(raw))


def test_search_block_used_when_it_matches_the_file(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "scan.raw")
    (tmp_path / "scan.xml").write_text(xml_v12("scan.raw", acquire=(64, 64), search=(NY, NX)))
    ds = load(raw)
    check_values(ds)
    assert "search" in ds.metadata["scan_shape_from"]


def test_old_pix_xy_xml(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "old.raw")
    (tmp_path / "old.xml").write_text(xml_old("old.raw"))
    ds = load(raw)
    check_values(ds)
    assert ds.calibration.energy_ev == 80000.0
    assert ds.calibration.scan_step is None


def test_name_pattern_without_xml(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / f"scan_x{NX}_y{NY}.raw")
    ds = load(raw)
    check_values(ds)
    assert ds.metadata["scan_shape_from"] == "the file name"


def test_scan_shape_option_and_missing_shape(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "noname.raw")
    with pytest.raises(ScanShapeRequired) as e:
        load(raw)
    assert e.value.n_frames == NY * NX and "noname.raw" in str(e.value)
    check_values(load(raw, scan_shape=(NY, NX)))
    with pytest.raises(ReaderError, match=f"expected {30 * 30 * FRAME_BYTES} bytes"):
        load(raw, scan_shape=(30, 30))


def test_truncated_raw_names_file_and_sizes(tmp_path):
    raw = write_raw(tmp_path / "cut.raw", ny=3, nx=5, truncate_by=100)
    (tmp_path / "cut.xml").write_text(xml_old("cut.raw", ny=3, nx=5))
    actual = 15 * FRAME_BYTES - 100
    with pytest.raises(ReaderError) as e:
        load(raw)
    msg = str(e.value)
    assert "cut.raw" in msg and str(15 * FRAME_BYTES) in msg and str(actual) in msg
    assert isinstance(e.value, ValueError)
    # the same file without XML or pattern: not a whole number of frames
    os.remove(tmp_path / "cut.xml")
    assert not can_read(raw)
    with pytest.raises(ReaderError, match="cut.raw"):
        load(raw)


def test_xml_scan_size_not_matching_file(tmp_path):
    raw = write_raw(tmp_path / "m.raw", ny=3, nx=5)
    (tmp_path / "m.xml").write_text(xml_v12("m.raw", acquire=(4, 5), search=(2, 2)))
    with pytest.raises(ReaderError) as e:
        load(raw)
    msg = str(e.value)
    assert "m.raw" in msg and str(20 * FRAME_BYTES) in msg and str(15 * FRAME_BYTES) in msg


def test_unreadable_xml(tmp_path):
    raw = write_raw(tmp_path / "u.raw", ny=2, nx=2)
    xml = tmp_path / "u.xml"
    xml.write_text('<root><raw_file filename="u.raw"/><pix_x>2</pix_x')
    with pytest.raises(ReaderError, match="u.xml"):
        load(raw)
    with pytest.raises(ReaderError, match="unreadable"):
        parse_xml(xml)


def test_can_read(tmp_path):
    good = write_raw(tmp_path / "g.raw", ny=1, nx=2)
    bad = tmp_path / "b.raw"
    bad.write_bytes(b"\0" * 1000)
    xml = tmp_path / "g.xml"
    xml.write_text(xml_old("g.raw", 1, 2))
    other = tmp_path / "other.xml"
    other.write_text("<config><a>1</a></config>")
    assert can_read(good) and can_read(xml)
    assert not can_read(bad) and not can_read(other)
    assert not can_read(tmp_path / "missing.raw")


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def test_files_not_modified(tmp_path, io_empad_raw):
    raw = place(io_empad_raw, tmp_path / "ro.raw")
    xml = tmp_path / "ro.xml"
    xml.write_text(xml_v12("ro.raw"))
    before = [(os.stat(p).st_mtime_ns, _sha(p)) for p in (raw, xml)]
    ds = load(raw)
    _ = float(np.asarray(ds.data[3:5]).sum())
    with pytest.raises(ValueError):
        ds.data[0, 0, 0, 0] = 1.0
    del ds
    assert [(os.stat(p).st_mtime_ns, _sha(p)) for p in (raw, xml)] == before


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_open_20gb_sparse_file_is_instant(tmp_path):
    ny = nx = 550  # 302500 frames x 66560 B = 20.1 GB, sparse: no disk used
    raw = tmp_path / f"scan_x{nx}_y{ny}.raw"
    with open(raw, "wb") as f:
        f.truncate(ny * nx * FRAME_BYTES)
    if os.stat(raw).st_blocks * 512 > 1e6:
        pytest.skip("file system does not make sparse files")
    xml = tmp_path / f"scan_x{nx}_y{ny}.xml"
    xml.write_text(xml_v12(raw.name, acquire=(ny, nx)))
    rss0 = _rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    ds = load(raw)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = _rss_bytes() - rss0
    assert ds.shape == (ny, nx, 128, 128)
    assert ds.nbytes > 19e9
    assert dt < 1.0, f"open took {dt:.3f} s"
    assert peak < 50e6, f"traced allocations peaked at {peak / 1e6:.1f} MB"
    assert rss < 50e6, f"RSS grew by {rss / 1e6:.1f} MB"
    assert float(np.abs(ds.pattern(ny - 1, nx - 1)).sum()) == 0.0  # a hole reads as zeros
