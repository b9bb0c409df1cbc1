"""Dispatch and error handling of ``napari_4dstem_ml.io``: what is readable, forced readers,
and clear ``ReaderError``s (ValueErrors naming the file) for what is not."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_4dstem_ml.io import (
    AmbiguousDatasetError,
    ReaderError,
    ScanShapeRequired,
    can_read,
    list_datasets,
    load,
    reader_for,
)
from napari_4dstem_ml.io.empad import FRAME_BYTES


def test_error_classes_are_value_errors():
    for cls in (ReaderError, AmbiguousDatasetError, ScanShapeRequired):
        assert issubclass(cls, ValueError) and issubclass(cls, ReaderError)


def test_unknown_extension_missing_file_and_folder(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    assert not can_read(p) and reader_for(p) is None
    with pytest.raises(ReaderError, match=r"notes\.txt.*no reader"):
        load(p)
    with pytest.raises(ReaderError, match=r"missing\.h5: no such file"):
        load(tmp_path / "missing.h5")
    assert not can_read(tmp_path / "missing.h5")
    d = tmp_path / "folder.h5"
    d.mkdir()
    assert not can_read(d)


def test_unknown_option_and_reader(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="scanshape"):
        load(p, scanshape=(2, 2))
    with pytest.raises(ReaderError, match="unknown reader 'tiff'"):
        load(p, reader="tiff")
    assert load(p, scan_shape=None, dataset=None, key=None).shape == (2, 2, 3, 3)


def test_forced_reader(tmp_path):
    p = tmp_path / "array.bin"  # a .npy under another name
    ref = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.save(p.with_suffix(".npy"), ref)
    p.write_bytes(p.with_suffix(".npy").read_bytes())
    assert not can_read(p)
    np.testing.assert_array_equal(np.asarray(load(p, reader="npy").data), ref)
    r = tmp_path / "frames.dat"  # EMPAD frames under another name
    r.write_bytes(np.zeros(6 * FRAME_BYTES // 4, "<f4").tobytes())
    ds = load(r, reader="empad", scan_shape=(2, 3))
    assert ds.shape == (2, 3, 128, 128) and ds.reader == "empad"


def test_list_datasets_other_formats(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((2, 2, 3, 3)))
    assert list_datasets(p) == []
    q = tmp_path / "broken.npz"
    q.write_bytes(b"PK\x03\x04 but not a zip")
    with pytest.raises(ReaderError, match="broken.npz"):
        list_datasets(q)


def test_bad_scan_shape_option(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.zeros((6, 3, 3)))
    for bad in [(0, 6), (2, 3, 1), "six", -6]:
        with pytest.raises(ReaderError, match="scan_shape"):
            load(p, scan_shape=bad)


def test_import_is_light():
    code = ("import sys, napari_4dstem_ml.io; "
            "print(sorted(m for m in ('h5py', 'dask', 'rsciio', 'torch', 'napari') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
