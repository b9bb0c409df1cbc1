"""Virtual detectors: draw or pick detectors on the diffraction view, get live virtual images.

Each annular detector is drawn in the browser's diffraction view as a pair of concentric
ellipses in the "virtual detectors" Shapes layer (outer edge, and inner edge unless it is a
disk), and listed in a table whose radii can be typed (mrad). Dragging a ring moves its
detector (both edges); resizing a ring changes that radius about the detector's centre (napari
resizes a box about its opposite corner: the edit is read back as a radius and the circles are
redrawn centred). Each edit recomputes the detector's image (debounced, in a worker) into the
layer "virtual <detector>: <data set>", in place. Presets BF/ABF/ADF/HAADF come from the
convergence semi-angle (core :func:`~napari_4dstem_ml.detectors.geometry.presets`); presets the
detector cannot hold, or clipped at its edge, are reported. A custom detector is any 2D image
layer of the detector's shape, or a linear model's learned mask mapped onto the raw detector
(core :meth:`Preprocessor.raw_readout`). Switching data sets keeps the detectors' radii in mrad
and recalibrates them. The masks and images are computed by the core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..detectors import geometry
from .layout import scrolling_layout, settle
from .session import (
    PATTERN_LAYER,
    Session,
    compact_widget,
    error_reporter,
    guarded,
    on_viewer_close,
    session_for,
    set_scale,
)

if TYPE_CHECKING:
    import napari

SHAPES_LAYER = "virtual detectors"
DEBOUNCE_MS = 150
EDGE_COLOURS = {"BF": "yellow", "ABF": "orange", "ADF": "cyan", "HAADF": "magenta"}


#: the comparison role of a detector's image (see ``comparison.ROLES``)
DETECTOR_ROLES = {"ADF": "adf", "iCoM": "icom"}
#: tolerance (px) when reading an edited ellipse back
EDIT_TOL = 1e-3


def image_layer_name(detector: str, dataset: str) -> str:
    """Main-viewer layer of ``detector``'s image of ``dataset``."""
    if detector.startswith(("CoM", "iCoM")):
        return f"{detector}: {dataset}"
    return f"virtual {detector}: {dataset}"


def edited_circle(
    centre: tuple[float, float], radius: float, corners
) -> tuple[str, tuple[float, float], float]:
    """Read an edited ellipse back as ``(what, centre, radius)`` (px).

    ``what`` is "same", "moved" (the box kept its size: the new centre, the old radius),
    "resized" (the box changed size with one corner or edge pinned, as napari's resize handles
    do: the radius is the distance from the *old* centre to the edges that moved, the centre is
    kept) or "replaced" (every edge moved: the new box's own centre and radius).
    """
    (_, new_r) = ellipse_circle(corners)
    c = np.asarray(corners, float)[:, -2:]
    lo, hi = c.min(axis=0), c.max(axis=0)
    old_c = np.asarray(centre, float)
    old_lo, old_hi = old_c - radius, old_c + radius
    if np.allclose(lo, old_lo, atol=EDIT_TOL) and np.allclose(hi, old_hi, atol=EDIT_TOL):
        return "same", (float(old_c[0]), float(old_c[1])), float(radius)
    if np.allclose(hi - lo, 2 * radius, atol=EDIT_TOL):
        mid = (lo + hi) / 2
        return "moved", (float(mid[0]), float(mid[1])), float(radius)
    moved = np.abs(lo - old_lo) > EDIT_TOL, np.abs(hi - old_hi) > EDIT_TOL
    if np.all(moved[0]) and np.all(moved[1]):
        mid = (lo + hi) / 2
        return "replaced", (float(mid[0]), float(mid[1])), float(new_r)
    dists = []
    for axis in range(2):
        moved_lo = abs(lo[axis] - old_lo[axis]) > EDIT_TOL
        moved_hi = abs(hi[axis] - old_hi[axis]) > EDIT_TOL
        if moved_hi and not moved_lo:
            dists.append(hi[axis] - old_c[axis])
        elif moved_lo and not moved_hi:
            dists.append(old_c[axis] - lo[axis])
        elif moved_lo and moved_hi:
            dists.append((hi[axis] - lo[axis]) / 2)
    r = float(np.mean(dists)) if dists else float(new_r)
    return "resized", (float(old_c[0]), float(old_c[1])), max(r, 0.5)


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
    BF disk + ``fit_descan``) and the masks follow it (engine ``centres=``). ``with_com``:
    CoM y/x (descan plane removed) and iCoM, by :func:`~napari_4dstem_ml.baselines.icom_image`
    with ``scan_step`` (dy, dx) in Å.
    """
    from ..detectors import center_of_mass, engine, fit_descan

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
    if with_com:  # the same iCoM as the CLI, the demo and Compare's baseline
        from ..baselines import icom_image

        icom, comy, comx, _ = icom_image(data, centre, scan_step)
        yield ("images", ["CoM y", "CoM x"], np.stack([comy, comx]))
        yield ("images", ["iCoM"], icom[None])


def centre_job(data, step: int):
    """Worker generator: ``(cy, cx, radius)`` px of the bright-field disk in the mean pattern
    (every ``step``-th scan position), by the core's finder."""
    from ..detectors import bf_disk_radius, find_bf_centre, mean_pattern

    mean = mean_pattern(data, step=step)
    cy, cx = find_bf_centre(mean)
    return float(cy), float(cx), float(bf_disk_radius(mean, (cy, cx)))
    yield  # a generator, like every worker job  # pragma: no cover


