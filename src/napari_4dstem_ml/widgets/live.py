"""Live: reconstruct an acquisition while the detector writes it.

Pick the growing EMPAD ``.raw`` (its XML is read first) or a Merlin detector's data stream
(``merlin://host:port``, received with LiberTEM-live), optionally a virtual annular detector
(radii in detector pixels; centre from the first row's bright-field disk) and a model (one of
the session's models, or a ``.pt`` checkpoint). The acquisition's calibrations are shown in a
calibration form with their sources — read from the EMPAD XML as soon as it exists — and
whatever the header does not state (an EMPAD XML has no detector angle per pixel or
convergence angle) is typed there, or copied from the current data set; a model runs on any
acquisition whose calibrations are known or given (Start says which one is missing).

Start follows the file in a worker thread (:func:`napari_4dstem_ml.live.iter_live`); the
navigation image, the virtual image and the model's reconstruction grow row by row as image
layers updated in place on the GUI thread (at most every ``REFRESH_S`` seconds, so that a fast
detector cannot flood the event loop). Stop ends following at once; a stall longer than the
timeout ends it with a message.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..dataset import USER, Calibration, Dataset4D
from ..predict.events import Message
from .calibration import ROWS, CalibrationForm
from .dialogs import open_file
from .layout import scrolling_layout, settle
from .session import (
    compact_widget,
    error_reporter,
    guarded,
    on_viewer_close,
    session_for,
    warm_up_torch,
)

if TYPE_CHECKING:
    import napari

#: shortest interval between two layer updates (s)
REFRESH_S = 0.1
NO_MODEL = "(no model)"
MODEL_FILE = "checkpoint file…"


def live_name(image: str, source: str) -> str:
    return f"live {image}: {source}"


def header_calibration(path: str) -> tuple[Calibration, str]:
    """The calibration an acquisition's header states now (an EMPAD XML beside the ``.raw``),
    and what was read ("" when nothing is there yet, e.g. a Merlin stream)."""
    from ..io.empad import calibration_from_xml, find_xml, parse_xml

    p = Path(path)
    if path.lower().startswith("merlin://") or not p.parent.is_dir():
        return Calibration(), ""
    xml = find_xml(p)
    if xml is None:
        return Calibration(), ""
    info = parse_xml(xml)
    shapes = [s for _, s in info.scan_shapes]
    if not shapes:
        return Calibration(), ""
    return calibration_from_xml(info, shapes[0]), xml.name


def missing_calibration(preprocessor, calibration: Calibration,
                        detector_shape: tuple[int, int] = (128, 128)):
    """The core's :class:`MissingCalibrationError` if a model with ``preprocessor`` cannot run
    on data of ``calibration`` (the check :meth:`Preprocessor.adapt` makes), else ``None``."""
    from ..preprocess import MissingCalibrationError

    probe = Dataset4D(np.zeros((1, 1, *detector_shape), np.float32), calibration, reader="check")
    try:
        preprocessor.adapt(probe)
    except MissingCalibrationError as err:
        return err
    except Exception:  # noqa: BLE001 - only the calibrations are checked here
        return None
    return None


def live_job(path: str, inner: float | None, outer: float | None, model,
             timeout_s: float, cancel: threading.Event, edits: dict | None = None):
    """Worker generator: follow ``path`` and yield :class:`~napari_4dstem_ml.live.LiveEvent`s.

    ``model``: ``None``, a checkpoint path, or ``(model, preprocessor)``; ``edits``: the
    calibrations given by the user (``Calibration.with_`` changes) over the header's. Yields
    the scan layer settings (a dict) first."""
    from ..detectors.centre import find_bf_centre
    from ..detectors.geometry import annular_mask
    from ..live import LivePipeline, iter_live, open_source

    if isinstance(model, (str, Path)):
        from ..training.checkpoint import load_checkpoint

        loaded = load_checkpoint(model)
        model = (loaded.model, loaded.preprocessor, loaded.info)
    source = open_source(path, timeout_s=timeout_s, cancel=cancel)
    calibration = source.calibration.with_(source=USER, **edits) if edits else source.calibration
    det = source.detector_shape
    if model is not None:
        err = missing_calibration(model[1], calibration, det)
        if err is not None:
            raise ValueError(f"{Path(str(path)).name}: {err} (in the Live dock's calibration)")
    detectors = {}
    if inner is not None and outer is not None:
        detectors["adf"] = lambda mean: annular_mask(det, find_bf_centre(mean), inner, outer)
    pipe = LivePipeline(source.scan_shape, det, detectors=detectors,
                        model=model[0] if model else None,
                        preprocessor=model[1] if model else None,
                        calibration=calibration,
                        info=model[2] if model is not None and len(model) > 2 else None)
    pipe.warm_up()
    step = calibration.scan_step_A
    yield {"scale": step or (1.0, 1.0), "units": ("angstrom",) * 2 if step else ("pixel",) * 2}
    said: set[str] = set()
    for ev in iter_live(source, pipe):
        for text in pipe.messages:  # the domain check on the first rows, said once
            if text not in said:
                said.add(text)
                yield Message(text)
        yield ev


class LiveWidget(QWidget):
    """Dock widget: growing file, its calibration, detector, model; Start/Stop; rate and
    latency readout."""

    TAB_TITLE = "Live"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        warm_up_torch()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.cancel: threading.Event | None = None
        self._next_draw = 0.0
        self._pending = None
        self.header = Calibration()
        self.edits: dict = {}  # the calibrations typed here (over the header's)
        self.path = QLineEdit()
        self.path.setPlaceholderText("EMPAD .raw being written, or merlin://host:port")
        self.path.editingFinished.connect(self.read_header)
        browse = QPushButton("…")
        browse.setToolTip("choose the EMPAD .raw file being acquired")
        browse.clicked.connect(self._browse)
        self.calibration = CalibrationForm()
        self.calibration.edited.connect(self._on_edited)
        self.calibration.show_calibration(self.header)
        self.from_dataset = QPushButton("Copy from the current data set")
        self.from_dataset.setToolTip("the calibrations of the session's current data set (e.g. "
                                     "an earlier acquisition with the same set-up)")
        self.from_dataset.clicked.connect(self.copy_from_dataset)
        self.header_note = QLabel("the header's calibrations appear when the acquisition has "
                                  "written its XML")
        self.header_note.setWordWrap(True)
        self.use_detector = QCheckBox("virtual annular detector (px)")
        self.use_detector.setChecked(True)
        self.inner = QDoubleSpinBox(minimum=0, maximum=1000, value=30, decimals=1)
        self.outer = QDoubleSpinBox(minimum=0.1, maximum=1000, value=60, decimals=1)
        self.model_box = QComboBox()
        self.model_box.setToolTip("a model of the session (trained or loaded), or a checkpoint")
        self.model_box.activated.connect(self._on_model_choice)
        self.timeout = QDoubleSpinBox(minimum=0.5, maximum=3600, value=10, decimals=1, suffix=" s")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.readout.setMinimumHeight(56)

        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks
        row = QHBoxLayout()
        row.addWidget(self.path, stretch=1)
        row.addWidget(browse)
        form.addRow("acquisition", row)
        form.addRow(self.use_detector)
        radii = QHBoxLayout()
        radii.addWidget(self.inner)
        radii.addWidget(self.outer)
        form.addRow("inner, outer", radii)
        form.addRow("model", self.model_box)
        form.addRow("stall timeout", self.timeout)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        heading = QLabel("<b>calibration</b> (as the header states it; type what it does "
                         "not)")
        heading.setWordWrap(True)
        layout.addWidget(heading)
        layout.addWidget(self.calibration)
        layout.addWidget(self.header_note)
        layout.addWidget(self.from_dataset)
        layout.addLayout(buttons)
        layout.addWidget(self.readout)
        layout.addStretch(1)
        self._fill_models()
        self.session.models_changed.connect(self._fill_models)
        compact_widget(self)
        settle(self)
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        on_viewer_close(napari_viewer, self._close)

    # -- choices -----------------------------------------------------------------------------
    def _fill_models(self) -> None:
        current = self.model_box.currentText()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItem(NO_MODEL)
        self.model_box.addItems(list(self.session.models))
        self.model_box.addItem(MODEL_FILE)
        i = self.model_box.findText(current)
        self.model_box.setCurrentIndex(max(0, i) if current != MODEL_FILE else 0)
        self.model_box.blockSignals(False)

    def _on_model_choice(self, _index: int) -> None:
        if self.model_box.currentText() == MODEL_FILE:
            path = open_file(self, self.session, "Model checkpoint", "Checkpoints (*.pt)")
            self.model_box.setCurrentIndex(0)
            if path:
                self.load_model(path)

    def load_model(self, path) -> None:
        """A checkpoint into the session's models, chosen here."""
        from .models import load_model_file

        try:
            entry = load_model_file(self.session, path)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not load model {Path(path).name}: {err}")
            return
        self._fill_models()
        self.model_box.setCurrentText(entry.name)

    def _browse(self) -> None:
        path = open_file(self, self.session, "Acquisition (EMPAD .raw)",
                         "EMPAD (*.raw);;All files (*)")
        if path:
            self.path.setText(path)
            self.read_header()

    # -- calibration ------------------------------------------------------------------------
    def effective_calibration(self) -> Calibration:
        """The header's calibration with the user's edits."""
        return self.header.with_(source=USER, **self.edits) if self.edits else self.header

    def read_header(self) -> None:
        """Read the acquisition's header calibration (if written yet) into the form."""
        path = self.path.text().strip()
        try:
            self.header, what = header_calibration(path) if path else (Calibration(), "")
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.header, what = Calibration(), ""
            self.header_note.setText(f"could not read the header: {err}")
        else:
            self.header_note.setText(
                f"read from {what}; type what it does not state" if what else
                "the header's calibrations appear when the acquisition has written its XML")
        self.calibration.show_calibration(self.effective_calibration())

    def _on_edited(self, changes: dict) -> None:
        self.edits.update(changes)
        self.calibration.show_calibration(self.effective_calibration())

    def copy_from_dataset(self) -> None:
        """The current data set's calibrations as the given ones."""
        ds = self.session.dataset
        if ds is None:
            show_info("no 4D data set is open")
            return
        cal = ds.calibration
        for name, *_ in ROWS:
            if getattr(cal, name) is not None:
                self.edits[name] = getattr(cal, name)
        self.edits["detector_units"] = cal.detector_units
        self.edits["scan_units"] = cal.scan_units
        self.calibration.show_calibration(self.effective_calibration())
        self.header_note.setText(f"calibrations copied from {self.session.current}")

    def chosen_model(self):
        """``(model, preprocessor)`` of the chosen session model, or ``None``."""
        entry = self.session.models.get(self.model_box.currentText())
        return None if entry is None else (entry.model, entry.preprocessor, entry.info)

    # -- running ----------------------------------------------------------------------------
    def start(self, path: str | None = None):
        """Follow ``path`` (default: the path field) in a worker; returns the worker."""
        path = path or self.path.text().strip()
        if not path:
            show_error("choose the EMPAD .raw file being acquired")
            return None
        model = self.chosen_model()
        detector = self.use_detector.isChecked()
        if detector and self.outer.value() <= self.inner.value():
            show_error("the outer radius must be larger than the inner radius")
            return None
        if not detector and model is None:
            show_error("nothing to compute: enable the detector and/or choose a model")
            return None
        if model is not None:
            if self.header == Calibration():
                self.read_header()
            err = missing_calibration(model[1], self.effective_calibration())
            if err is not None and self.header != Calibration():
                # the header is read and still lacks it: ask now, not after the first row
                self.readout.setText(f"{err} — type it in the calibration above")
                show_error(f"{Path(path).name}: {err}")
                return None
        self.cancel = threading.Event()
        self._source = Path(path).name
        worker = create_worker(
            guarded(live_job), path,
            self.inner.value() if detector else None, self.outer.value() if detector else None,
            model, self.timeout.value(), self.cancel, dict(self.edits),
            _progress={"desc": f"live {Path(path).name}"},
            _start_thread=False,
            _connect={"errored": error_reporter("live reconstruction", self.readout.setText)},
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.readout.setText(f"waiting for {Path(path).name}…")
        worker.start()
        return worker

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()

    def _on_event(self, ev) -> None:
        if getattr(self, "_closed", False):
            return
        if isinstance(ev, dict):  # the scan calibration, before the first row
            self._layer_kwargs = ev
            return
        if isinstance(ev, Message):  # the domain check on the first rows
            show_warning(f"Live: {ev.text}")
            return
        self._pending = ev
        now = time.monotonic()
        done = ev.rows_acquired >= ev.rows_total
        if not done and now < self._next_draw:
            return
        self._draw(ev)

    def _draw(self, ev) -> None:
        t0 = time.monotonic()
        self._pending = None
        for name, image in ev.images.items():
            finite = np.isfinite(image)
            if not finite.any():
                continue
            shown = np.where(finite, image, float(image[finite].mean()))
            # one layer per event-loop turn, the latest rows only (Session.defer)
            self.session.defer(("live", name), lambda name=name, shown=shown, rows=ev.rows_done[
                name]: self._show(live_name(name, self._source), shown).metadata.update(
                rows_done=rows))
        self.readout.setText(
            f"{ev.rows_acquired} of {ev.rows_total} rows acquired, "
            + ", ".join(f"{n} {r}" for n, r in ev.rows_done.items())
            + f"\n{ev.frames_per_s:.0f} frames/s; last block processed in "
              f"{ev.latency_s * 1e3:.0f} ms")
        end = time.monotonic()
        self._next_draw = end + max(REFRESH_S, 3 * (end - t0))

    def _show(self, name: str, data: np.ndarray):
        """Add or update (in place) a scan-plane image layer."""
        from .. import display

        limits = display.robust_limits(data, 0.1, 99.9)
        layers = self.viewer.layers
        if name in layers and layers[name].data.shape == data.shape:
            layers[name].data = data
            layers[name].contrast_limits = limits
            return layers[name]
        if name in layers:
            layers.remove(name)
        kw = getattr(self, "_layer_kwargs", {})
        self.session.hide_groups()  # the acquisition, not a data set's layers beneath it
        layer = self.viewer.add_image(data, name=name, contrast_limits=limits, colormap="gray",
                                      **kw)
        self.viewer.reset_view(layers=[layer])  # a new scan: show all of it
        return layer

    def _on_finished(self) -> None:
        if self._pending is not None and not getattr(self, "_closed", False):
            self._draw(self._pending)
        self.session.after_deferred(self._done)  # once the last rows are shown

    def _done(self) -> None:
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.cancel is not None and self.cancel.is_set():
            show_info("live reconstruction stopped")

    def _close(self) -> None:
        self._closed = True
        self.stop()
        self.session.models_changed.disconnect(self._fill_models)
