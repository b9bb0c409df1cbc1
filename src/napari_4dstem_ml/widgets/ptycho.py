""""Reconstruct label…" in the training dock: the ptychographic label made from the data set
itself (the core's :func:`~napari_4dstem_ml.ptycho.label_job`, extra ``[ptycho]``), offered
as the training label without registration.

The form (mode, slices, iterations, half-data FRC, what is known of the sample) is a magicgui
container remembered between launches; the job runs in a worker, its progress (with the ETA)
and warnings go to the dock's progress bar and readout, Stop cancels after the current
iteration, and the same settings and output resume from the last iteration.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QDialog, QDialogButtonBox, QVBoxLayout

from .dialogs import save_file
from .session import (
    DATASET_KEY,
    ROLE_KEY,
    RegisteredLabel,
    error_reporter,
    fingerprint,
    guarded,
)

SECTION = "ptycho"


def label_form():
    """The label's settings as a magicgui container (values remembered by :func:`persist`)."""
    from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox

    return Container(widgets=[
        ComboBox(name="mode", label="mode", choices=["single-slice", "multislice"],
                 value="single-slice",
                 tooltip="single-slice for a thin sample (a monolayer); multislice for thicker"),
        SpinBox(name="slices", label="slices", value=1, min=1, max=64,
                tooltip="multislice: number of slices"),
        FloatSpinBox(name="slice_thickness_A", label="slice (Å)", value=10.0, min=0.5,
                     max=1000.0, tooltip="multislice: thickness of each slice (Å)"),
        SpinBox(name="iterations", label="iterations", value=8, min=1, max=500),
        FloatSpinBox(name="defocus_nm", label="defocus (nm)", value=0.0, min=-1000.0,
                     max=1000.0, tooltip="the probe's defocus at the sample"),
        FloatSpinBox(name="thickness_nm", label="sample (nm)", value=0.0, min=0.0,
                     max=1000.0, tooltip="the sample's thickness if known (0: unknown); only "
                                         "for the check that the mode suits it"),
        CheckBox(name="half_data_frc", text="half-data FRC (the label's resolution; about "
                                            "twice the time)", value=True),
    ], labels=True)


def config_from(form):
    """A :class:`~napari_4dstem_ml.ptycho.PtychoConfig` from the form's values."""
    from ..ptycho.config import PtychoConfig

    v = {w.name: w.value for w in form}
    multi = v["mode"] == "multislice"
    return PtychoConfig(
        mode=v["mode"], slices=int(v["slices"]) if multi else 1,
        slice_thickness_A=float(v["slice_thickness_A"]) if multi else None,
        iterations=int(v["iterations"]), defocus_A=10.0 * float(v["defocus_nm"]),
        half_data_frc=bool(v["half_data_frc"]),
        sample_thickness_A=10.0 * float(v["thickness_nm"]) if v["thickness_nm"] > 0 else None)