class DetectorsWidget(QWidget):
    """Dock widget: detector presets, radii table, custom detectors, centre, live images.

    The convergence angle is the current data set's calibration (shown with its source; an
    edit here is the same edit as in the calibration panel)."""

    TAB_TITLE = "Detectors"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.specs: dict[str, DetectorSpec] = {}
        self.worker = None
        self._pending = False
        self._syncing = False
        self._dataset: str | None = None  # the data set the specs are calibrated for

        self.alpha = QDoubleSpinBox()
        self.alpha.setRange(0.1, 500)
        self.alpha.setSuffix(" mrad")
        self.alpha.setValue(21.4)
        self.alpha.setKeyboardTracking(False)  # one edit when typing is done, not per digit
        self.alpha.setToolTip("the convergence semi-angle of the current data set (its "
                              "calibration: the same value as in the Calibration dock)")
        self.alpha_note = QLabel("")
        self.alpha_note.setWordWrap(True)
        self.cy = QDoubleSpinBox()
        self.cx = QDoubleSpinBox()
        for box in (self.cy, self.cx):
            box.setRange(-1e4, 1e4)
            box.setDecimals(2)
            box.setSuffix(" px")
        self.presets_button = QPushButton("Add BF / ABF / ADF / HAADF")
        self.centre_button = QPushButton("Auto centre (BF disk)")
        self.descan = QCheckBox("descan correction (masks follow the BF disk)")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["detector", "inner", "outer"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setMaximumHeight(150)
        self.table.setToolTip("type radii in mrad (px when uncalibrated); 'inf' = detector edge")
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
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.alpha_note)
        layout.addWidget(self.centre_button)
        layout.addWidget(self.descan)
        layout.addWidget(self.presets_button)
        layout.addWidget(self.table)
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
        self.table.cellChanged.connect(self._on_cell_changed)
        self.custom_box.installEventFilter(self)  # refresh choices when opened
        self.session.dataset_changed.connect(self._on_dataset)
        self.session.calibration_changed.connect(self._on_calibration)
        self.session.models_changed.connect(self._refresh_custom_choices)
        self.session.settings.bind("detectors", "descan", self.descan)
        self.session.settings.bind("detectors", "com", self.com_box)
        self.alpha.valueChanged.connect(self._on_alpha)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        settle(self)
        if self.session.dataset is not None:
            self._on_dataset(self.session.current)

    def teardown(self) -> None:
        self._closed = True
        if self.worker is not None:
            self.worker.quit()
        self._timer.stop()
        self.session.dataset_changed.disconnect(self._on_dataset)
        self.session.calibration_changed.disconnect(self._on_calibration)
        self.session.models_changed.disconnect(self._refresh_custom_choices)

    # -- data set ----------------------------------------------------------------
    def _on_dataset(self, name: str) -> None:
        """A data set became current: its convergence angle and calibration, the detectors
        carried over in mrad (recentred on the new detector), their images recomputed."""
        ds = self.session.dataset
        old = self.session.datasets.get(self._dataset) if self._dataset else None
        if not self._show_alpha(ds.calibration, name):
            show_warning(self.alpha_note.text())
        ky, kx = ds.detector_shape
        centre = ((ky - 1) / 2, (kx - 1) / 2)
        self.cy.setValue(centre[0])
        self.cx.setValue(centre[1])
        if old is not None and old is not ds and self.specs:
            self.specs = self._recalibrated(old, ds, centre)
        self._dataset = name
        layer = self.shapes_layer()
        if layer is not None:
            set_scale(layer, self.session.detector_layer_kwargs(name)["scale"])
        if self.specs:
            self._redraw_shapes()
            self.schedule()
        self._refresh_custom_choices()

    def _show_alpha(self, cal, name: str) -> bool:
        """Show data set ``name``'s convergence angle and its source; ``False`` when unknown."""
        self._syncing_alpha = True
        try:
            if cal.convergence_mrad:
                self.alpha.setValue(cal.convergence_mrad)
                src = cal.source_of("convergence_mrad")
                self.alpha_note.setText(f"α from {src}" if src else "")
                return True
            self.alpha_note.setText(
                f"{name}: the convergence angle is not in the file; presets use "
                f"α = {self.alpha.value():.3g} mrad — type the right value above (or in the "
                "Calibration dock)")
            return False
        finally:
            self._syncing_alpha = False

    def _on_alpha(self, value: float) -> None:
        """α typed here: the current data set's calibration (source "user")."""
        name = self.session.current
        if getattr(self, "_syncing_alpha", False) or name is None:
            return
        if self.session.dataset.calibration.convergence_mrad != value:
            self.session.set_calibration(name, convergence_mrad=float(value))

    def _on_calibration(self, name: str) -> None:
        """The current data set's calibration was edited: α, the radii's mrad and the
        shapes' scale follow (the detectors keep their size in pixels)."""
        if name != self.session.current:
            return
        self._show_alpha(self.session.dataset.calibration, name)
        layer = self.shapes_layer()
        if layer is not None:
            set_scale(layer, self.session.detector_layer_kwargs(name)["scale"])
        self._fill_table()

    def _recalibrated(self, old, new, centre) -> dict[str, DetectorSpec]:
        """The detectors of data set ``old`` on data set ``new``: radii kept in mrad (or in
        proportion to the detector size when either is uncalibrated), centred on ``centre``."""
        po, pn = old.calibration.detector_pixel_mrad, new.calibration.detector_pixel_mrad
        if po is not None and pn is not None:
            factor = po[0] / pn[0]
        else:
            factor = min(new.detector_shape) / min(old.detector_shape)
        out, dropped = {}, []
        rmax = geometry.max_radius_px(new.detector_shape, centre)
        for name, spec in self.specs.items():
            det = spec.detector
            if det.kind == "custom":
                if tuple(det.custom_mask.shape) == tuple(new.detector_shape):
                    out[name] = replace(spec, centre=centre)
                else:
                    dropped.append(name)
                continue
            inner = det.inner * factor
            outer = min(det.outer * factor, rmax)
            if inner >= outer:
                dropped.append(name)
                continue
            out[name] = replace(spec, detector=replace(det, inner=inner, outer=outer), centre=centre)
        if dropped:
            msg = f"detectors not carried over to {new.detector_shape} detector: {', '.join(dropped)}"
            self.status.setText(msg)
            show_info(msg)
        return out

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
            and layer.name != PATTERN_LAYER
        ]
        # a linear model's learned mask, mapped onto this data set's raw detector
        names += [
            f"learned mask: {name}"
            for name, entry in self.session.models.items()
            if hasattr(entry.model, "detector_mask") and entry.preprocessor.is_affine()
        ]
        current = self.custom_box.currentText()
        self.custom_box.clear()
        self.custom_box.addItems(names)
        if current in names:
            self.custom_box.setCurrentText(current)

    # -- detectors ----------------------------------------------------------------
    def centre(self) -> tuple[float, float]:
        return (self.cy.value(), self.cx.value())

    def _mrad_per_px(self) -> float | None:
        ds = self.session.dataset
        px = ds.calibration.detector_pixel_mrad if ds is not None else None
        return None if px is None else float(px[0])

    def add_presets(self) -> None:
        """Add BF/ABF/ADF/HAADF for the convergence angle about the current centre; presets
        the detector cannot hold, or that are clipped at its edge, are reported."""
        ds = self.session.dataset
        if ds is None:
            show_info("open a 4D data set first")
            return
        c = self.centre()
        rmax_px = geometry.max_radius_px(ds.detector_shape, c)
        px = self._mrad_per_px()
        if px is None:  # uncalibrated: the convergence angle cannot be placed; use px
            alpha_px = min(ds.detector_shape) / 8
            show_info(f"detector not calibrated in mrad: BF radius set to {alpha_px:.1f} px")
        else:
            alpha_px = self.alpha.value() / px
        made = geometry.presets(alpha_px, rmax_px, units="pixels")
        nominal = geometry.presets(alpha_px, 1e9, units="pixels")
        for name, det in made.items():
            self.specs[name] = DetectorSpec(det, c)
        unit, f = ("mrad", px) if px is not None else ("px", 1.0)
        notes = []
        for name, det in nominal.items():
            if name not in made:
                notes.append(
                    f"{name} left out: it starts at {det.inner * f:.1f} {unit}, beyond the "
                    f"detector's edge at {rmax_px * f:.1f} {unit}"
                )
            elif det.outer < 1e8 and made[name].outer < det.outer - 1e-9:  # HAADF: to the edge
                notes.append(
                    f"{name} clipped at the detector's edge: outer {made[name].outer * f:.1f} "
                    f"{unit} instead of {det.outer * f:.1f} {unit}"
                )
        self.status.setText("; ".join(notes))
        if notes:
            show_info("; ".join(notes))
        self._redraw_shapes()
        self._select_shapes()
        self.schedule()

    def add_detector(self, det: geometry.Detector, centre: tuple[float, float] | None = None):
        """Add (or replace) one detector (radii in px) and recompute."""
        self.specs[det.name] = DetectorSpec(det, centre or self.centre())
        self._redraw_shapes()
        self.schedule()

    def custom_mask(self, text: str) -> tuple[str, np.ndarray]:
        """(detector name, raw-detector mask) for a custom-detector choice ``text``."""
        where, name = text.split(": ", 1)
        if where == "learned mask":
            entry = self.session.models[name]
            pre = entry.preprocessor.adapt(self.session.dataset)
            mask, _offset = pre.raw_readout(entry.model.detector_mask())
            return f"learned {name}", mask
        layers = self.session.diffraction.layers if where == "diffraction" else self.viewer.layers
        return f"custom {name}", np.asarray(layers[name].data)

    def _on_add_custom(self) -> None:
        text = self.custom_box.currentText()
        if not text:
            show_info("no 2D image layer with the detector's shape, and no linear model")
            return
        try:
            name, mask = self.custom_mask(text)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not make a detector from {text}: {err}")
            return
        self.add_custom(name, mask)

    def add_custom(self, name: str, mask: np.ndarray) -> None:
        """Add a custom detector with weights ``mask`` ``(ky, kx)`` on the raw detector."""
        det = geometry.Detector(name, "custom", custom_mask=np.asarray(mask))
        self.specs[det.name] = DetectorSpec(det, self.centre())
        self._redraw_shapes()
        self.schedule()

    def auto_centre(self):
        """Centre from the core's BF-disk finder on the mean pattern (in a worker); moves all
        detectors. Returns the worker."""
        ds, name = self.session.dataset, self.session.current
        if ds is None:
            return None
        worker = create_worker(
            guarded(centre_job), ds.data, max(1, min(ds.scan_shape) // 32),
            _start_thread=False,
            _connect={"errored": error_reporter("auto centre", self.status.setText)},
        )
        worker.returned.connect(lambda found, name=name: self._on_centre(name, *found))
        self.centre_button.setEnabled(False)
        worker.finished.connect(lambda: self.centre_button.setEnabled(True))
        self._centre_worker = worker
        self.status.setText("finding the bright-field disk…")
        worker.start()
        return worker

    def _on_centre(self, name: str, cy: float, cx: float, r: float) -> None:
        if getattr(self, "_closed", False) or name != self.session.current:
            return
        self.cy.setValue(cy)
        self.cx.setValue(cx)
        px = self._mrad_per_px()
        self.status.setText(
            f"BF disk at ({cy:.2f}, {cx:.2f}) px, radius {r:.2f} px"
            + (f" = {r * px:.2f} mrad" if px else "")
        )
        for key, spec in self.specs.items():
            self.specs[key] = replace(spec, centre=(cy, cx))
        self._redraw_shapes()
        self.schedule()

    # -- radii table ---------------------------------------------------------------
    def _fill_table(self) -> None:
        px = self._mrad_per_px()
        f, unit = (px, "mrad") if px is not None else (1.0, "px")
        self.table.blockSignals(True)
        try:
            self.table.setHorizontalHeaderLabels(["detector", f"inner ({unit})", f"outer ({unit})"])
            rows = [(n, s) for n, s in self.specs.items() if s.detector.kind != "custom"]
            self.table.setRowCount(len(rows))
            for i, (name, spec) in enumerate(rows):
                item = QTableWidgetItem(name)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, 0, item)
                for j, r in ((1, spec.detector.inner), (2, spec.detector.outer)):
                    text = f"{r * f:.2f}" if math.isfinite(r) else "inf"
                    self.table.setItem(i, j, QTableWidgetItem(text))
        finally:
            self.table.blockSignals(False)

    def set_radii(self, name: str, inner: float, outer: float) -> None:
        """Set detector ``name``'s radii in mrad (px when uncalibrated) about its centre."""
        spec = self.specs[name]
        px = self._mrad_per_px() or 1.0
        inner_px, outer_px = float(inner) / px, float(outer) / px
        ds = self.session.dataset
        rmax = geometry.max_radius_px(ds.detector_shape, spec.centre) if ds is not None else math.inf
        outer_px = min(outer_px, rmax)
        if not (0 <= inner_px < outer_px):
            raise ValueError(
                f"{name}: need 0 <= inner < outer (inside the detector), got {inner}, {outer}"
            )
        kind = "disk" if inner_px == 0 else "annulus"
        det = replace(spec.detector, kind=kind, inner=inner_px, outer=outer_px)
        self.specs[name] = replace(spec, detector=det)
        self._redraw_shapes()
        self.schedule()

    def _on_cell_changed(self, row: int, col: int) -> None:
        name = self.table.item(row, 0).text()
        try:
            inner = float(self.table.item(row, 1).text())
            outer = float(self.table.item(row, 2).text())
            self.set_radii(name, inner, outer)
        except (ValueError, KeyError, AttributeError) as err:
            self.status.setText(f"radii not changed: {err}")
            self._fill_table()

    # -- shapes <-> detectors -------------------------------------------------------
    def shapes_layer(self):
        layers = self.session.diffraction.layers
        return layers[SHAPES_LAYER] if SHAPES_LAYER in layers else None

    def _select_shapes(self) -> None:
        """Make the detector shapes the active layer in select mode: a drag moves or
        resizes a ring instead of panning the view."""
        layer = self.shapes_layer()
        if layer is not None:
            self.session.diffraction.layers.selection.active = layer
            layer.mode = "select"

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
        self._fill_table()

    def _on_shapes_changed(self, event=None) -> None:
        """Shapes edited (at the end of a drag): a moved ring moves its detector, a resized
        ring changes that radius about the detector's centre, a deleted outer ring removes it."""
        if self._syncing:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # adding / changing / removing: wait for the end
            return
        layer = self.shapes_layer()
        feats = layer.features
        if len(feats) != len(layer.data):
            return
        found: dict[str, dict] = {}
        for corners, name, edge in zip(layer.data, feats["detector"], feats["edge"]):
            found.setdefault(name, {})[edge] = corners
        changed = False
        for name, spec in list(self.specs.items()):
            det = spec.detector
            if det.kind == "custom":
                continue
            if name not in found or "outer" not in found[name]:
                del self.specs[name]  # shape deleted: detector removed
                changed = True
                continue
            centre, inner, outer = spec.centre, det.inner, det.outer
            shown_outer = outer if math.isfinite(outer) else 1e3
            for edge, radius in (("outer", shown_outer), ("inner", inner)):
                if edge not in found[name]:
                    if edge == "inner" and inner > 0:  # inner ring deleted: a disk
                        inner = 0.0
                        changed = True
                    continue
                what, c, r = edited_circle(spec.centre, radius, found[name][edge])
                if what in ("moved", "replaced"):
                    centre = c
                if what in ("resized", "replaced"):
                    if edge == "outer":
                        outer = r
                    else:
                        inner = r
                changed = changed or what != "same"
            inner, outer = sorted((inner, outer))
            if outer <= inner:
                continue
            kind = "disk" if inner == 0 else "annulus"
            self.specs[name] = replace(
                spec, detector=replace(det, kind=kind, inner=inner, outer=outer), centre=centre
            )
        if changed:
            # redraw the circles centred (after napari's own mouse handling has finished)
            QTimer.singleShot(0, self._redraw_shapes)
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
        if self.descan.isChecked() and not specs:
            # e.g. ticked in the last session and restored at launch, before any detector:
            # it cannot apply yet, so it is reset with a note (not an error)
            self.descan.setChecked(False)
            self.status.setText("descan correction needs a detector to follow (add BF first): "
                                "it was turned off")
        if not specs and not with_com:
            return None
        # iCoM integrates the CoM over the scan step in Å (the CLI's and Compare's baseline)
        scan_step = ds.calibration.scan_step_A or (1.0, 1.0)
        name = self.session.current
        worker = create_worker(
            guarded(detector_job),
            ds.data,
            specs,
            with_com,
            self.descan.isChecked(),
            scan_step,
            _start_thread=False,
            _connect={"errored": error_reporter("virtual images", self.status.setText)},
        )
        worker.yielded.connect(lambda item, name=name: self._on_images(item, name))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText(f"computing {len(specs)} virtual image(s) of {name}…")
        worker.start()
        return worker

    def _on_finished(self) -> None:
        self.session.after_deferred(self._done)  # once its images are shown

    def _done(self) -> None:
        self.worker = None
        if self._pending and not getattr(self, "_closed", False):
            self._pending = False
            self.recompute()

    def _on_images(self, item, dataset: str | None = None) -> None:
        what, names, images = item
        if getattr(self, "_closed", False):
            return
        dataset = dataset or self.session.current
        if dataset not in self.session.datasets:
            return
        if what == "descan":
            self.status.setText(
                f"descan fit: rms {images.rms:.2f} px, {images.n_outliers} outliers"
            )
            return
        for name, img in zip(names, images):
            spec = self.specs.get(name)
            meta = {"preview": what == "preview", "detector_name": name}
            if spec is not None:
                meta.update(detector=spec.detector.to_dict(), centre_px=spec.centre)
            layer_name = image_layer_name(name, dataset)
            # one layer per event-loop turn: a burst of new layers never stalls the GUI
            self.session.defer(("scan", layer_name), lambda layer_name=layer_name, img=img,
                               dataset=dataset, name=name, meta=meta: self.session.show_scan_image(
                layer_name, np.asarray(img), dataset=dataset, role=DETECTOR_ROLES.get(name),
                metadata=meta))
        self.status.setText(f"{len(names)} image(s) of {dataset} updated ({what})")
