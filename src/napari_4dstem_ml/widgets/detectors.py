"""Virtual detectors: draw or pick detectors on the diffraction view, get live virtual images.

Each annular detector is drawn in the browser's diffraction view as a pair of concentric
ellipses in the "virtual detectors" Shapes layer (outer edge, and inner edge unless it is a
disk); moving or resizing them recomputes that detector's image (debounced, in a worker) in
the main viewer, in place. Presets BF/ABF/ADF/HAADF come from the convergence semi-angle
(core :func:`~napari_4dstem_ml.detectors.geometry.presets`); a custom detector is any 2D image
layer of the detector's shape. The masks and images are computed by the core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..detectors import geometry
from .session import Session, compact_widget, error_reporter, guarded, on_viewer_close, session_for

if TYPE_CHECKING:
    import napari

SHAPES_LAYER = "virtual detectors"
DEBOUNCE_MS = 150
EDGE_COLOURS = {"BF": "yellow", "ABF": "orange", "ADF": "cyan", "HAADF": "magenta"}


def image_layer_name(detector: str) -> str:
    return f"virtual {detector}"


@dataclass
class DetectorSpec:
    """A detector as drawn: core :class:`Detector` (radii in px) plus its centre (px)."""

    detector: geometry.Detector
    centre: tuple[float, float]
    extra: dict = field(default_factory=dict)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        return self.detector.to_mask(shape, self.centre)


def ellipse_corners(centre: tuple[float, float], radius: float) -> np.ndarray:
    """The 4 bounding-box corners napari uses for an ellipse (data coordinates, px)."""
    cy, cx = centre
    r = float(radius)
    return np.array([[cy - r, cx - r], [cy - r, cx + r], [cy + r, cx + r], [cy + r, cx - r]])


def ellipse_circle(corners) -> tuple[tuple[float, float], float]:
    """(centre, radius) of the circle best matching an ellipse's bounding box (px)."""
    c = np.asarray(corners, float)[:, -2:]
    lo, hi = c.min(axis=0), c.max(axis=0)
    centre = (lo + hi) / 2
    return (float(centre[0]), float(centre[1])), float(np.mean(hi - lo) / 2)


def detector_job(
    data,
    specs: list[DetectorSpec],
    with_com: bool = False,
    descan: bool = False,
    scan_step=(1.0, 1.0),
):
    """Worker generator: yields ``(what, names, images)`` computed by the core engine.

    For scans over 256×256 positions the engine's strided preview is yielded first. With
    ``descan`` the BF-disk centre is tracked across the scan (core ``center_of_mass`` of the
    BF disk + ``fit_descan``) and the masks follow it (engine ``centres=``).
    """
    from ..detectors import center_of_mass, engine, fit_descan, integrate_com

    shape = tuple(data.shape[2:])
    names = [s.detector.name for s in specs]
    centre = specs[0].centre if specs else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    kwargs = {}
    if descan:
        bf = [s for s in specs if s.detector.name == "BF"] or specs[:1]
        if not bf:
            raise ValueError("descan correction needs a detector (e.g. BF) to track")
        cy, cx = center_of_mass(data, mask=bf[0].mask(shape), centre=(0.0, 0.0))
        fit = fit_descan(cy, cx)
        kwargs = {"centres": fit, "reference_centre": centre}
        yield ("descan", [], fit)
    if specs:
        masks = np.stack([s.mask(shape) for s in specs])
        if data.shape[0] * data.shape[1] > 256 * 256:
            yield ("preview", names, engine.preview_virtual_images(data, masks, **kwargs))
        yield ("images", names, engine.virtual_images(data, masks, **kwargs))
    if with_com:
        comy, comx = center_of_mass(data, centre=centre, **kwargs)
        yield ("images", ["CoM y", "CoM x"], np.stack([comy, comx]))
        yield ("images", ["iCoM"], integrate_com(comy, comx, step=scan_step)[None])


