"""GUI tests of the reader and the 4D-STEM browser (run under pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml import Calibration, Dataset4D
from napari_4dstem_ml._reader import layer_data

pytestmark = pytest.mark.gui


def _dataset(ny=6, nx=5, k=16, seed=0) -> Dataset4D:
    rng = np.random.default_rng(seed)
    data = rng.random((ny, nx, k, k), dtype=np.float32)
    cal = Calibration(
        scan_step=(0.4, 0.5), detector_pixel=(0.8, 0.8), energy_ev=300e3, convergence_mrad=4.0
    )
    return Dataset4D(data, cal)


def _add(viewer, ds, name="synthetic"):
    data, kwargs, kind = layer_data(ds, name)
    return viewer._add_layer_from_data(data, kwargs, kind)


def test_browser_click_moves_pattern(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.session import MARKER_LAYER, MEAN_LAYER, PATTERN_LAYER

    viewer = make_napari_viewer()
    widget = BrowserWidget(viewer)
    viewer.window.add_dock_widget(widget)
    ds = _dataset()
    _add(viewer, ds)
    s = widget.session
    # the 4D layer is adopted: it leaves the main (scan-plane) viewer
    qtbot.waitUntil(lambda: s.current == "synthetic", timeout=5000)
    assert all(layer.ndim == 2 for layer in viewer.layers)
    qtbot.waitUntil(lambda: MEAN_LAYER in s.diffraction.layers, timeout=10000)
    # the default navigation image is a virtual bright field; total intensity on request
    assert widget.nav_box.currentText() == "virtual bright field"
    widget.nav_box.setCurrentText("total intensity")
    total = ds.data.sum(axis=(2, 3), dtype=np.float64)
    nav = viewer.layers["navigation: synthetic"]
    qtbot.waitUntil(lambda: np.allclose(nav.data, total, rtol=1e-5), timeout=10000)
    np.testing.assert_allclose(nav.data, total, rtol=1e-5)
    np.testing.assert_allclose(
        s.diffraction.layers[MEAN_LAYER].metadata["raw"], ds.data.mean(axis=(0, 1)), rtol=1e-5
    )
    s.set_display("linear")

    class Event:
        type = "mouse_press"
        modifiers = ()
        position = (3 * 0.4 + 0.1, 4 * 0.5 - 0.2)  # world (Å) -> scan pixel (3, 4)

    drag = widget._on_mouse(viewer, Event())  # napari's drag callback: a generator
    next(drag)
    drag.close()
    assert s.position == (3, 4)
    np.testing.assert_array_equal(s.diffraction.layers[PATTERN_LAYER].data, ds.data[3, 4])
    np.testing.assert_allclose(viewer.layers[MARKER_LAYER].data, [[3, 4]])
    # dragging the marker moves the position too
    viewer.layers[MARKER_LAYER].data = np.array([[1.2, 0.9]])
    assert s.position == (1, 1)
    np.testing.assert_array_equal(s.diffraction.layers[PATTERN_LAYER].data, ds.data[1, 1])
    # log display shows the log-scaled pattern of the same position
    s.set_display("log")
    np.testing.assert_allclose(
        s.diffraction.layers[PATTERN_LAYER].data, np.log10(1 + ds.data[1, 1]), rtol=1e-6
    )
