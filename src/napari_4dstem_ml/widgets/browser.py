"""The 4D-STEM browser: the diffraction pattern at the scan position, and a navigation image.

The main canvas shows the navigation image (total intensity or virtual bright field, in Å);
this dock shows the diffraction view (the pattern at the current scan position, calibrated in
mrad or Å⁻¹, on a log or power scale). A click or a drag on the scan moves the scan position
(the cross-hair) and the pattern follows; the scan is panned as everywhere in napari by holding
Space while dragging (or with the pan/zoom of another active layer), and the wheel zooms.
Panning never moves the cross-hair. Dragging the "scan position" marker (Points layer, select
mode) moves it too.

The scan-shape field views a stack of frames (a file without a scan shape opens as one row of
N positions) as any ``ny × nx`` that fits, in place: the data set is reshaped lazily and its
scan-plane layers with it (:meth:`Session.set_scan_shape`).
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
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .. import display
from ..dataset import pretty_unit
from .layout import settle
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
    unwrap,
)

if TYPE_CHECKING:
    import napari

NAV_KINDS = ("virtual bright field", "total intensity")
#: while dragging on the scan, the position (pattern, cross-hair) follows at most this often (ms)
BROWSE_MS = 50


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


def parse_scan_shape(text: str) -> tuple[int, int]:
    """``"4 x 8"``, ``"4×8"``, ``"4, 8"`` or ``"4 8"`` → ``(4, 8)`` (``ValueError`` otherwise)."""
    import re

    parts = [p for p in re.split(r"[x×X,;*\s]+", text.strip()) if p]
    try:
        ny, nx = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"scan shape: two whole numbers ny × nx, got {text!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"scan shape: two positive numbers, got {text!r}")
    return ny, nx


def shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]} × {shape[1]}"


class BrowserWidget(QWidget):
    """Dock widget: data set and scan shape, display controls, the diffraction view."""

    TAB_TITLE = "4D-STEM browser"
    ON_TOP = True  # the diffraction view stays in sight above the other docks

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.worker = None
        self._space = _SpaceWatcher(self)
        try:  # Space held: napari's own pan (the drag pans, the cross-hair stays)
            unwrap(napari_viewer).window._qt_viewer.canvas.native.installEventFilter(self._space)
        except AttributeError:  # no Qt window (ViewerModel tests)
            pass

        self.qt_diffraction = QtViewer(self.session.diffraction)
        self.qt_diffraction.setMinimumSize(200, 150)
        self.qt_diffraction.setSizePolicy(QSizePolicy.Policy.Expanding,
                                          QSizePolicy.Policy.Expanding)
        self.session.diffraction.canvas.overlays.scale_bar.visible = True
        # the whole detector in view: refit when the canvas is resized (e.g. when the dock is
        # first laid out) unless the user has zoomed or panned since the last fit
        self._fitted_camera = None
        self._fit_timer = QTimer(self)
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(50)
        self._fit_timer.timeout.connect(self._refit_if_untouched)
        # a drag on the scan: positions coalesced, at most one every BROWSE_MS
        self._drag_to = None
        self._drag_timer = QTimer(self)
        self._drag_timer.setSingleShot(True)
        self._drag_timer.setInterval(BROWSE_MS)
        self._drag_timer.timeout.connect(self._apply_drag)
        self._resize_watch = _ResizeWatcher(self._fit_timer.start, self)
        self.qt_diffraction.canvas.native.installEventFilter(self._resize_watch)
        # the diffraction view's own layer list (visibility) and layer controls (opacity,
        # contrast limits, colormap) for the pattern, mean pattern, detectors, learned masks;
        # in a scroll area of bounded height, so that opening it never pushes the dock off
        # the screen
        self.layer_panel = QCollapsible("diffraction layers")
        self.layer_panel.setToolTip("the diffraction view's layers: visibility, colormap, "
                                    "contrast limits, opacity")
        panel = QWidget()
        panel_layout = QVBoxLayout(panel)
        panel_layout.setContentsMargins(0, 0, 0, 0)
        panel_layout.addWidget(self.qt_diffraction.layers)
        panel_layout.addWidget(self.qt_diffraction.controls)
        self.qt_diffraction.layers.setMinimumHeight(90)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(panel)
        scroll.setMinimumHeight(120)
        scroll.setMaximumHeight(240)
        self.layer_panel.addWidget(scroll)

        self.dataset_box = QComboBox()
        self.dataset_box.setToolTip("the current 4D data set: browsing, detectors, training and "
                                    "the calibration panel follow it")
        self.shape_box = QComboBox()
        self.shape_box.setEditable(True)
        self.shape_box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.shape_box.setToolTip(
            "scan shape ny × nx: the shapes that fit the number of frames, or type one; the "
            "data set and its layers are reshaped in place (nothing is read again)")
        self.mode_box = QComboBox()
        self.mode_box.addItems(["log", "power", "linear"])
        self.mode_box.setCurrentText(self.session.display_mode)
        self.mode_box.setToolTip("display of the diffraction pattern (its 10⁶:1 dynamic range)")
        self.exponent = QDoubleSpinBox()
        self.exponent.setRange(0.01, 1.0)
        self.exponent.setSingleStep(0.05)
        self.exponent.setValue(self.session.exponent)
        self.exponent.setToolTip("exponent of the power display")
        self.exponent.setPrefix("γ ")
        self.nav_box = QComboBox()
        self.nav_box.addItems(list(NAV_KINDS))
        self.nav_box.setToolTip("navigation image shown on the scan canvas")
        self.position_label = QLabel("no 4D data set: open a file or a sample")
        self.position_label.setWordWrap(True)
        # two lines reserved: a new position never changes the dock's layout
        self.position_label.setMinimumHeight(2 * self.position_label.fontMetrics().height() + 2)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("data set", self.dataset_box)
        row = QHBoxLayout()
        row.addWidget(self.shape_box, stretch=2)
        row.addWidget(self.nav_box, stretch=3)
        form.addRow("scan", row)
        row = QHBoxLayout()
        row.addWidget(self.mode_box, stretch=2)
        row.addWidget(self.exponent, stretch=1)
        form.addRow("display", row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addWidget(self.position_label)
        layout.addWidget(self.qt_diffraction, stretch=1)
        layout.addWidget(self.layer_panel)

        self.dataset_box.currentTextChanged.connect(self._on_choose)
        self.shape_box.activated.connect(lambda _: self._on_shape())
        self.shape_box.lineEdit().editingFinished.connect(self._on_shape)
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
        s.calibration_changed.connect(self._on_calibration)
        napari_viewer.mouse_drag_callbacks.append(self._on_mouse)

        def _cleanup(
            *_,
            viewer=napari_viewer,
            cb=self._on_mouse,
            slots=(
                (s.datasets_changed, self._refresh_datasets),
                (s.dataset_changed, self._on_dataset),
                (s.position_changed, self._on_position),
                (s.calibration_changed, self._on_calibration),
            ),
        ):
            if cb in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.remove(cb)
            for sig, slot in slots:
                sig.disconnect(slot)

        self._cleanup = _cleanup
        compact_widget(self)
        on_viewer_close(napari_viewer, self.teardown)
        settle(self)
        self._refresh_datasets()
        if s.current is not None:
            self._on_dataset(s.current)

    def sizeHint(self):  # noqa: N802 (Qt API)
        from qtpy.QtCore import QSize

        return QSize(440, 420)

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
        self._refresh_shapes()

    def _refresh_shapes(self) -> None:
        """The scan shapes that fit the current data set's frames, its own shape selected."""
        from ..io.shapes import factorisations

        ds = self.session.dataset
        self.shape_box.blockSignals(True)
        self.shape_box.clear()
        if ds is not None:
            ny, nx = ds.scan_shape
            shapes = factorisations(ny * nx)
            if (ny, nx) not in shapes:
                shapes.insert(0, (ny, nx))
            self.shape_box.addItems([shape_text(p) for p in shapes])
            self.shape_box.setCurrentText(shape_text((ny, nx)))
        self.shape_box.setEnabled(ds is not None)
        self.shape_box.blockSignals(False)

    def _on_shape(self) -> None:
        ds, name = self.session.dataset, self.session.current
        if ds is None:
            return
        text = self.shape_box.currentText()
        try:
            shape = parse_scan_shape(text)
            if shape == ds.scan_shape:
                return
            self.session.set_scan_shape(name, shape)
        except ValueError as err:
            self.position_label.setText(str(err))
            self._refresh_shapes()
            return

    def set_scan_shape(self, text: str) -> None:
        """Type ``text`` (e.g. ``"3 x 4"``) into the scan-shape field, as a user would."""
        self.shape_box.setCurrentText(text)
        self._on_shape()

    def _on_choose(self, name: str) -> None:
        if name and name != self.session.current and name in self.session.datasets:
            self.session.set_current(name)

    def _on_display(self, *_) -> None:
        self.session.set_display(self.mode_box.currentText(), self.exponent.value())

    def _on_dataset(self, name: str) -> None:
        self.dataset_box.blockSignals(True)
        self.dataset_box.setCurrentText(name)
        self.dataset_box.blockSignals(False)
        self._refresh_shapes()
        self.fit_diffraction()
        self.compute_navigation()

    def _on_calibration(self, name: str) -> None:
        if name == self.session.current:
            self._on_position(*self.session.position)
            self.fit_diffraction()

    def _on_position(self, iy: int, ix: int) -> None:
        ds = self.session.dataset
        if ds is None:
            return
        dy, dx = ds.scale()[:2]
        unit = pretty_unit(ds.units()[0])
        text = (f"scan position (iy, ix) = ({iy}, {ix}); (y, x) = ({iy * dy:.3g}, {ix * dx:.3g}) "
                f"{unit}")
        if not ds.scan_shape_known:
            text += (f" — {ds.metadata.get('n_frames', ds.scan_shape[1])} frames without a "
                     "scan shape: choose one in the scan field")
        self.position_label.setText(text)

    def _in_scan(self, world) -> bool:
        ds = self.session.dataset
        step = np.array(ds.scale()[:2])
        pos = np.asarray(world, float)[-2:]
        extent = np.array(ds.scan_shape) * step
        return bool(np.all(pos >= -0.5 * step) and np.all(pos < extent - 0.5 * step))

    def browsing(self, viewer) -> bool:
        """Whether a press on the scan browses: the active layer (if any) is in pan/zoom
        mode (not editing shapes or points), Space is not held (napari's pan), no grid."""
        if self._space.held:
            return False
        grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
        if grid.enabled:
            return False
        active = viewer.layers.selection.active
        return active is None or str(getattr(active, "mode", "pan_zoom")) == "pan_zoom"

    def _on_mouse(self, viewer, event):
        """Press or drag on the scan: the scan position follows the pointer; the camera does
        not pan meanwhile (Space + drag pans, as in napari)."""
        if event.type != "mouse_press" or self.session.dataset is None:
            return
        if "Shift" in event.modifiers or "Control" in event.modifiers:
            return
        if not self.browsing(viewer) or not self._in_scan(event.position):
            return
        cam = camera(viewer)
        was = cam.mouse_pan
        cam.mouse_pan = False
        try:
            self.session.set_position_world(np.asarray(event.position, float)[-2:])
            yield
            while event.type == "mouse_move":
                # the pointer moves faster than a pattern and the canvases can be drawn with
                # software OpenGL: the latest position is applied at most every BROWSE_MS
                self._drag_to = np.asarray(event.position, float)[-2:]
                if not self._drag_timer.isActive():
                    self._drag_timer.start()
                yield
        finally:
            cam.mouse_pan = was
            self._drag_timer.stop()
            self._apply_drag()

    def _apply_drag(self) -> None:
        target, self._drag_to = self._drag_to, None
        if target is not None and self.session.dataset is not None:
            self.session.set_position_world(target)

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
            if new:  # the first image of this data set: the view fits its scan
                self.session.fit_view(name)
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


class _SpaceWatcher(QObject):
    """Tracks whether Space is held on the main canvas (napari's hold-to-pan key)."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.held = False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        from qtpy.QtCore import Qt

        kind = event.type()
        if kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and \
                event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.held = kind == QEvent.Type.KeyPress
        elif kind == QEvent.Type.FocusOut:
            self.held = False
        return False


class _ResizeWatcher(QObject):
    """Calls ``callback()`` when the watched widget is resized or shown."""

    def __init__(self, callback, parent: QObject) -> None:
        super().__init__(parent)
        self.callback = callback

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            self.callback()
        return False