class LabelReconstruction:
    """The training dock's "Reconstruct label…": one job at a time; ``dock`` is the
    :class:`~.training.TrainingWidget` (its data set, progress bar, readout and label box)."""

    def __init__(self, dock) -> None:
        self.dock = dock
        self.worker = None
        self.cancel: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def ask(self) -> tuple | None:
        """The form in a dialog, then the output file: ``(config, path)`` or ``None``."""
        from .forms import persist

        dock = self.dock
        form = label_form()
        persist(dock.session.settings, SECTION, form)
        dialog = QDialog(dock)
        dialog.setWindowTitle("Reconstruct the label by ptychography")
        lay = QVBoxLayout(dialog)
        lay.addWidget(form.native)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        lay.addWidget(buttons)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return None
        try:
            config = config_from(form)
        except ValueError as err:
            show_error(f"label reconstruction: {err}")
            return None
        name = dock.dataset_box.currentText().replace(":", "_").replace("/", "_")
        path = save_file(dock, dock.session, "Save the label", f"{name}_label.h5", "HDF5 (*.h5)")
        return (config, path) if path else None

    def start(self, config=None, path: str | None = None):
        """Start the job on the dock's data set (asking for the settings and output when not
        given); returns the worker, or ``None``."""
        dock = self.dock
        if self.running or dock.worker is not None:
            show_info("a job is running in this dock: stop it first")
            return None
        name = dock.dataset_box.currentText()
        if not name or name not in dock.session.datasets:
            show_error("choose a 4D data set first")
            return None
        try:
            from ..ptycho import label_job
        except ImportError as err:
            show_error(f"making the label needs the ptycho extra: pip install "
                       f"'napari-4dstem-ml[ptycho]' ({err})")
            return None
        if config is None or path is None:
            asked = self.ask()
            if asked is None:
                return None
            config, path = asked
        ds = dock.session.datasets[name]
        self.cancel = threading.Event()
        self._dataset = name
        worker = create_worker(
            guarded(label_job), ds, config, output=path, cancel=self.cancel,
            _start_thread=False,
            _connect={"errored": error_reporter("label reconstruction", dock.readout.setText)})
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._finish)
        self.worker = worker
        dock.ptycho_button.setText("Stop label")
        dock.start_button.setEnabled(False)
        dock.progress.setValue(0)
        dock.progress.setFormat("label: preparing…")
        dock.readout.setText(f"reconstructing the label of {name} into {Path(path).name} …")
        worker.start()
        return worker

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()
            self.dock.readout.setText("stopping the label reconstruction after this iteration "
                                      "(run it again with the same settings to resume)")

    def _on_event(self, ev) -> None:
        from ..predict.events import Message
        from ..ptycho.job import PtychoEvent, TrainingLabel

        dock = self.dock
        if getattr(dock, "_closed", False):
            return
        if isinstance(ev, PtychoEvent):
            if ev.work:
                dock.progress.setValue(int(1000 * min(1.0, ev.done / ev.work)))
            eta = "" if ev.eta_s is None else f", {ev.eta_s / 60:.1f} min left"
            loss = "" if ev.loss is None else f", loss {ev.loss:.3g}"
            step = f" {ev.iteration}/{ev.total}" if ev.total else ""
            dock.progress.setFormat(f"label: {ev.stage}{step}{loss}{eta}")
            if ev.message.startswith("warning"):
                show_warning(f"label: {ev.message}")
                dock.readout.setText(ev.message)
            elif ev.message:
                dock.readout.setText(ev.message)
        elif isinstance(ev, Message):
            dock.readout.setText(ev.text)
            if ev.text.startswith("warning"):
                show_warning(f"label: {ev.text}")
        elif isinstance(ev, TrainingLabel):
            self._offer(ev)

    def _offer(self, t) -> None:
        """The label on the scan grid as the dock's training label (no registration)."""
        dock = self.dock
        ds = dock.session.datasets[self._dataset]
        step = ds.calibration.scan_step_A or (1.0, 1.0)
        image = np.asarray(t.image, np.float32)
        layer = dock.viewer.add_image(
            image, name=f"label (ptychography, made here): {self._dataset}", scale=step,
            colormap="gray",
            metadata={ROLE_KEY: "label", DATASET_KEY: self._dataset, "on_scan_grid": True,
                      "label_pixel_size_A": float(step[1]), "label_method": "ptychography"})
        quality = t.label.quality
        report = f"ptychographic label: {quality.summary()}"
        key = (f"{fingerprint(image)}:{float(step[1]):.6g}", self._dataset)
        dock.session.registrations[key] = RegisteredLabel(
            image, np.asarray(t.coverage, bool), report, dict(t.summary))
        dock._label_chosen = True
        dock.label_box.setCurrentText(layer.name)
        for w in getattr(quality, "warnings", ()):
            show_warning(f"label: {w}")
        dock.readout.setText(report + " — ready: Start trains on it")

    def _finish(self) -> None:
        dock = self.dock
        self.worker = None
        self.cancel = None
        if getattr(dock, "_closed", False):
            return
        dock.ptycho_button.setText("Reconstruct label…")
        dock.start_button.setEnabled(True)
        dock.progress.setFormat("idle")

    def teardown(self) -> None:
        if self.cancel is not None:
            self.cancel.set()
        if self.worker is not None:
            self.worker.quit()
