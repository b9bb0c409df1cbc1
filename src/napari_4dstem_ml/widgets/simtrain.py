"""Train from simulation: the napari dock behind ``stemml simulate-train``.

Thin: the form gathers a :class:`~napari_4dstem_ml.simtrain.SimTrainJob` (structure, ranges,
the detector — filled from the current data set on request —, model and start), *Estimate*
shows the list of simulations and the time estimate before anything runs, *Run* runs
:func:`~napari_4dstem_ml.simtrain.simulate_train` in a ``thread_worker`` (a determinate
progress bar: simulations then epochs, with the estimated time left), *Cancel* stops between
chunks (finished simulations are kept: running again resumes). The trained model joins the
session's models, ready for Apply.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .dialogs import open_file
from .layout import scrolling_layout, settle
from .session import compact_widget, session_for


def _spin(lo: float, hi: float, value: float, decimals: int = 2, step: float = 1.0) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setValue(value)
    return s


def _pair(lo: float, hi: float, a: float, b: float, decimals: int = 2, step: float = 1.0):
    row = QHBoxLayout()
    sa, sb = _spin(lo, hi, a, decimals, step), _spin(lo, hi, b, decimals, step)
    row.addWidget(sa)
    row.addWidget(QLabel("to"))
    row.addWidget(sb)
    return row, sa, sb


class SimTrainWidget(QWidget):
    """Simulate the user's structure over ranges and train a model against its exact
    projected potential (see the module docstring)."""

    TAB_TITLE = "Simulate"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker = None
        self._cancel = threading.Event()
        self.result_path: Path | None = None

        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks
        self.structure = QComboBox()
        self.structure.setEditable(True)
        from ..simulate.structures import MATERIALS  # names only: abTEM is not imported

        self.structure.addItems(list(MATERIALS))
        browse = QPushButton("File…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.structure, 1)
        row.addWidget(browse)
        form.addRow("structure", row)
        self.zone = QLineEdit()
        self.zone.setPlaceholderText("[001] (default), e.g. 1 1 0")
        form.addRow("zone axis", self.zone)
        r, self.t0, self.t1 = _pair(0.5, 200.0, 5.0, 20.0, 1, 1.0)
        form.addRow("thickness (nm, crystals)", r)
        r, self.df0, self.df1 = _pair(-100.0, 100.0, 0.0, 0.0, 1, 1.0)
        form.addRow("defocus (nm)", r)
        r, self.d0, self.d1 = _pair(100.0, 1e7, 1e4, 1e5, 0, 1e4)
        form.addRow("dose (e⁻/pattern)", r)
        self.tilt = _spin(0.0, 50.0, 0.0, 1, 0.5)
        form.addRow("largest tilt (mrad)", self.tilt)
        self.energy = QLineEdit("80")
        form.addRow("energies (keV)", self.energy)
        r, self.a0, self.a1 = _pair(1.0, 60.0, 21.4, 21.4, 1, 0.5)
        form.addRow("convergence α (mrad)", r)
        self.px = _spin(0.05, 10.0, 0.84, 3, 0.05)
        form.addRow("detector pixel (mrad)", self.px)
        self.det = QSpinBox()
        self.det.setRange(16, 1024)
        self.det.setValue(128)
        form.addRow("detector pixels", self.det)
        r, self.s0, self.s1 = _pair(0.02, 2.0, 0.25, 0.25, 3, 0.05)
        form.addRow("scan step (Å)", r)
        self.scan = QSpinBox()
        self.scan.setRange(8, 256)
        self.scan.setValue(48)
        form.addRow("scan positions per side", self.scan)
        self.items = QSpinBox()
        self.items.setRange(1, 200)
        self.items.setValue(6)
        form.addRow("simulations", self.items)
        self.model = QComboBox()
        self.model.addItems(["conv4d", "linear"])
        form.addRow("model", self.model)
        self.init = QComboBox()
        self.init.addItems(["base model (fine-tune)", "scratch"])
        form.addRow("start from", self.init)
        self.output = QLineEdit(str(Path.home() / "simulated_model.pt"))
        form.addRow("save model as", self.output)

        from_data = QPushButton("From the current data set")
        from_data.setToolTip("detector, convergence α, energy and scan step of the current "
                             "data set")
        from_data.clicked.connect(self.fill_from_dataset)
        self.estimate_btn = QPushButton("Estimate")
        self.estimate_btn.clicked.connect(self.estimate)
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        for b in (self.estimate_btn, self.run_btn, self.cancel_btn):
            buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = scrolling_layout(self)
        lay.addLayout(form)
        lay.addWidget(from_data)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)
        compact_widget(self)
        settle(self)

    # -- gathering ---------------------------------------------------------------------------
    def _browse(self) -> None:
        path = open_file(self, self.session, "Structure file",
                         "Structures (*.cif *.xyz *.vasp *.pdb *.traj);;All (*)")
        if path:
            self.structure.setEditText(path)

    def fill_from_dataset(self) -> None:
        """The current data set's detector, convergence angle, energy and scan step."""
        ds = self.session.dataset
        if ds is None:
            self.status.setText("no 4D data set is open")
            return
        cal = ds.calibration
        if cal.detector_pixel_mrad:
            self.px.setValue(float(cal.detector_pixel_mrad[0]))
        self.det.setValue(int(min(ds.detector_shape)))
        if cal.convergence_mrad:
            self.a0.setValue(float(cal.convergence_mrad))
            self.a1.setValue(float(cal.convergence_mrad))
        if cal.energy_ev:
            self.energy.setText(f"{cal.energy_ev / 1e3:g}")
        if cal.scan_step_A:
            self.s0.setValue(float(cal.scan_step_A[0]))
            self.s1.setValue(float(cal.scan_step_A[0]))
        self.status.setText("detector, α, energy and scan step taken from the current data set")

    def job(self):
        """The :class:`SimTrainJob` the form describes (``ValueError`` naming a bad field)."""
        from ..simtrain import SimTrainJob
        from ..simulate.structures import MATERIALS, StructureSpec, build_unit_cell

        name = self.structure.currentText().strip()
        if not name:
            raise ValueError("structure: give a material name or a structure file")
        zone = None
        if self.zone.text().strip():
            try:
                zone = tuple(int(v) for v in self.zone.text().replace(",", " ").split())
            except ValueError as exc:
                raise ValueError(f"zone axis: three integers, got {self.zone.text()!r}") from exc
            if len(zone) != 3:
                raise ValueError(f"zone axis: three integers, got {self.zone.text()!r}")
        try:
            energies = tuple(float(v) for v in self.energy.text().replace(",", " ").split())
        except ValueError as exc:
            raise ValueError(f"energies: numbers in keV, got {self.energy.text()!r}") from exc
        if not energies or min(energies) <= 0:
            raise ValueError("energies: at least one positive energy in keV")
        is_2d = name in MATERIALS and build_unit_cell(StructureSpec(name)).is_2d
        for lo, hi, what in ((self.t0, self.t1, "thickness"), (self.df0, self.df1, "defocus"),
                             (self.d0, self.d1, "dose"), (self.a0, self.a1, "convergence α"),
                             (self.s0, self.s1, "scan step")):
            if lo.value() > hi.value():
                raise ValueError(f"{what}: the first value must not exceed the second")
        return SimTrainJob(
            structure=name, output=self.output.text().strip(), zone_axis=zone,
            thickness_nm=None if is_2d else (self.t0.value(), self.t1.value()),
            defocus_nm=(self.df0.value(), self.df1.value()), dose=(self.d0.value(), self.d1.value()),
            tilt_mrad=self.tilt.value(), energy_kev=energies,
            convergence_mrad=(self.a0.value(), self.a1.value()),
            detector_pixel_mrad=self.px.value(), detector_size=self.det.value(),
            scan_step_A=(self.s0.value(), self.s1.value()), scan_shape=(self.scan.value(),) * 2,
            items=self.items.value(), model=self.model.currentText(),
            init="base" if self.init.currentIndex() == 0 else "scratch")

    # -- actions -----------------------------------------------------------------------------
    def estimate(self) -> None:
        """The simulations and their time estimate (nothing runs)."""
        from ..simulate.scene import make_plan
        from ..simulate.series import expand_series

        try:
            job = self.job()
            spec, ranges, base = job.series()
            configs = expand_series(spec, ranges, job.items, base=base, seed=job.seed)
            est = sum(make_plan(c).estimate_s for c in configs)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.status.setText(f"cannot plan: {exc}")
            return
        lines = [f"{len(configs)} simulations, about {est / 60:.1f} min of simulation on one core, "
                 "then training:"]
        for c in configs[:8]:
            t = c.structure.thickness_A
            lines.append(f"  {c.name}: {c.energy_ev / 1e3:g} keV, α {c.convergence_mrad:g} mrad"
                         + (f", {t / 10:.1f} nm" if t else "") + f", {c.dose_e_per_pattern:.3g} e⁻")
        if len(configs) > 8:
            lines.append(f"  … and {len(configs) - 8} more")
        self.status.setText("\n".join(lines))

    def run(self) -> None:
        from napari.qt.threading import thread_worker

        from ..simtrain import simulate_train

        try:
            job = self.job()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.status.setText(f"cannot start: {exc}")
            return
        self._cancel.clear()
        self._started = time.monotonic()
        self._plan_total = 1.0
        worker = thread_worker(simulate_train, start_thread=False)(job, cancel=self._cancel)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda exc: self._finish(f"failed: {exc}"))
        self._worker = worker
        self.run_btn.setEnabled(False)
        self.estimate_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("planning …")
        worker.start()

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling after the current chunk …")

    # -- slots (GUI thread) ------------------------------------------------------------------
    def _on_event(self, ev) -> None:
        from ..simtrain import SimTrainPlan
        from ..simulate.series import SeriesEvent
        from ..training.loop import EpochEvent, StepEvent
        from ..workflow import Message

        if isinstance(ev, SimTrainPlan):
            self.status.setText(ev.summary())
        elif isinstance(ev, SeriesEvent):
            frac = (ev.index + (ev.event.done / max(ev.event.total, 1))) / max(ev.n_items, 1)
            self.progress.setValue(int(500 * frac))  # simulations fill the first half
            eta = "" if ev.eta_s is None else f", about {ev.eta_s / 60:.1f} min left"
            self.progress.setFormat(f"simulation {ev.index + 1}/{ev.n_items}: {ev.event.stage}{eta}")
        elif isinstance(ev, StepEvent) and ev.total_steps:
            self.progress.setValue(500 + int(500 * min(1.0, ev.step / ev.total_steps)))
            self.progress.setFormat(f"training: step {ev.step}/{ev.total_steps}")
        elif isinstance(ev, EpochEvent):
            r = ev.metrics.get("pearson_r", float("nan"))
            self.status.setText(f"training: epoch {ev.epoch}, validation loss {ev.val_loss:.4g}, r {r:.3f}")
        elif isinstance(ev, Message):
            self.status.setText(ev.text)

    def _on_done(self, result) -> None:
        if result is None:
            self._finish("cancelled; finished simulations are kept (Run again resumes)")
            return
        from .models import load_model_file

        self.result_path = Path(result.checkpoint)
        try:
            entry = load_model_file(self.session, self.result_path)
            where = f"; it is in the session's models as {entry.name!r}, ready for Apply"
        except Exception as exc:  # noqa: BLE001 - shown to the user
            where = f" (could not add it to the session: {exc})"
        self.progress.setValue(1000)
        self._finish(f"saved {result.checkpoint} after {result.epochs} epochs{where}")

    def _finish(self, text: str) -> None:
        self.status.setText(text)
        self.progress.setFormat("done" if text.startswith("saved") else text.split(":")[0])
        self.run_btn.setEnabled(True)
        self.estimate_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self._worker = None
