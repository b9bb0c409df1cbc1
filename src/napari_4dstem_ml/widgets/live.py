"""Live: reconstruct an acquisition while the detector writes it.

Pick the growing EMPAD ``.raw`` (its XML is read first) or a Merlin detector's data stream
(``merlin://host:port``, received with LiberTEM-live), optionally a virtual annular detector
(radii in detector pixels; centre from the first row's bright-field disk) and a trained model
(a ``.pt`` checkpoint). Start follows the file in a worker thread
(:func:`napari_4dstem_ml.live.iter_live`); the navigation image, the virtual image and the
model's reconstruction grow row by row as image layers updated in place on the GUI thread (at
most every ``REFRESH_S`` seconds, so that a fast detector cannot flood the event loop). Stop ends
following at once; a stall longer than the timeout ends it with a message.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .session import compact_widget, error_reporter, guarded, on_viewer_close

if TYPE_CHECKING:
    import napari

#: shortest interval between two layer updates (s)
REFRESH_S = 0.1


def live_name(image: str, source: str) -> str:
    return f"live {image}: {source}"


def live_job(path: str, inner: float | None, outer: float | None, model_path: str | None,
             timeout_s: float, cancel: threading.Event):
    """Worker generator: follow ``path`` and yield :class:`~napari_4dstem_ml.live.LiveEvent`s."""
    from ..detectors.centre import find_bf_centre
    from ..detectors.geometry import annular_mask
    from ..live import LivePipeline, iter_live, open_source

    loaded = None
    if model_path:
        from ..training.checkpoint import load_checkpoint

        loaded = load_checkpoint(model_path)
    source = open_source(path, timeout_s=timeout_s, cancel=cancel)
    det = source.detector_shape
    detectors = {}
    if inner is not None and outer is not None:
        detectors["adf"] = lambda mean: annular_mask(det, find_bf_centre(mean), inner, outer)
    pipe = LivePipeline(source.scan_shape, det, detectors=detectors,
                        model=loaded.model if loaded else None,
                        preprocessor=loaded.preprocessor if loaded else None,
                        calibration=source.calibration)
    pipe.warm_up()
    step = source.calibration.scan_step_A
    yield {"scale": step or (1.0, 1.0), "units": ("angstrom",) * 2 if step else ("pixel",) * 2}
    yield from iter_live(source, pipe)


class LiveWidget(QWidget):
    """Dock widget: growing file, detector, model; Start/Stop; rate and latency readout."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.cancel: threading.Event | None = None
        self._last_draw = 0.0
        self._pending = None
        self.path = QLineEdit()
        self.path.setPlaceholderText("EMPAD .raw being written, or merlin://host:port")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.use_detector = QCheckBox("virtual annular detector (px)")
        self.use_detector.setChecked(True)
        self.inner = QDoubleSpinBox(minimum=0, maximum=1000, value=30, decimals=1)
        self.outer = QDoubleSpinBox(minimum=0.1, maximum=1000, value=60, decimals=1)
        self.model = QLineEdit()
        self.model.setPlaceholderText("optional: model checkpoint (.pt)")
        model_browse = QPushButton("…")
        model_browse.clicked.connect(self._browse_model)
        self.timeout = QDoubleSpinBox(minimum=0.5, maximum=3600, value=10, decimals=1, suffix=" s")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.readout.setMinimumHeight(56)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.path, stretch=1)
        row.addWidget(browse)
        form.addRow("acquisition", row)
        form.addRow(self.use_detector)
        radii = QHBoxLayout()
        radii.addWidget(self.inner)
        radii.addWidget(self.outer)
        form.addRow("inner, outer", radii)
        row = QHBoxLayout()
        row.addWidget(self.model, stretch=1)
        row.addWidget(model_browse)
        form.addRow("model", row)
        form.addRow("stall timeout", self.timeout)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.readout)
        layout.addStretch(1)
        compact_widget(self)
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        on_viewer_close(napari_viewer, self._close)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Acquisition (EMPAD .raw)", "",
                                              "EMPAD (*.raw);;All files (*)")
        if path:
            self.path.setText(path)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt)")
        if path:
            self.model.setText(path)

    def start(self, path: str | None = None):
        """Follow ``path`` (default: the path field) in a worker; returns the worker."""
        path = path or self.path.text().strip()
        if not path:
            show_error("choose the EMPAD .raw file being acquired")
            return None
        model = self.model.text().strip() or None
        if model and not Path(model).is_file():
            show_error(f"{model}: no such model file")
            return None
        detector = self.use_detector.isChecked()
        if detector and self.outer.value() <= self.inner.value():
            show_error("the outer radius must be larger than the inner radius")
            return None
        if not detector and model is None:
            show_error("nothing to compute: enable the detector and/or choose a model")
            return None
        self.cancel = threading.Event()
        self._source = Path(path).name
        worker = create_worker(
            guarded(live_job), path,
            self.inner.value() if detector else None, self.outer.value() if detector else None,
            model, self.timeout.value(), self.cancel,
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
        self._pending = ev
        now = time.monotonic()
        done = ev.rows_acquired >= ev.rows_total
        if not done and now - self._last_draw < REFRESH_S:
            return
        self._draw(ev)

    def _draw(self, ev) -> None:
        self._last_draw = time.monotonic()
        self._pending = None
        for name, image in ev.images.items():
            finite = np.isfinite(image)
            if not finite.any():
                continue
            shown = np.where(finite, image, float(image[finite].mean()))
            layer = self._show(live_name(name, self._source), shown)
            layer.metadata["rows_done"] = ev.rows_done[name]
        self.readout.setText(
            f"{ev.rows_acquired} of {ev.rows_total} rows acquired, "
            + ", ".join(f"{n} {r}" for n, r in ev.rows_done.items())
            + f"\n{ev.frames_per_s:.0f} frames/s; last block processed in "
              f"{ev.latency_s * 1e3:.0f} ms")

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
        layer = self.viewer.add_image(data, name=name, contrast_limits=limits, colormap="gray",
                                      **kw)
        self.viewer.reset_view()  # a new scan: show all of it
        return layer

    def _on_finished(self) -> None:
        if self._pending is not None and not getattr(self, "_closed", False):
            self._draw(self._pending)
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.cancel is not None and self.cancel.is_set():
            show_info("live reconstruction stopped")

    def _close(self) -> None:
        self._closed = True
        self.stop()
