"""The calibration panel: every calibration of the current data set, with where it came from.

One place shows and edits the beam energy, the convergence semi-angle α, the detector's angle
per pixel, the scan step, the scan rotation and the camera length of the session's current
data set, each beside its source (the header field it was read from, "user", or how it was
derived: :attr:`Calibration.sources`). An edit is recorded with
``calibration.with_(source="user", …)`` in the session's data set
(:meth:`Session.set_calibration`), which is the one truth: browsing, the detectors, training,
prediction and Compare all read it. *Revert to file* restores what the file said.

:class:`CalibrationForm` is the form itself; the Live dock uses one for an acquisition that
is not a session data set.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..dataset import USER, Calibration
from .layout import scrolling_layout, settle
from .session import Session, compact_widget, on_viewer_close, session_for

if TYPE_CHECKING:
    import napari

#: the rows of the form: field, label, unit choices (display → Calibration unit token), pair
ROWS = (
    ("energy_ev", "beam energy", {"keV": None}, False),
    ("convergence_mrad", "convergence α", {"mrad": None}, False),
    ("detector_pixel", "detector pixel", {"mrad": "mrad", "Å⁻¹": "A^-1"}, True),
    ("scan_step", "scan step", {"Å": "A", "nm": "nm"}, True),
    ("scan_rotation_deg", "scan rotation", {"°": None}, False),
    ("camera_length_m", "camera length", {"m": None}, False),
)
UNIT_FIELD = {"detector_pixel": "detector_units", "scan_step": "scan_units"}
UNKNOWN = "unknown"


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def field_text(cal: Calibration, name: str) -> str:
    """The value of calibration ``name`` as typed in the form ("" when unknown)."""
    v = getattr(cal, name)
    if v is None:
        return ""
    if name == "energy_ev":
        return _fmt(v / 1e3)
    if isinstance(v, tuple):
        return _fmt(v[0]) if math.isclose(v[0], v[1], rel_tol=1e-9) else \
            f"{_fmt(v[0])}, {_fmt(v[1])}"
    return _fmt(v)


def parse_field(name: str, text: str, unit: str | None = None) -> dict:
    """The :class:`Calibration` changes of typing ``text`` into field ``name`` (with unit token
    ``unit`` for the detector pixel and scan step); ``ValueError`` naming the field."""
    label = dict((r[0], r[1]) for r in ROWS)[name]
    text = text.strip()
    if not text or text.lower() == UNKNOWN:
        changes = {name: None}
    else:
        try:
            values = [float(t) for t in text.replace(";", ",").replace("x", ",").split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"{label}: a number, got {text!r}") from None
        if not values or len(values) > (2 if name in UNIT_FIELD else 1):
            what = "one number or two (y, x)" if name in UNIT_FIELD else "one number"
            raise ValueError(f"{label}: {what}, got {text!r}")
        if name != "scan_rotation_deg" and not all(v > 0 and math.isfinite(v) for v in values):
            raise ValueError(f"{label}: must be positive, got {text!r}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{label}: a finite number, got {text!r}")
        if name in UNIT_FIELD:
            changes = {name: (values[0], values[-1])}
        elif name == "energy_ev":
            changes = {name: values[0] * 1e3}
        else:
            changes = {name: values[0]}
    if name in UNIT_FIELD and unit is not None and changes[name] is not None:
        changes[UNIT_FIELD[name]] = unit
    return changes


def source_text(cal: Calibration, name: str) -> str:
    """Where calibration ``name`` came from, for the form ("" when unknown)."""
    if getattr(cal, name) is None:
        return "unknown: not in the file — type it" if name in ("energy_ev", "convergence_mrad",
                                                  "detector_pixel", "scan_step") else ""
    src = cal.source_of(name) or "source not recorded"
    if name == "detector_pixel" and cal.detector_units == "A^-1" and cal.detector_pixel_mrad:
        src += f" (= {_fmt(cal.detector_pixel_mrad[0])} mrad at this energy)"
    return src


class CalibrationForm(QWidget):
    """A form of the calibrations with their sources. ``edited`` carries the changes the
    user typed (a dict for :meth:`Calibration.with_`); the owner applies them and calls
    :meth:`show_calibration` with the result."""

    edited = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.calibration: Calibration | None = None
        self.edits: dict[str, QLineEdit] = {}
        self.units: dict[str, QComboBox] = {}
        self.sources: dict[str, QLabel] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(2)
        grid.setColumnStretch(1, 1)
        for i, (name, label, units, pair) in enumerate(ROWS):
            edit = QLineEdit()
            edit.setPlaceholderText(UNKNOWN)
            edit.setToolTip(f"{label}: {'one value, or y, x' if pair else 'a value'}; empty = "
                            "unknown")
            edit.editingFinished.connect(lambda name=name: self._on_edit(name))
            self.edits[name] = edit
            if len(units) > 1:
                unit = QComboBox()
                unit.addItems(list(units))
                unit.activated.connect(lambda _, name=name: self._on_edit(name))
                self.units[name] = unit
            else:
                unit = QLabel(next(iter(units)))
            src = QLabel("")
            src.setStyleSheet("color: #9aa0a6; font-size: 8pt;")
            src.setWordWrap(True)
            src.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.sources[name] = src
            # one line for the value, a smaller one beneath it for where it came from
            grid.addWidget(QLabel(label), 2 * i, 0)
            grid.addWidget(edit, 2 * i, 1)
            grid.addWidget(unit, 2 * i, 2)
            grid.addWidget(src, 2 * i + 1, 1, 1, 2)
        self.setEnabled(False)

    def unit_token(self, name: str) -> str | None:
        box = self.units.get(name)
        if box is None:
            return None
        return dict((r[0], r[2]) for r in ROWS)[name][box.currentText()]

    def show_calibration(self, cal: Calibration | None) -> None:
        """Fill the form from ``cal`` (``None``: empty and disabled)."""
        self.calibration = cal
        self.setEnabled(cal is not None)
        for name, edit in self.edits.items():
            edit.setText("" if cal is None else field_text(cal, name))
            self.sources[name].setText("" if cal is None else source_text(cal, name))
            self.sources[name].setToolTip(self.sources[name].text())
            box = self.units.get(name)
            if box is not None and cal is not None:
                token = getattr(cal, UNIT_FIELD[name])
                shown = {v: k for k, v in dict((r[0], r[2]) for r in ROWS)[name].items()}
                box.blockSignals(True)
                box.setCurrentText(shown.get(token, box.currentText()))
                box.blockSignals(False)

    def _on_edit(self, name: str) -> None:
        if self.calibration is None:
            return
        edit = self.edits[name]
        if edit.text().strip() == field_text(self.calibration, name) and (
                name not in UNIT_FIELD
                or self.unit_token(name) == getattr(self.calibration, UNIT_FIELD[name])):
            return
        try:
            changes = parse_field(name, edit.text(), self.unit_token(name))
            self.calibration.with_(source=USER, **changes)  # validates
        except ValueError as err:
            self.sources[name].setText(str(err))
            return
        self.edited.emit(changes)

    def set_field(self, name: str, text: str, unit: str | None = None) -> None:
        """Type ``text`` into field ``name`` (unit shown as ``unit``), as a user would."""
        if unit is not None and name in self.units:
            self.units[name].setCurrentText(unit)
        self.edits[name].setText(text)
        self._on_edit(name)


class CalibrationWidget(QWidget):
    """Dock widget: the current data set's calibrations with their sources, editable."""

    TAB_TITLE = "Calibration"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.title = QLabel("no 4D data set: open a file or a sample")
        self.title.setWordWrap(True)
        self.form = CalibrationForm()
        self.form.edited.connect(self._on_edited)
        self.revert_button = QPushButton("Revert to file")
        self.revert_button.setToolTip("the calibrations as the file states them (your edits "
                                      "are dropped)")
        self.revert_button.clicked.connect(self.revert)
        self.measure_button = QPushButton("Measure α")
        self.measure_button.setToolTip(
            "measure the bright-field disk in the mean pattern: its radius × the detector's "
            "mrad per pixel is the convergence semi-angle α (offered, not set)")
        self.measure_button.clicked.connect(self.measure_alpha)
        self.use_button = QPushButton("Use it")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_measured)
        self.measured = QLabel("")
        self.measured.setWordWrap(True)
        self._offer: tuple[str, float, str] | None = None
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = scrolling_layout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.form)
        row = QHBoxLayout()
        row.addWidget(self.measure_button)
        row.addWidget(self.use_button)
        row.addStretch(1)
        row.addWidget(self.revert_button)
        layout.addLayout(row)
        layout.addWidget(self.measured)
        layout.addWidget(self.status)
        layout.addStretch(1)
        s = self.session
        s.dataset_changed.connect(self._on_dataset)
        s.calibration_changed.connect(self._on_calibration)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        settle(self)
        self._on_dataset(s.current)

    def teardown(self) -> None:
        self.session.dataset_changed.disconnect(self._on_dataset)
        self.session.calibration_changed.disconnect(self._on_calibration)

    def _on_dataset(self, name: str | None) -> None:
        ds = self.session.datasets.get(name) if name else None
        if ds is None:
            self.form.show_calibration(None)
            self.revert_button.setEnabled(False)
            return
        ny, nx, ky, kx = ds.shape
        where = ds.source.name if ds.source is not None else "in memory"
        self.title.setText(f"<b>{name}</b><br>{ny} × {nx} scan, {ky} × {kx} detector, "
                           f"{ds.dtype} ({ds.reader}: {where})")
        self.form.show_calibration(ds.calibration)
        self.revert_button.setEnabled(name in self.session.file_calibrations)
        missing = [label for field, label, _, _ in ROWS[:4] if getattr(ds.calibration, field) is None]
        notes = "; ".join(ds.notes)
        self.status.setText(
            (f"unknown: {', '.join(missing)} — a model or preset that needs one says so; type "
             "it above. " if missing else "") + (f"File notes: {notes}" if notes else ""))

    def _on_calibration(self, name: str) -> None:
        if name == self.session.current:
            self._on_dataset(name)

    def measure_alpha(self) -> float | None:
        """Offer α from the bright-field disk of the current data set's mean pattern (the
        browser's; core :func:`~napari_4dstem_ml.detectors.centre.measure_bf_disk`): shown
        with *Use it*, never set unasked. Returns the α offered (mrad) or ``None``."""
        from ..detectors.centre import measure_bf_disk
        from .session import MEAN_LAYER

        name, ds = self.session.current, self.session.dataset
        self._offer = None
        self.use_button.setEnabled(False)
        layers = self.session.diffraction.layers
        mean = (layers[MEAN_LAYER].metadata.get("raw") if MEAN_LAYER in layers
                and layers[MEAN_LAYER].metadata.get("dataset") == name else None)
        if ds is None or mean is None:
            self.measured.setText("the mean pattern is not ready yet (the browser computes it "
                                  "when a data set opens): try again in a moment")
            return None
        disk = measure_bf_disk(mean, ds.calibration)
        px = ds.calibration.detector_pixel_mrad
        if disk.convergence_mrad is None or px is None:
            self.measured.setText(f"bright-field disk radius {disk.radius_px:.2f} px; α needs "
                                  "the detector pixel in mrad (type it above)")
            return None
        how = (f"measured: bright-field disk radius {disk.radius_px:.2f} px × "
               f"{px[0]:.4g} mrad/px")
        self._offer = (name, float(disk.convergence_mrad), how)
        self.measured.setText(f"bright-field disk radius {disk.radius_px:.2f} px → "
                              f"α = {disk.convergence_mrad:.3g} mrad")
        self.use_button.setEnabled(True)
        return float(disk.convergence_mrad)

    def use_measured(self) -> None:
        """The offered α becomes the data set's convergence angle (its source says how)."""
        if self._offer is None or self._offer[0] not in self.session.datasets:
            return
        name, alpha, how = self._offer
        self.session.set_calibration(name, source=how, convergence_mrad=alpha)
        self._offer = None
        self.use_button.setEnabled(False)

    def _on_edited(self, changes: dict) -> None:
        name = self.session.current
        if name is None:
            return
        try:
            self.session.set_calibration(name, **changes)
        except ValueError as err:
            self.status.setText(str(err))

    def revert(self) -> None:
        """The current data set's calibration as its file stated it."""
        name = self.session.current
        if name in self.session.file_calibrations:
            self.session.revert_calibration(name)
