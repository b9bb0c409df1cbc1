"""The 4D-STEM browser: the diffraction pattern at the scan position, and a navigation image.

The main canvas shows the navigation image (total intensity or virtual bright field, in Å);
this dock shows the diffraction view (the pattern at the current scan position, calibrated in
mrad or Å⁻¹, on a log or power scale). Clicking on the main canvas, or dragging the
"scan position" marker (Points layer, select mode), moves the scan position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.qt import QtViewer
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .. import display
from ..dataset import pretty_unit
from .session import (
    MEAN_LAYER,
    Session,
    camera,
    compact_widget,
    error_reporter,
    guarded,
    nav_layer_name,
    on_viewer_close,
    session_for,
)

if TYPE_CHECKING:
    import napari

NAV_KINDS = ("virtual bright field", "total intensity")


def navigation_job(data, kind: str = "virtual bright field", calibration=None):
    """Generator run in a worker: ``("navigation", partial image)`` per band of rows, then
    ``("mean", pattern)``.

    The navigation image is a virtual image from the core engine: a mask of ones (total
    intensity) or the bright-field disk (centre from the core's finder, radius from the
    convergence angle or the mean pattern).
    """
    from ..detectors import engine

    ky, kx = data.shape[2:]
    mean = None
    mask = np.ones((ky, kx), np.float32)
    if kind == "virtual bright field":
        mean = engine.mean_pattern(data)
        mask = bright_field_mask(mean, calibration)
    for ev in engine.iter_virtual_images(data, mask):
        if ev.rows_done:
            yield ("navigation", ev.image)
    if mean is None:
        mean = engine.mean_pattern(data)
    yield ("mean", np.asarray(mean, np.float32))


def bright_field_mask(mean: np.ndarray, calibration=None) -> np.ndarray:
    """Bright-field disk mask ``(ky, kx)`` for a mean pattern (core centre/radius/mask)."""
    from ..detectors import annular_mask, bf_disk

    centre, r = bf_disk(mean, calibration)
    return annular_mask(mean.shape, centre, 0.0, r)


class BrowserWidget(QWidget):
    """Dock widget: dataset chooser, display controls and the diffraction view."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.worker = None

        self.qt_diffraction = QtViewer(self.session.diffraction)
        self.qt_diffraction.setMinimumSize(280, 280)
        self.session.diffraction.canvas.overlays.scale_bar.visible = True
        # the whole detector in view: refit when the canvas is resized (e.g. when the dock is
        # first laid out) unless the user has zoomed or panned since the last fit
        self._fitted_camera = None
        self._fit_timer = QTimer(self)
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(50)
        self._fit_timer.timeout.connect(self._refit_if_untouched)
        self._resize_watch = _ResizeWatcher(self._fit_timer.start, self)
        self.qt_diffraction.canvas.native.installEventFilter(self._resize_watch)
        # the diffraction view's own layer list (visibility) and layer controls (opacity,
        # contrast limits, colormap) for the pattern, mean pattern, detectors, learned masks
        self.layer_panel = QCollapsible("diffraction layers (visibility, colormap, contrast)")
        self.layer_panel.addWidget(self.qt_diffraction.layers)
        self.layer_panel.addWidget(self.qt_diffraction.controls)
        self.qt_diffraction.layers.setMinimumHeight(120)

        self.dataset_box = QComboBox()
        self.mode_box = QComboBox()
        self.mode_box.addItems(["log", "power", "linear"])
        self.mode_box.setCurrentText(self.session.display_mode)
        self.exponent = QDoubleSpinBox()
        self.exponent.setRange(0.01, 1.0)
        self.exponent.setSingleStep(0.05)
        self.exponent.setValue(self.session.exponent)
        self.nav_box = QComboBox()
        self.nav_box.addItems(list(NAV_KINDS))
        self.position_label = QLabel("no 4D data set: open a file or a sample")
        self.position_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("data set", self.dataset_box)
        form.addRow("display", self.mode_box)
        form.addRow("power exponent", self.exponent)
        form.addRow("navigation", self.nav_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.position_label)
        layout.addWidget(self.qt_diffraction, stretch=1)
        layout.addWidget(self.layer_panel)

        self.dataset_box.currentTextChanged.connect(self._on_choose)
        self.mode_box.currentTextChanged.connect(self._on_display)
        self.exponent.valueChanged.connect(self._on_display)
        self.nav_box.currentTextChanged.connect(lambda _: self.compute_navigation())
        s = self.session
        s.settings.bind("browser", "display", self.mode_box)
        s.settings.bind("browser", "exponent", self.exponent)
        s.settings.bind("browser", "navigation", self.nav_box)
        s.datasets_changed.connect(self._refresh_datasets)
        s.dataset_changed.connect(self._on_dataset)
        s.position_changed.connect(self._on_position)
        napari_viewer.mouse_drag_callbacks.append(self._on_mouse)

        def _cleanup(
            *_,
            viewer=napari_viewer,
            cb=self._on_mouse,
            slots=(
                (s.datasets_changed, self._refresh_datasets),
                (s.dataset_changed, self._on_dataset),
                (s.position_changed, self._on_position),
            ),
        ):
            if cb in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.remove(cb)
            for sig, slot in slots:
                sig.disconnect(slot)

        self._cleanup = _cleanup
        compact_widget(self)
        on_viewer_close(napari_viewer, self.teardown)
        self._refresh_datasets()
        if s.current is not None:
            self._on_dataset(s.current)

    def sizeHint(self):  # noqa: N802 (Qt API)
        from qtpy.QtCore import QSize

        return QSize(460, 640)

    def teardown(self) -> None:
        """Release the diffraction canvas and the connections (the viewer is closing)."""
        self._closed = True
        self._fit_timer.stop()
        if self.worker is not None:
            self.worker.quit()
        self._cleanup()
        qt = self.__dict__.pop("qt_diffraction", None)
        if qt is not None:
            qt.close()
            qt.setParent(None)
            qt.deleteLater()

    # -- view ------------------------------------------------------------------
    def fit_diffraction(self) -> None:
        """Fit the whole detector into the diffraction view."""
        viewer = self.session.diffraction
        viewer.reset_view()
        cam = camera(viewer)
        self._fitted_camera = (tuple(cam.center), cam.zoom)

    def _refit_if_untouched(self) -> None:
        cam = camera(self.session.diffraction)
        if getattr(self, "_closed", False):
            return
        if self._fitted_camera is None or self._fitted_camera == (tuple(cam.center), cam.zoom):
            self.fit_diffraction()

    # -- slots -----------------------------------------------------------------
    def _refresh_datasets(self) -> None:
        names = list(self.session.datasets)
        self.dataset_box.blockSignals(True)
        self.dataset_box.clear()
        self.dataset_box.addItems(names)
        if self.session.current:
            self.dataset_box.setCurrentText(self.session.current)
        self.dataset_box.blockSignals(False)

    def _on_choose(self, name: str) -> None:
        if name and name != self.session.current and name in self.session.datasets:
            self.session.set_current(name)

    def _on_display(self, *_) -> None:
        self.session.set_display(self.mode_box.currentText(), self.exponent.value())

    def _on_dataset(self, name: str) -> None:
        self.dataset_box.blockSignals(True)
        self.dataset_box.setCurrentText(name)
        self.dataset_box.blockSignals(False)
        self.fit_diffraction()
        self.compute_navigation()

    def _on_position(self, iy: int, ix: int) -> None:
        ds = self.session.dataset
        if ds is None:
            return
        dy, dx = ds.scale()[:2]
        unit = pretty_unit(ds.units()[0])
        self.position_label.setText(
            f"scan position (iy, ix) = ({iy}, {ix}); (y, x) = ({iy * dy:.3g}, {ix * dx:.3g}) {unit}"
        )

    def _on_mouse(self, viewer, event):
        """Click on the main canvas: move the scan position there."""
        if event.type != "mouse_press" or self.session.dataset is None:
            return
        if "Shift" in event.modifiers or "Control" in event.modifiers:
            return
        pos = np.asarray(event.position, float)[-2:]
        ds = self.session.dataset
        extent = np.array(ds.scan_shape) * np.array(ds.scale()[:2])
        if np.all(pos >= -0.5 * np.array(ds.scale()[:2])) and np.all(pos < extent):
            self.session.set_position_world(pos)

    # -- work ------------------------------------------------------------------
    def compute_navigation(self):
        """Start the navigation-image + mean-pattern worker for the current data set."""
        ds, name = self.session.dataset, self.session.current
        if ds is None:
            return None
        if self.worker is not None:
            self.worker.quit()
        kind = self.nav_box.currentText()
        worker = create_worker(
            guarded(navigation_job),
            ds.data,
            kind,
            ds.calibration,
            _progress={"desc": f"navigation image of {name}"},
            _start_thread=False,
            _connect={
                "errored": error_reporter(
                    f"navigation image of {name}", self.position_label.setText
                )
            },
        )
        worker.yielded.connect(lambda item, name=name, kind=kind: self._on_result(name, kind, item))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        worker.start()
        return worker

    def _on_finished(self, worker) -> None:
        if self.worker is worker:
            self.worker = None

    def _on_result(self, name: str, kind: str, item) -> None:
        what, value = item
        if getattr(self, "_closed", False) or name != self.session.current:
            return
        if what == "navigation":
            new = nav_layer_name(name) not in self.viewer.layers
            layer = self.session.show_scan_image(
                nav_layer_name(name), np.array(value), dataset=name, metadata={"navigation": kind}
            )
            if new:
                self.viewer.reset_view()
        elif what == "mean":
            layer = self.session.show_detector_image(
                MEAN_LAYER,
                display.transform(value, self.session.display_mode, self.session.exponent),
                colormap="magma",
                visible=MEAN_LAYER in self.session.diffraction.layers
                and self.session.diffraction.layers[MEAN_LAYER].visible,
                scale=self.session.detector_layer_kwargs(name)["scale"],
            )
            layer.metadata["raw"] = value
            layer.metadata["dataset"] = name


class _ResizeWatcher(QObject):
    """Calls ``callback()`` when the watched widget is resized or shown."""

    def __init__(self, callback, parent: QObject) -> None:
        super().__init__(parent)
        self.callback = callback

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            self.callback()
        return False
