"""The npe2 reader through napari: lazy calibrated 4D layers, foreign files, broken files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml._reader import get_reader

pytestmark = pytest.mark.gui


def test_get_reader_rejects_foreign(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    a = tmp_path / "a.npy"
    np.save(a, np.zeros((2, 2, 4, 4), np.float32))
    assert get_reader(str(txt)) is None
    assert get_reader([str(a), str(a)]) is None
    assert callable(get_reader(str(a)))
    assert callable(get_reader([str(a)]))


def test_open_npy_gives_calibrated_lazy_layer(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 8, 8), dtype=np.float32)
    path = tmp_path / "scan.npy"
    np.save(path, data)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-4dstem-ml")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.ndim == 4 and layer.name == "scan.npy"
    assert tuple(layer.axis_labels) == ("scan_y", "scan_x", "ky", "kx")
    ds = layer.metadata["dataset4d"]
    assert ds.shape == data.shape
    np.testing.assert_array_equal(np.asarray(layer.data[2, 3]), data[2, 3])
    lo, hi = layer.contrast_limits
    assert data.min() <= lo < hi <= data.max()


def test_open_npz_with_two_candidates(make_napari_viewer, tmp_path):
    path = tmp_path / "two.npz"
    np.savez(
        path, first=np.ones((2, 3, 4, 4), np.float32), second=np.zeros((3, 2, 4, 4), np.float32)
    )
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-4dstem-ml")
    names = sorted(layer.name for layer in layers)
    assert names == ["two.npz:first", "two.npz:second"]
    shapes = {layer.name: layer.data.shape for layer in layers}
    assert shapes["two.npz:first"] == (2, 3, 4, 4)


def test_truncated_empad_raw_raises_with_file_name(make_napari_viewer, tmp_path):
    # 4 x 4 scan named in the file, but only 3 frames of 128 x 130 float32 written
    path = tmp_path / "scan_x4_y4.raw"
    path.write_bytes(np.zeros(3 * 128 * 130, "<f4").tobytes())
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="scan_x4_y4.raw"):
        viewer.open(str(path), plugin="napari-4dstem-ml")
    assert len(viewer.layers) == 0
    # napari keeps working: a good file opens afterwards
    good = tmp_path / "ok.npy"
    np.save(good, np.ones((2, 2, 4, 4), np.float32))
    assert len(viewer.open(str(good), plugin="napari-4dstem-ml")) == 1
