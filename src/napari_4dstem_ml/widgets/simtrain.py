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
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from .forms import persist
from .layout import scrolling_layout, settle
from .session import compact_widget, session_for, warm_up_torch

#: the structure choice that means "the file below"
STRUCTURE_FILE = "structure file…"
START_CHOICES = ("base model (fine-tune)", "scratch")


def _pair(name: str, label: str, lo: float, hi: float, a: float, b: float, decimals: int = 2,
          step: float = 1.0) -> Container:
    """A range ``a`` to ``b`` as two spin boxes in one labelled row."""
    kw = {"min": lo, "max": hi, "step": step}
    first = FloatSpinBox(name=f"{name}_min", value=a, label="", **kw)
    second = FloatSpinBox(name=f"{name}_max", value=b, label="to", **kw)
    for w in (first, second):
        w.native.setDecimals(decimals)
    pair = Container(name=name, label=label, layout="horizontal", labels=False,
                     widgets=[first, second])
    pair.margins = (0, 0, 0, 0)  # aligned with the single fields, no wider than needed
    return pair


class SimTrainWidget(QWidget):
    """Simulate the user's structure over ranges and train a model against its exact
    projected potential (see the module docstring). The form is a magicgui container whose
    values are remembered between launches."""

    TAB_TITLE = "Simulate"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        warm_up_torch()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker = None
        self._cancel = threading.Event()
        self.result_path: Path | None = None

        from ..simulate.structures import MATERIALS  # names only: abTEM is not imported

        self.structure = ComboBox(name="structure", choices=[*MATERIALS, STRUCTURE_FILE],
                                  value="MoS2" if "MoS2" in MATERIALS else None,
                                  tooltip="a named material, or a structure file below")
        self.structure_file = FileEdit(name="structure_file", label="file", mode="r",
                                       filter="Structures (*.cif *.xyz *.vasp *.pdb *.traj)",
                                       tooltip="a structure file (CIF, XYZ, VASP, PDB, ASE)")
        self.zone = LineEdit(name="zone", label="zone axis",
                             tooltip="[001] (default) when empty, e.g. 1 1 0")
        self.thickness = _pair("thickness", "thickness (nm)", 0.5, 200.0, 5.0, 20.0, 1)
        self.defocus = _pair("defocus", "defocus (nm)", -100.0, 100.0, 0.0, 0.0, 1)
        self.dose = _pair("dose", "dose (e⁻/pattern)", 100.0, 1e7, 1e4, 1e5, 0, 1e4)
        self.tilt = FloatSpinBox(name="tilt", label="tilt ≤ (mrad)", min=0.0, max=50.0,
                                 step=0.5, value=0.0)
        self.energy = LineEdit(name="energy", label="energies (keV)", value="80",
                               tooltip="one or more beam energies, e.g. 80 200 300")
        self.alpha = _pair("alpha", "α (mrad)", 1.0, 60.0, 21.4, 21.4, 1, 0.5)
        self.px = FloatSpinBox(name="detector_pixel", label="mrad / pixel", min=0.05,
                               max=10.0, step=0.05, value=0.84)
        self.px.native.setDecimals(3)
        self.det = SpinBox(name="detector_size", label="detector (px)", min=16, max=1024,
                           value=128)
        self.step = _pair("scan_step", "scan step (Å)", 0.02, 2.0, 0.25, 0.25, 3, 0.05)
        self.scan = SpinBox(name="scan", label="scan size (px)", min=8, max=256,
                            value=48)
        self.items = SpinBox(name="items", label="simulations", min=1, max=200, value=6)
        self.model = ComboBox(name="model", choices=["conv4d", "linear"], value="conv4d")
        self.init = ComboBox(name="init", label="start from", choices=list(START_CHOICES))
        self.output = FileEdit(name="output", label="save as", mode="w",
                               value=str(Path.home() / "simulated_model.pt"),
                               filter="Model (*.pt)")
        self.form = Container(widgets=[
            self.structure, self.structure_file, self.zone, self.thickness, self.defocus,
            self.dose, self.tilt, self.energy, self.alpha, self.px, self.det, self.step,
            self.scan, self.items, self.model, self.init, self.output])
        self.form.margins = (0, 0, 0, 0)
        for w in (self.structure_file, self.output):  # a narrow browse button
            w.choose_btn.text = "…"
        self.structure.changed.connect(self._on_structure)
        self.reset_settings = persist(self.session.settings, "simulate", self.form)
        self._on_structure()

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
        lay.addWidget(self.form.native)
        lay.addWidget(from_data)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)
        compact_widget(self)
        settle(self)

    # -- gathering ---------------------------------------------------------------------------
    def _on_structure(self, *_) -> None:
        self.structure_file.enabled = self.structure.value == STRUCTURE_FILE

    def structure_name(self) -> str:
        """The named material, or the chosen structure file's path."""
        if self.structure.value == STRUCTURE_FILE:
            path = str(self.structure_file.value or "").strip()
            return "" if path in ("", ".") else path
        return str(self.structure.value or "")

    def fill_from_dataset(self) -> None:
        """The current data set's detector, convergence angle, energy and scan step."""
        ds = self.session.dataset
        if ds is None:
            self.status.setText("no 4D data set is open")
            return
        cal = ds.calibration
        if cal.detector_pixel_mrad:
            self.px.value = float(cal.detector_pixel_mrad[0])
        self.det.value = int(min(ds.detector_shape))
        if cal.convergence_mrad:
            self.alpha.alpha_min.value = self.alpha.alpha_max.value = float(cal.convergence_mrad)
        if cal.energy_ev:
            self.energy.value = f"{cal.energy_ev / 1e3:g}"
        if cal.scan_step_A:
            v = float(cal.scan_step_A[0])
            self.step.scan_step_min.value = self.step.scan_step_max.value = v
        self.status.setText("detector, α, energy and scan step taken from the current data set")

    def job(self):
        """The :class:`SimTrainJob` the form describes (``ValueError`` naming a bad field)."""
        from ..simtrain import SimTrainJob
        from ..simulate.structures import MATERIALS, StructureSpec, build_unit_cell

        name = self.structure_name().strip()
        if not name:
            raise ValueError("structure: give a material name or a structure file")
        zone = None
        text = self.zone.value.strip()
        if text:
            try:
                zone = tuple(int(v) for v in text.replace(",", " ").split())
            except ValueError as exc:
                raise ValueError(f"zone axis: three integers, got {text!r}") from exc
            if len(zone) != 3:
                raise ValueError(f"zone axis: three integers, got {text!r}")
        try:
            energies = tuple(float(v) for v in self.energy.value.replace(",", " ").split())
        except ValueError as exc:
            raise ValueError(f"energies: numbers in keV, got {self.energy.value!r}") from exc
        if not energies or min(energies) <= 0:
            raise ValueError("energies: at least one positive energy in keV")
        is_2d = name in MATERIALS and build_unit_cell(StructureSpec(name)).is_2d
        ranges = {}
        for pair, what in ((self.thickness, "thickness"), (self.defocus, "defocus"),
                           (self.dose, "dose"), (self.alpha, "convergence α"),
                           (self.step, "scan step")):
            lo, hi = (w.value for w in pair)
            if lo > hi:
                raise ValueError(f"{what}: the first value must not exceed the second")
            ranges[pair.name] = (lo, hi)
        return SimTrainJob(
            structure=name, output=str(self.output.value).strip(), zone_axis=zone,
            thickness_nm=None if is_2d else ranges["thickness"],
            defocus_nm=ranges["defocus"], dose=ranges["dose"],
            tilt_mrad=self.tilt.value, energy_kev=energies,
            convergence_mrad=ranges["alpha"],
            detector_pixel_mrad=self.px.value, detector_size=self.det.value,
            scan_step_A=ranges["scan_step"], scan_shape=(self.scan.value,) * 2,
            items=self.items.value, model=self.model.value,
            init="base" if self.init.value == START_CHOICES[0] else "scratch")

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
            self.status.setText(f"training: epoch {ev.number}, validation loss {ev.val_loss:.4g}, r {r:.3f}")
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
