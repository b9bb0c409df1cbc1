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


def _canvas_point(viewer, world_yx):
    """The canvas pixel (QPointF) under a world coordinate (y, x) of the main view."""
    from qtpy.QtCore import QPointF

    from napari_4dstem_ml.widgets.session import camera

    native = viewer.window._qt_viewer.canvas.native
    cam = camera(viewer)
    cy, cx = cam.center[-2:]
    y, x = world_yx
    return QPointF((x - cx) * cam.zoom + native.width() / 2,
                   (y - cy) * cam.zoom + native.height() / 2)


def _drag(viewer, qtbot, points):
    """A left-button drag through ``points`` (world y, x) with real Qt mouse events."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    native = viewer.window._qt_viewer.canvas.native
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    pts = [_canvas_point(viewer, p) for p in points]

    def send(kind, pt, button, buttons):
        QApplication.sendEvent(native, QMouseEvent(
            kind, pt, QPointF(native.mapToGlobal(pt.toPoint())), button, buttons,
            Qt.KeyboardModifier.NoModifier))

    send(QEvent.Type.MouseButtonPress, pts[0], left, left)
    for pt in pts[1:]:
        send(QEvent.Type.MouseMove, pt, none, left)
        qtbot.wait(20)  # under BROWSE_MS (50 ms): the browser still coalesces these moves
    # napari throttles mouse moves (superqt's qthrottled, 5 ms): its trailing call, the last
    # move, is delivered by a timer; a release sent before it fires (a loaded machine, the
    # whole suite under Xvfb) ended the drag one position early
    qtbot.wait(50)
    send(QEvent.Type.MouseButtonRelease, pts[-1], left, none)
    qtbot.wait(100)


def test_drag_browses_without_panning_and_space_pans(make_napari_viewer, qtbot):
    """A drag on the scan moves the cross-hair (and the pattern) with the pointer and never
    pans; with Space held (napari's pan key) the same drag pans and the cross-hair stays."""
    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtGui import QKeyEvent
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.session import PATTERN_LAYER, camera, nav_layer_name

    viewer = make_napari_viewer(show=True)
    widget = BrowserWidget(viewer)
    viewer.window.add_dock_widget(widget)
    ds = _dataset(ny=20, nx=16)
    s = widget.session
    s.add_dataset("scan", ds)
    qtbot.waitUntil(lambda: nav_layer_name("scan") in viewer.layers, timeout=10000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10000)
    viewer.layers.selection.active = viewer.layers[nav_layer_name("scan")]
    cam = camera(viewer)
    centre = tuple(cam.center)
    dy, dx = ds.scale()[:2]
    path = [(iy * dy, ix * dx) for iy, ix in ((4, 3), (6, 5), (9, 8), (12, 11))]
    _drag(viewer, qtbot, path)
    assert s.position == (12, 11)  # the last pointer position, after the coalesced updates
    np.testing.assert_array_equal(s.diffraction.layers[PATTERN_LAYER].data.shape, (16, 16))
    np.testing.assert_allclose(viewer.layers["scan position"].data, [[12, 11]])
    assert tuple(cam.center) == centre  # not panned
    assert cam.mouse_pan  # napari's panning is back after the drag
    # Space held: napari's pan; the cross-hair stays where it was
    native = viewer.window._qt_viewer.canvas.native
    space = (Qt.Key.Key_Space, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(native, QKeyEvent(QEvent.Type.KeyPress, *space))
    _drag(viewer, qtbot, [(3 * dy, 3 * dx), (8 * dy, 9 * dx)])
    QApplication.sendEvent(native, QKeyEvent(QEvent.Type.KeyRelease, *space))
    assert s.position == (12, 11)
    assert tuple(cam.center) != centre


def test_each_data_set_shows_its_own_layers_and_the_view_fits_it(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.session import camera, nav_layer_name

    viewer = make_napari_viewer(show=True)
    widget = BrowserWidget(viewer)
    s = widget.session
    small = _dataset(ny=8, nx=8)
    big = Dataset4D(np.random.default_rng(1).random((30, 20, 16, 16), dtype=np.float32),
                    Calibration(scan_step=(1.0, 1.0)))
    s.add_dataset("small", small)
    qtbot.waitUntil(lambda: nav_layer_name("small") in viewer.layers, timeout=10000)
    s.show_scan_image("small extra", np.zeros((8, 8), np.float32), dataset="small",
                      visible=False)
    s.add_dataset("big", big)
    qtbot.waitUntil(lambda: nav_layer_name("big") in viewer.layers, timeout=10000)
    s.flush_deferred()  # the visibility changes, applied one per event-loop turn
    # the first data set's layers left the canvas: the two scans never overlap
    assert not viewer.layers[nav_layer_name("small")].visible
    assert viewer.layers[nav_layer_name("big")].visible
    cam = camera(viewer)
    np.testing.assert_allclose(cam.center[-2:], (14.5, 9.5), atol=0.6)  # fitted to the big scan
    # a layer of a data set that is not current arrives hidden, shown with its group
    s.show_scan_image("small later", np.ones((8, 8), np.float32), dataset="small")
    assert not viewer.layers["small later"].visible
    s.set_current("small")
    s.flush_deferred()
    assert viewer.layers[nav_layer_name("small")].visible
    assert viewer.layers["small later"].visible
    assert not viewer.layers["small extra"].visible  # hidden before: stays hidden
    assert not viewer.layers[nav_layer_name("big")].visible
    np.testing.assert_allclose(cam.center[-2:], (3.5 * 0.4, 3.5 * 0.5), atol=0.3)
