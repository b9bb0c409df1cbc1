"""Train from simulation: ``stemml simulate-train STRUCTURE`` and the napari action behind it.

The user's own structure (a material name, or a CIF / any ASE-readable file) is simulated
with abTEM (the ``[sim]`` extra) over the ranges of thickness, defocus, dose, tilt, energy,
convergence angle and scan step that the user sets, on the user's detector, and a model is
trained against each simulation's *exact* projected potential (low-passed to 0.4 Å) — the
label ptychography cannot give for thick samples. By default the shipped base model is
fine-tuned; ``init="scratch"`` trains a new one.

:func:`simulate_train` is a generator: first a :class:`SimTrainPlan` (the list of
simulations and the time estimate, before anything runs), then the simulation series'
progress events, the training events, and the :class:`~.workflow.JobResult`. Simulations are
written to ``work_dir`` one file per item and reused on a rerun (resumable); cancelling
(``cancel.is_set()``, or closing the generator) stops between chunks and keeps the finished
files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .workflow import JobResult, Message

__all__ = ["BOUNDS", "SimTrainJob", "SimTrainPlan", "simulate_train"]

#: what a job accepts (checked before anything runs): field -> (lowest, highest, CLI option);
#: the lowest value is allowed, except for the thickness, which must be > 0
BOUNDS: dict[str, tuple[float, float, str]] = {
    "thickness_nm": (0.0, 1000.0, "--thickness"),
    "defocus_nm": (-1000.0, 1000.0, "--defocus"),
    "dose": (1.0, 1e10, "--dose"),
    "tilt_mrad": (0.0, 100.0, "--tilt"),
    "energy_kev": (1.0, 1000.0, "--energy"),
    "convergence_mrad": (0.1, 200.0, "--convergence"),
    "detector_pixel_mrad": (0.001, 100.0, "--detector-pixel"),
    "detector_size": (8, 1024, "--detector-size"),
    "scan_step_A": (0.005, 20.0, "--scan-step"),
    "scan_shape": (8, 512, "--scan-shape"),
    "items": (1, 1000, "--items"),
    "epochs": (1, 100000, "--epochs"),
    "seed": (0, 2**32 - 1, "--seed"),
}


@dataclass(frozen=True)
class SimTrainJob:
    """Everything ``stemml simulate-train`` needs. Lengths in Å unless named ``_nm``, angles
    in mrad, energies in keV; a range is (min, max), equal values fix it."""

    structure: str
    output: str
    work_dir: str | None = None
    zone_axis: tuple[int, int, int] | None = None
    thickness_nm: tuple[float, float] | None = None
    defocus_nm: tuple[float, float] = (0.0, 0.0)
    dose: tuple[float, float] = (1e4, 1e5)
    tilt_mrad: float = 0.0
    energy_kev: tuple[float, ...] = (80.0,)
    convergence_mrad: tuple[float, float] = (21.4, 21.4)
    detector_pixel_mrad: float = 0.84
    detector_size: int = 128
    scan_step_A: tuple[float, float] = (0.25, 0.25)
    scan_shape: tuple[int, int] = (48, 48)
    items: int = 6
    model: str = "conv4d"
    init: str = "base"
    epochs: int | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name, (lo, hi, option) in BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            values = value if isinstance(value, (tuple, list)) else (value,)
            integer = isinstance(lo, int) and isinstance(hi, int)
            for v in values:
                ok = (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) and lo <= v <= hi
                      and (not integer or float(v).is_integer())
                      and not (name == "thickness_nm" and v <= 0))
                if not ok:
                    low = f"> {lo:g}" if name == "thickness_nm" else f">= {lo:g}"
                    kind = "integers" if integer else "numbers"
                    raise ValueError(f"{option}: expected {kind} {low} and <= {hi:g}, got "
                                     f"{' '.join(str(x) for x in values)}")
            if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] > value[1] \
                    and name != "scan_shape":
                raise ValueError(f"{option}: expected MIN MAX with MIN <= MAX, got "
                                 f"{value[0]:g} {value[1]:g}")
        if not self.energy_kev:
            raise ValueError("--energy: at least one beam energy in keV")
        if len(self.scan_shape) != 2:
            raise ValueError(f"--scan-shape: expected NY NX, got {self.scan_shape}")
        if self.model not in ("linear", "conv4d"):
            raise ValueError(f"--model: expected 'linear' or 'conv4d', got {self.model!r}")

    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.output).with_suffix(".simulations")

    def inputs(self) -> list[str]:
        """Files the job reads (a structure file, a checkpoint to fine-tune): never written."""
        files = [self.structure if Path(self.structure).is_file() else None,
                 None if self.init in ("base", "scratch") else self.init]
        return [str(f) for f in files if f]

    def check_before_work(self):
        """Everything that can be refused before a simulation runs: the output (``-o``: a new
        ``.pt`` file, or ``--overwrite``; never an input), the simulation folder
        (``--work-dir``: a folder or a new one in an existing folder, neither an input nor
        the output) and the model to fine-tune (``--init``: of the kind of ``--model``).
        Returns the initial model (``None`` from scratch)."""
        from .base_model import initial_model
        from .export import OutputError, OutputPlan, same_file

        plan = OutputPlan(inputs=self.inputs(), overwrite=self.overwrite)
        out = plan.add(self.output, "-o", suffixes=(".pt",))
        work = self.work()
        what = "--work-dir" if self.work_dir else "the simulation folder (--work-dir)"
        if same_file(work, out) or any(same_file(work, i) for i in self.inputs()):
            raise OutputError(f"{what} {work}: it is the output or an input; choose another "
                              "folder", work)
        if work.exists() and not work.is_dir():
            raise OutputError(f"{what} {work} exists and is not a folder", work)
        parent = work if work.is_dir() else work.parent
        if not parent.is_dir():
            raise OutputError(f"{what} {work}: the folder {parent} does not exist", work)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {work}: {parent} is not writable", work)
        return out, initial_model(self.init, self.model)

    def series(self):
        """(structure spec, ranges, base simulation config) of the series."""
        from .simulate.detector import DetectorModel
        from .simulate.scene import SimulationConfig
        from .simulate.series import SeriesRanges
        from .simulate.structures import StructureSpec

        spec = StructureSpec(self.structure, zone_axis=self.zone_axis)
        thick = None if self.thickness_nm is None else tuple(10.0 * t for t in self.thickness_nm)
        ranges = SeriesRanges(
            thickness_A=thick, defocus_A=tuple(10.0 * d for d in self.defocus_nm),
            dose_e_per_pattern=tuple(self.dose), tilt_mrad=self.tilt_mrad,
            energy_ev=tuple(1e3 * e for e in self.energy_kev),
            convergence_mrad=tuple(self.convergence_mrad), scan_step_A=tuple(self.scan_step_A))
        n = int(self.detector_size)
        base = SimulationConfig(
            scan_shape=tuple(self.scan_shape),
            detector=DetectorModel(shape=(n, n), pixel_mrad=float(self.detector_pixel_mrad),
                                   centre_offset_px=(0.0, 0.0), descan_y_px=(0.0, 0.0),
                                   descan_x_px=(0.0, 0.0)))
        return spec, ranges, base


@dataclass(frozen=True)
class SimTrainPlan:
    """What will run: the simulations (name and parameters), which are already done, and
    the estimated seconds of simulation left (training comes on top)."""

    names: tuple[str, ...]
    configs: tuple[dict, ...]
    finished: tuple[bool, ...]
    estimate_s: float

    def summary(self) -> str:
        left = sum(not f for f in self.finished)
        return (f"{len(self.names)} simulations ({left} to run, {len(self.names) - left} already "
                f"done), estimated {self.estimate_s / 60:.1f} min of simulation, then training")


def _items(paths: list[Path], handles: list) -> list:
    import h5py

    from .io import load
    from .training.clusters import RegionSplit
    from .training.loop import TrainingItem

    items = []
    for p in paths:
        f = h5py.File(p, "r")
        handles.append(f)
        low = [k for k in f["ground_truth"] if k.startswith("potential_lowpass_")]
        label = np.asarray(f[f"ground_truth/{low[0]}"], np.float64)
        items.append(TrainingItem(load(p, dataset="datacube/data"), label,
                                  split=RegionSplit(train_fraction=0.8),
                                  noise_free=f["noise_free/patterns"], name=p.stem))
    return items


def simulate_train(job: SimTrainJob, cancel: Any = None) -> Generator[Any, None, JobResult | None]:
    """Simulate ``job``'s series and train on it (see the module docstring). Returns the
    :class:`~.workflow.JobResult`, or ``None`` when cancelled."""
    from .simulate.scene import make_plan
    from .simulate.series import SeriesDoneEvent, SeriesPlanEvent, expand_series, simulate_series
    from .training.checkpoint import save_checkpoint
    from .training.loop import DoneEvent, train_items
    from .workflow import TrainingJob

    out, _initial = job.check_before_work()
    spec, ranges, base = job.series()
    work = job.work()
    # the plan first, before any folder is made (so --plan-only leaves nothing behind)
    from .simulate.engine import existing_config

    configs = expand_series(spec, ranges, job.items, base=base, seed=job.seed)
    finished = []
    for c in configs:
        old = existing_config(work / f"{c.name}.h5")
        finished.append(old is not None and old.to_json() == c.to_json())
    est = sum(make_plan(c).estimate_s for c, f in zip(configs, finished) if not f)
    yield SimTrainPlan(tuple(c.name for c in configs), tuple(c.to_dict() for c in configs),
                       tuple(finished), float(est))
    made = not work.exists()
    paths: list[Path] = []
    try:
        for ev in simulate_series(spec, ranges, job.items, work, base=base, seed=job.seed,
                                  cancel=cancel):
            if isinstance(ev, SeriesPlanEvent):
                continue
            if isinstance(ev, SeriesDoneEvent):
                if ev.cancelled:
                    yield Message(f"cancelled: finished simulations stay in {work}; run again "
                                  "to resume")
                    return None
                paths = [Path(p) for p in ev.paths]
            yield ev
    finally:
        if made:  # a folder made here and left empty (an early error, a cancel) goes again
            with contextlib.suppress(OSError):
                work.rmdir()
    # training: the same defaults as 'stemml train' (fine-tune the base model unless scratch)
    tj = TrainingJob(label="(simulated: exact projected potential)", output=str(out), model=job.model,
                     init=job.init, epochs=job.epochs, seed=job.seed, overwrite=job.overwrite)
    handles: list = []
    try:
        items = _items(paths, handles)
        initial, (model_cfg, pre_cfg, train_cfg) = tj.prepare(items[0].dataset)
        if initial is None:  # from scratch: angles in units of α, the shipped models' grid
            pre_cfg = replace(pre_cfg, scan_step_A=float(np.mean(job.scan_step_A)))
        yield Message(f"training a {job.model} model on {len(items)} simulations "
                      + ("(fine-tuning the base model)" if initial is not None else "(from scratch)"))
        result = None
        t0 = time.time()
        for ev in train_items(items, model_cfg, pre_cfg, train_cfg, init=initial,
                              augment=tj.augment_config(), cancel=cancel):
            yield ev
            if isinstance(ev, DoneEvent):
                result = ev.result
    finally:
        for f in handles:
            f.close()
    provenance = {
        "simulate_train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(job).items()},
        "simulations": [json.loads(json.dumps(c, default=str)) for c in
                        (_config(p) for p in paths)],
        "label": "exact projected potential, low-passed to 0.4 A",
        "fine_tuned_from": (initial.info.get("provenance") if initial is not None else None),
    }
    save_checkpoint(out, result.model, result.model_config, result.preprocessor,
                    train_summary=result.train_summary, metrics=result.metrics, provenance=provenance,
                    overwrite=job.overwrite, inputs=tuple(job.inputs()))
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    res = JobResult(out, {"registered": False, "label": "simulation ground truth"}, metrics,
                    result.stopped, len(result.history), time.time() - t0,
                    best_epoch=result.best_epoch)
    yield res
    return res


def _config(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        c = f.attrs.get("simulation_config")
        return json.loads(c) if c is not None else {"file": path.name}
