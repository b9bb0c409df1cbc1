"""GUI test of the virtual-detectors widget: shapes edits drive the virtual images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml import Calibration, Dataset4D

pytestmark = pytest.mark.gui


def _reference(data, centre, inner, outer):
    """Brute-force float64 annular virtual image (inner <= r < outer, pixel centres)."""
    ky, kx = data.shape[2:]
    y, x = np.mgrid[:ky, :kx]
    r = np.hypot(y - centre[0], x - centre[1])
    m = (r >= inner) & (r < outer)
    return data.astype(np.float64)[:, :, m].sum(-1)


def test_shape_edit_updates_virtual_image(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.detectors import (
        SHAPES_LAYER,
        DetectorsWidget,
        ellipse_corners,
        image_layer_name,
    )

    viewer = make_napari_viewer()
    widget = DetectorsWidget(viewer)
    rng = np.random.default_rng(1)
    data = rng.random((5, 4, 24, 24), dtype=np.float32)
    cal = Calibration(scan_step=(0.4, 0.4), detector_pixel=(1.0, 1.0), convergence_mrad=3.0)
    widget.session.add_dataset("tiny", Dataset4D(data, cal))
    c = (11.5, 11.5)
    assert widget.centre() == c
    widget.add_presets()
    qtbot.waitUntil(lambda: image_layer_name("HAADF", "tiny") in viewer.layers, timeout=60000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    bf = viewer.layers[image_layer_name("BF", "tiny")]
    np.testing.assert_allclose(bf.data, _reference(data, c, 0, 3.0), rtol=1e-5)
    adf = viewer.layers[image_layer_name("ADF", "tiny")]
    np.testing.assert_allclose(adf.data, _reference(data, c, 4.5, 12.0), rtol=1e-5)
    n_layers = len(viewer.layers)

    # edit the BF disk: drag it by (1, -2) px, then grow it to 5 px radius with a corner
    # handle (napari pins the opposite corner; the radius grows about the disk's centre)
    shapes = widget.session.diffraction.layers[SHAPES_LAYER]
    i = list(shapes.features["detector"]).index("BF")
    new = [np.asarray(d) for d in shapes.data]
    new[i] = ellipse_corners((12.5, 9.5), 3.0)
    shapes.data = new
    assert widget.specs["BF"].centre == (12.5, 9.5)
    new = [np.asarray(d) for d in shapes.data]
    lo = np.array([12.5 - 3.0, 9.5 - 3.0])
    hi = np.array([12.5 + 5.0, 9.5 + 5.0])
    new[i] = np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])
    shapes.data = new
    expected = _reference(data, (12.5, 9.5), 0, 5.0)
    qtbot.waitUntil(lambda: np.allclose(bf.data, expected, rtol=1e-5), timeout=60000)
    # updated in place: same layer object, no new layers
    assert viewer.layers[image_layer_name("BF", "tiny")] is bf
    assert len(viewer.layers) == n_layers
    assert bf.metadata["centre_px"] == (12.5, 9.5)