class DetectorsWidget(QWidget):
    """Dock widget: detector presets, custom detectors, centre, live virtual images."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.specs: dict[str, DetectorSpec] = {}
        self.worker = None
        self._pending = False
        self._syncing = False

        self.alpha = QDoubleSpinBox()
        self.alpha.setRange(0.1, 500)
        self.alpha.setSuffix(" mrad")
        self.alpha.setValue(21.4)
        self.cy = QDoubleSpinBox()
        self.cx = QDoubleSpinBox()
        for box in (self.cy, self.cx):
            box.setRange(-1e4, 1e4)
            box.setDecimals(2)
            box.setSuffix(" px")
        self.presets_button = QPushButton("Add BF / ABF / ADF / HAADF")
        self.centre_button = QPushButton("Auto centre (BF disk)")
        self.descan = QCheckBox("descan correction (masks follow the BF disk)")
        self.custom_box = QComboBox()
        self.custom_button = QPushButton("Add custom")
        self.com_box = QCheckBox("centre of mass (CoM x/y, iCoM)")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("convergence α", self.alpha)
        centre_row = QHBoxLayout()
        centre_row.addWidget(self.cy)
        centre_row.addWidget(self.cx)
        form.addRow("centre (y, x)", centre_row)
        custom_row = QHBoxLayout()
        custom_row.addWidget(self.custom_box, stretch=1)
        custom_row.addWidget(self.custom_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.centre_button)
        layout.addWidget(self.descan)
        layout.addWidget(self.presets_button)
        layout.addLayout(custom_row)
        layout.addWidget(self.com_box)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.recompute)

        self.presets_button.clicked.connect(self.add_presets)
        self.centre_button.clicked.connect(self.auto_centre)
        self.custom_button.clicked.connect(self._on_add_custom)
        self.com_box.toggled.connect(lambda _: self.schedule())
        self.descan.toggled.connect(lambda _: self.schedule())
        self.custom_box.installEventFilter(self)  # refresh choices when opened
        self.session.dataset_changed.connect(self._on_dataset)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        if self.session.dataset is not None:
            self._on_dataset(self.session.current)

    def teardown(self) -> None:
        self._closed = True
        if self.worker is not None:
            self.worker.quit()
        self._timer.stop()
        self.session.dataset_changed.disconnect(self._on_dataset)

    # -- data set ----------------------------------------------------------------
    def _on_dataset(self, name: str) -> None:
        ds = self.session.dataset
        cal = ds.calibration
        if cal.convergence_mrad:
            self.alpha.setValue(cal.convergence_mrad)
        ky, kx = ds.detector_shape
        self.cy.setValue((ky - 1) / 2)
        self.cx.setValue((kx - 1) / 2)
        if self.specs:
            self._redraw_shapes()
            self.schedule()
        self._refresh_custom_choices()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        from qtpy.QtCore import QEvent

        if obj is self.custom_box and event.type() == QEvent.Type.MouseButtonPress:
            self._refresh_custom_choices()
        return False

    def _refresh_custom_choices(self) -> None:
        ds = self.session.dataset
        if ds is None:
            return
        names = [
            f"{where}: {layer.name}"
            for where, layers in (
                ("diffraction", self.session.diffraction.layers),
                ("main", self.viewer.layers),
            )
            for layer in layers
            if layer.__class__.__name__ == "Image"
            and tuple(layer.data.shape) == ds.detector_shape
            and layer.name != "diffraction pattern"
        ]
        current = self.custom_box.currentText()
        self.custom_box.clear()
        self.custom_box.addItems(names)
        if current in names:
            self.custom_box.setCurrentText(current)

    # -- detectors ----------------------------------------------------------------
    def centre(self) -> tuple[float, float]:
        return (self.cy.value(), self.cx.value())

    def add_presets(self) -> None:
        """Add BF/ABF/ADF/HAADF for the convergence angle about the current centre."""
        ds = self.session.dataset
        if ds is None:
            show_info("open a 4D data set first")
            return
        c = self.centre()
        rmax_px = geometry.max_radius_px(ds.detector_shape, c)
        px = ds.calibration.detector_pixel_mrad
        if px is None:  # uncalibrated: the convergence angle cannot be placed; use px
            alpha_px = min(ds.detector_shape) / 8
            show_info(f"detector not calibrated in mrad: BF radius set to {alpha_px:.1f} px")
        else:
            alpha_px = self.alpha.value() / px[0]
        for name, det in geometry.presets(alpha_px, rmax_px, units="pixels").items():
            self.specs[name] = DetectorSpec(det, c)
        self._redraw_shapes()
        self.schedule()

    def add_detector(self, det: geometry.Detector, centre: tuple[float, float] | None = None):
        """Add (or replace) one detector (radii in px) and recompute."""
        self.specs[det.name] = DetectorSpec(det, centre or self.centre())
        self._redraw_shapes()
        self.schedule()

    def _on_add_custom(self) -> None:
        text = self.custom_box.currentText()
        if not text:
            show_info("no 2D image layer with the detector's shape")
            return
        where, name = text.split(": ", 1)
        layers = self.session.diffraction.layers if where == "diffraction" else self.viewer.layers
        det = geometry.Detector(
            f"custom {name}", "custom", custom_mask=np.asarray(layers[name].data)
        )
        self.specs[det.name] = DetectorSpec(det, self.centre())
        self._redraw_shapes()
        self.schedule()

    def auto_centre(self) -> None:
        """Centre from the core's BF-disk finder on the mean pattern; moves all detectors."""
        from ..detectors import bf_disk_radius, find_bf_centre, mean_pattern

        ds = self.session.dataset
        if ds is None:
            return
        try:
            mean = mean_pattern(ds.data, step=max(1, min(ds.scan_shape) // 32))
            cy, cx = find_bf_centre(mean)
            r = bf_disk_radius(mean, (cy, cx))
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"auto centre failed: {err}")
            return
        self.cy.setValue(cy)
        self.cx.setValue(cx)
        px = ds.calibration.detector_pixel_mrad
        self.status.setText(
            f"BF disk at ({cy:.2f}, {cx:.2f}) px, radius {r:.2f} px"
            + (f" = {r * px[0]:.2f} mrad" if px else "")
        )
        for name, spec in self.specs.items():
            self.specs[name] = replace(spec, centre=(cy, cx))
        self._redraw_shapes()
        self.schedule()

    # -- shapes <-> detectors -------------------------------------------------------
    def shapes_layer(self):
        layers = self.session.diffraction.layers
        return layers[SHAPES_LAYER] if SHAPES_LAYER in layers else None

    def _redraw_shapes(self) -> None:
        data, names, edges, colours = [], [], [], []
        for name, spec in self.specs.items():
            det = spec.detector
            if det.kind == "custom":
                continue
            outer = det.outer if math.isfinite(det.outer) else 1e3
            for edge, r in (("outer", outer), ("inner", det.inner)):
                if edge == "inner" and r <= 0:
                    continue
                data.append(ellipse_corners(spec.centre, r))
                names.append(name)
                edges.append(edge)
                colours.append(EDGE_COLOURS.get(name, "white"))
        layer = self.shapes_layer()
        features = {"detector": names, "edge": edges}
        self._syncing = True
        try:
            if layer is None:
                layer = self.session.diffraction.add_shapes(
                    data or None,
                    shape_type="ellipse",
                    name=SHAPES_LAYER,
                    features=features,
                    edge_color=colours or "white",
                    face_color="transparent",
                    edge_width=0.6,
                    **self.session.detector_layer_kwargs(),
                )
                layer.events.data.connect(self._on_shapes_changed)
            else:
                layer.data = []
                if data:
                    layer.add_ellipses(data, edge_color=colours, face_color="transparent")
                layer.features = features
        finally:
            self._syncing = False

    def _on_shapes_changed(self, event=None) -> None:
        """Shapes edited: read each detector's centre and radii back from its ellipses."""
        if self._syncing:
            return
        layer = self.shapes_layer()
        feats = layer.features
        if len(feats) != len(layer.data):
            return
        found: dict[str, dict] = {}
        for corners, name, edge in zip(layer.data, feats["detector"], feats["edge"]):
            found.setdefault(name, {})[edge] = ellipse_circle(corners)
        for name, spec in list(self.specs.items()):
            det = spec.detector
            if det.kind == "custom":
                continue
            if name not in found or "outer" not in found[name]:
                del self.specs[name]  # shape deleted: detector removed
                continue
            centre, outer = found[name]["outer"]
            inner = found[name].get("inner", (centre, 0.0))[1]
            inner, outer = sorted((inner, outer))
            if outer <= inner:
                continue
            kind = "disk" if inner == 0 else "annulus"
            self.specs[name] = replace(
                spec, detector=replace(det, kind=kind, inner=inner, outer=outer), centre=centre
            )
        self.schedule()

    # -- computation ----------------------------------------------------------------
    def schedule(self) -> None:
        """Recompute after a short quiet period (edits while dragging are coalesced)."""
        self._timer.start()

    def recompute(self):
        """Start the worker computing all detectors' images (and CoM if asked)."""
        ds = self.session.dataset
        if ds is None:
            return None
        if self.worker is not None:  # one at a time: rerun when the current one ends
            self._pending = True
            return self.worker
        specs = list(self.specs.values())
        with_com = self.com_box.isChecked()
        if not specs and not with_com:
            return None
        scan_step = ds.calibration.scan_step or (1.0, 1.0)
        worker = create_worker(
            guarded(detector_job),
            ds.data,
            specs,
            with_com,
            self.descan.isChecked(),
            scan_step,
            _progress={"desc": "virtual images"},
            _start_thread=False,
            _connect={"errored": error_reporter("virtual images", self.status.setText)},
        )
        worker.yielded.connect(self._on_images)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.recompute()

    def _on_images(self, item) -> None:
        what, names, images = item
        if getattr(self, "_closed", False):
            return
        if what == "descan":
            self.status.setText(
                f"descan fit: rms {images.rms:.2f} px, {images.n_outliers} outliers"
            )
            return
        for name, img in zip(names, images):
            layer_name = name if name.startswith(("CoM", "iCoM")) else image_layer_name(name)
            layer = self.session.show_scan_image(layer_name, np.asarray(img))
            layer.metadata["preview"] = what == "preview"
            spec = self.specs.get(name)
            if spec is not None:
                layer.metadata["detector"] = spec.detector.to_dict()
                layer.metadata["centre_px"] = spec.centre
        self.status.setText(f"{len(names)} image(s) updated ({what})")
