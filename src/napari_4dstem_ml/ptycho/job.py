"""The "reconstruct label" job: 4D data → ptychographic phase → a training label, as a
generator of progress events (CLI progress bars and the GUI's thread workers consume the same
code), cancellable between iterations and resumable from the last finished iteration.

    for event in reconstruct_label(dataset, PtychoConfig(), "label.h5"):
        print(event)

The state after every iteration is kept in ``STATE`` (default ``LABEL.resume.pt`` beside the
output, written atomically): a cancelled or killed run continues from it when started again
with the same settings (``iterations`` may be raised), and it is deleted once the label is
written. The full data set is reconstructed, then (``half_data_frc``) its two halves — a
checkerboard of scan positions — whose FRC measures the label's self-consistency.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .backends import ObjectGeometry, PtychoData
from .config import PtychoConfig
from .quality import (
    LabelQuality,
    crop_to_scan,
    dark_field_fraction,
    depth_of_field_A,
    half_data_frc,
    label_resolution_A,
    on_scan_grid,
    transfer_limit_A,
    trust_warnings,
    truth_score,
)
from .registry import get_backend

#: reconstruction parts, in the order they run; the halves are checkerboards of positions
PARTS = ("full", "half A", "half B")
STATE_VERSION = 1


@dataclass(frozen=True)
class PtychoEvent:
    """Progress: ``stage`` "prepare", "full" / "half A" / "half B" (``iteration`` of ``total``
    finished, its data ``loss``), "quality", "writing", "done" or "cancelled". ``done`` of
    ``work`` counts iterations over all parts (a half costs about half an iteration of the
    full set); ``eta_s`` is the estimated time left (s), ``None`` until one iteration ran."""

    stage: str
    iteration: int = 0
    total: int = 0
    loss: float | None = None
    done: float = 0.0
    work: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class PtychoLabel:
    """A finished label: ``phase`` (rad, object grid ``(y, x)``) with its ``geometry``,
    ``on_scan`` (the phase at the scan positions), the ``quality`` checks, what made it
    (``backend``, ``backend_version``, ``config``), ``seconds`` of reconstruction (this and
    earlier, resumed runs), the full reconstruction's ``losses`` per iteration, and the
    ``path`` written (``None`` when no output was asked for)."""

    phase: np.ndarray = field(repr=False)
    geometry: ObjectGeometry
    on_scan: np.ndarray = field(repr=False)
    quality: LabelQuality
    backend: str
    backend_version: str
    config: PtychoConfig
    seconds: float
    losses: list[float]
    path: Path | None = None
    method: str = ""

    def report(self) -> str:
        where = f"wrote {self.path}: " if self.path else ""
        c = self.config
        mode = (c.mode if c.mode == "single-slice"
                else f"multislice, {c.slices} slices of {c.slice_thickness_A:g} Å")
        return (f"{where}label {self.phase.shape[0]} x {self.phase.shape[1]} at "
                f"{self.geometry.pixel_size_A:.4f} Å ({self.backend} {self.backend_version}, "
                f"{mode}, {c.iterations} iterations, {self.seconds:.0f} s); "
                f"{self.quality.summary()}")


# ------------------------------------------------------------------------------ data
def prepare_data(dataset: Dataset4D, config: PtychoConfig) -> PtychoData:
    """The data set's patterns in memory, binned ``config.bin_factor``², with the
    calibrations ptychography needs (a missing one is an error naming its CLI option)."""
    from ..preprocess import MissingCalibrationError

    cal = dataset.calibration
    step = cal.scan_step_A
    if step is None:
        raise MissingCalibrationError("scan_step", "ptychography")
    if cal.energy_ev is None:
        raise MissingCalibrationError("energy_ev", "ptychography")
    if cal.convergence_mrad is None:
        raise MissingCalibrationError("convergence_mrad", "ptychography")
    kpix = cal.detector_pixel_mrad
    if kpix is None:
        raise MissingCalibrationError("detector_pixel", "ptychography")
    src = dataset.source or "the data set"
    if abs(step[0] - step[1]) > 1e-3 * step[0] or abs(kpix[0] - kpix[1]) > 1e-3 * kpix[0]:
        raise ValueError(f"{src}: ptychography needs square scan steps and detector pixels, got "
                         f"{step} Å and {kpix} mrad")
    b = config.bin_factor
    ny, nx = dataset.scan_shape
    ky, kx = dataset.detector_shape
    if ky != kx:
        raise ValueError(f"{src}: ptychography needs a square detector, got {ky} x {kx}")
    if ky % b:
        raise ValueError(f"bin_factor {b} does not divide the {ky} px detector")
    if min(ny, nx) < 4:
        raise ValueError(f"{src}: a {ny} x {nx} scan is too small for ptychography")
    out = np.empty((ny, nx, ky // b, kx // b), np.float32)
    rows = max(1, 2**26 // max(1, nx * ky * kx * 4))
    for y0 in range(0, ny, rows):
        block = np.asarray(dataset.data[y0:y0 + rows], dtype=np.float32)
        n = block.shape[0]
        out[y0:y0 + n] = block.reshape(n, nx, ky // b, b, kx // b, b).sum((3, 5))
    bad = ~np.isfinite(out).all(axis=(2, 3))
    if bad.any():
        raise ValueError(f"{src}: {int(bad.sum())} diffraction patterns hold NaN/inf values; "
                         "ptychography needs every pattern of the scan")
    if not np.any(out):
        raise ValueError(f"{src}: every diffraction pattern is zero")
    np.clip(out, 0, None, out=out)
    return PtychoData(out, float(step[0]), float(kpix[0]) * b, float(cal.energy_ev),
                      float(cal.convergence_mrad))


def _fingerprint(data: PtychoData, bin_factor: int) -> str:
    """Identifies the data and calibrations whatever the binning (the settings are compared
    on their own): scan shape, raw detector size and pixel, energy, α, counts per pattern."""
    h = hashlib.sha256()
    raw = [*data.scan_shape, *(n * bin_factor for n in data.patterns.shape[2:])]
    h.update(json.dumps([raw, data.scan_step_A, round(data.detector_pixel_mrad / bin_factor, 9),
                         data.energy_ev, data.convergence_mrad]).encode())
    h.update(np.round(data.patterns.sum((2, 3), dtype=np.float64), 3).tobytes())
    return h.hexdigest()[:32]


def part_mask(part: str, scan_shape: tuple[int, int]) -> np.ndarray | None:
    """Positions a part reconstructs: all ("full"), or one colour of a checkerboard."""
    if part == "full":
        return None
    even = np.indices(scan_shape).sum(0) % 2 == 0
    return even if part == "half A" else ~even


# ------------------------------------------------------------------------------ state
def default_state_path(output: str | Path) -> Path:
    p = Path(output)
    return p.with_name(p.name + ".resume.pt")


def _save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_state(path: Path, config: PtychoConfig, fingerprint: str, backend: str
                ) -> dict[str, Any] | None:
    import torch

    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a broken state file is reported, not trusted
        raise ValueError(f"{path}: cannot read the saved reconstruction state ({exc}); delete "
                         "it to start again (--restart)") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a reconstruction state of this version; delete it to "
                         "start again (--restart)")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: was saved for other data (or other calibrations); delete it "
                         "to start again (--restart)")
    old = state["config"]
    new = config.resume_key()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff or state["backend"] != backend:
        what = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff) or "back end"
        raise ValueError(f"{path}: was saved with other settings ({what}); use the same "
                         "settings to resume, or delete it to start again (--restart)")
    return state


# ------------------------------------------------------------------------------ job
def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def reconstruct_label(
    dataset: Dataset4D, config: PtychoConfig | None = None, output: str | Path | None = None,
    *, overwrite: bool = False, state_path: str | Path | None = None, resume: bool = True,
    cancel: Any = None, ground_truth: np.ndarray | None = None,
) -> Generator[PtychoEvent | PtychoLabel, None, PtychoLabel | None]:
    """Reconstruct ``dataset``'s object by ptychography and make it a training label.

    Yields :class:`PtychoEvent` progress and finally the :class:`PtychoLabel` (also
    returned). ``output`` (``.h5``/``.hdf5``, or ``.tif``/``.npy``/``.png``) is validated
    before any work and written atomically at the end. ``cancel`` (a callable returning True,
    or a ``threading.Event``) stops after the current iteration: the state is kept, nothing
    is written, a "cancelled" event is the last one and ``None`` is returned. ``resume``:
    continue from ``state_path`` (default ``OUTPUT.resume.pt``; none without an output)
    when it exists; ``resume=False`` starts again and replaces it. ``ground_truth``: an image
    on the scan grid (simulations) to score the label against.
    """
    from .label_file import check_label_output, write_label

    config = PtychoConfig() if config is None else config
    t0 = time.perf_counter()
    inputs = tuple(dataset.input_files)
    if output is not None:
        check_label_output(output, overwrite=overwrite, inputs=inputs)
    if state_path is None and output is not None:
        state_path = default_state_path(output)
    state_path = None if state_path is None else Path(state_path)
    if ground_truth is not None:
        ground_truth = np.asarray(ground_truth, np.float64)
        if ground_truth.shape != dataset.scan_shape:
            raise ValueError(f"the ground truth is {ground_truth.shape} but the scan is "
                             f"{dataset.scan_shape}; it must be on the scan grid")
    yield PtychoEvent("prepare", message=f"reading {dataset.scan_shape[0]} x "
                      f"{dataset.scan_shape[1]} patterns into memory")
    data = prepare_data(dataset, config)
    backend = get_backend(config.backend)
    fp = _fingerprint(data, config.bin_factor)
    state = None
    if state_path is not None and resume:
        state = _load_state(state_path, config, fp, backend.name)
    if state is None:
        state = {"version": STATE_VERSION, "fingerprint": fp, "backend": backend.name,
                 "config": config.resume_key(), "parts": {}, "seconds": 0.0}
    elif state_path is not None:
        done = {k: v["iterations_done"] for k, v in state["parts"].items()}
        yield PtychoEvent("prepare", message=f"resuming from {state_path}: iterations done {done}")
    seconds_before = float(state.get("seconds", 0.0))
    parts = PARTS if config.half_data_frc else PARTS[:1]
    weight = {"full": 1.0, "half A": 0.5, "half B": 0.5}
    work = sum(weight[p] for p in parts) * config.iterations
    per_iter: list[float] = []  # seconds per full-set iteration measured in this run
    results: dict[str, tuple[np.ndarray, ObjectGeometry]] = {}

    def done_work() -> float:
        return sum(weight[p] * min(config.iterations, state["parts"].get(p, {}).get(
            "iterations_done", 0)) for p in parts)

    for part in parts:
        saved = state["parts"].get(part)
        if saved is not None and saved["iterations_done"] == config.iterations and "phase" in saved:
            results[part] = (saved["phase"], ObjectGeometry(**saved["geometry"]))
            continue
        yield PtychoEvent(part, 0, config.iterations, done=done_work(), work=work,
                          elapsed_s=time.perf_counter() - t0,
                          message=f"starting the {part} reconstruction ({backend.name})")
        session = backend.start(data, config, part_mask(part, data.scan_shape))
        if saved is not None:
            session.load_state(saved["session"])
            if session.iterations_done > config.iterations:
                raise ValueError(f"{state_path}: {session.iterations_done} iterations are done "
                                 f"already, more than the {config.iterations} asked for")
        while session.iterations_done < config.iterations:
            if _cancelled(cancel):
                yield PtychoEvent("cancelled", session.iterations_done, config.iterations,
                                  done=done_work(), work=work,
                                  elapsed_s=time.perf_counter() - t0,
                                  message="cancelled; " + (f"the state is kept in {state_path}"
                                                           if state_path else "nothing kept"))
                return None
            ti = time.perf_counter()
            loss = session.step()
            dt = time.perf_counter() - ti
            per_iter.append(dt / weight[part])
            entry = {"iterations_done": session.iterations_done, "session": session.state()}
            if session.iterations_done >= config.iterations:
                entry["phase"] = session.phase()
                entry["geometry"] = session.geometry().to_dict()
                entry["geometry"]["scan_to_pixel"] = tuple(
                    tuple(r) for r in entry["geometry"]["scan_to_pixel"])
                entry["geometry"]["origin_A"] = tuple(entry["geometry"]["origin_A"])
            state["parts"][part] = entry
            state["seconds"] = seconds_before + time.perf_counter() - t0
            if state_path is not None:
                _save_state(state_path, state)
            d = done_work()
            eta = float(np.median(per_iter)) * (work - d)
            yield PtychoEvent(part, session.iterations_done, config.iterations, loss, d, work,
                              time.perf_counter() - t0, eta)
        results[part] = (session.phase(), session.geometry())

    yield PtychoEvent("quality", done=work, work=work, elapsed_s=time.perf_counter() - t0,
                      eta_s=0.0, message="checking the label")
    phase, geom = results["full"]
    on_scan = on_scan_grid(phase, geom, data.scan_shape)
    quality = _quality(data, config, phase, geom, on_scan, results, ground_truth)
    phase, geom = crop_to_scan(phase, geom, data.scan_shape)
    losses = [float(v) for v in state["parts"]["full"].get("session", {}).get("losses", [])]
    seconds = seconds_before + time.perf_counter() - t0
    method = _method(backend, config, data, geom)
    label = PtychoLabel(phase, geom, on_scan, quality, backend.name, backend.version, config,
                        seconds, losses, None, method)
    if output is not None:
        yield PtychoEvent("writing", done=work, work=work, elapsed_s=time.perf_counter() - t0,
                          eta_s=0.0, message=f"writing {output}")
        attrs = {"backend": backend.name, "backend_version": backend.version,
                 "config": config.to_json(), "geometry": json.dumps(geom.to_dict()),
                 "quality": json.dumps(quality.to_dict(), default=float),
                 "reconstruction_seconds": round(seconds, 1),
                 "loss_per_iteration": json.dumps(losses),
                 "source": str(dataset.source or "")}
        label.path = write_label(output, phase, pixel_size_A=geom.pixel_size_A,
                                 origin_A=geom.origin_A, on_scan_grid=on_scan,
                                 scan_step_A=data.scan_step_A, method=method, attrs=attrs,
                                 overwrite=overwrite, inputs=inputs)
        if state_path is not None and state_path.exists():
            state_path.unlink()
    for w in quality.warnings:
        yield PtychoEvent("done", done=work, work=work, elapsed_s=time.perf_counter() - t0,
                          eta_s=0.0, message=f"warning: {w}")
    yield PtychoEvent("done", done=work, work=work, elapsed_s=time.perf_counter() - t0,
                      eta_s=0.0, message=label.report())
    yield label
    return label


def _quality(data: PtychoData, config: PtychoConfig, phase: np.ndarray, geom: ObjectGeometry,
             on_scan: np.ndarray, results: dict, ground_truth: np.ndarray | None) -> LabelQuality:
    frc_result = None
    if "half A" in results and "half B" in results:
        frc_result = half_data_frc(results["half A"][0], results["half B"][0], geom,
                                   data.scan_shape)
    reach = data.detector_pixel_mrad * min(data.patterns.shape[-2:]) / 2
    limit = transfer_limit_A(data.energy_ev, data.convergence_mrad, reach)
    res = label_resolution_A(frc_result, geom.pixel_size_A, limit)
    truth = None
    if ground_truth is not None:
        truth = truth_score(on_scan, ground_truth, data.scan_step_A, res)
    lo, hi = np.percentile(on_scan, [0.5, 99.5])
    mean_pattern = data.patterns.mean(axis=(0, 1))
    dff = dark_field_fraction(mean_pattern, data.detector_pixel_mrad, data.convergence_mrad)
    dof = depth_of_field_A(data.energy_ev, data.convergence_mrad)
    warnings = trust_warnings(mode=config.mode, slices=config.slices,
                              slice_thickness_A=config.slice_thickness_A,
                              sample_thickness_A=config.sample_thickness_A, dof_A=dof,
                              phase_range=float(hi - lo), df_fraction=dff, frc_result=frc_result)
    return LabelQuality(frc_result, res, limit, truth, float(hi - lo), dff, dof, warnings)


def _method(backend, config: PtychoConfig, data: PtychoData, geom: ObjectGeometry) -> str:
    mode = (config.mode if config.mode == "single-slice"
            else f"multislice, {config.slices} slices of {config.slice_thickness_A:g} Å")
    pad = f"zero-padded to {config.padded_size}" if config.padded_size else "not padded"
    rot = ("fitted from the centre of mass" if config.rotation_deg is None
           else f"forced to {config.rotation_deg:g}°")
    return (f"{backend.name} {backend.version} ptychography ({mode}): {config.iterations} "
            f"iterations of gradient descent (Adam-type, object step {config.lr_object:g}, "
            f"probe step {config.lr_probe:g}{'' if config.learn_probe else ', probe fixed'}, "
            f"batches of {config.batch_size}); probe from α {data.convergence_mrad:g} mrad at "
            f"{data.energy_ev / 1e3:g} keV, defocus {config.defocus_A:g} Å; positions fixed on "
            f"the scan grid; scan rotation {rot}; detector binned {config.bin_factor}x"
            f"{config.bin_factor} ({data.detector_pixel_mrad:.3g} mrad) and {pad} (object pixel "
            f"{geom.pixel_size_A:.4f} Å); phase = angle(object)")


# ------------------------------------------------------------------------------ as a label
#: the free registration may differ from the known geometry by this much before a warning
REGISTRATION_TOLERANCE = {"shift_steps": 1.0, "rotation_deg": 2.0, "scale": 0.05}


def training_label(label: PtychoLabel, dataset: Dataset4D
                   ) -> Generator[Any, None, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Offer a reconstructed label for training on the data set it was made from: no
    registration is needed (the back end's probe positions place it on the scan), but the
    registration's check still runs: the label is registered freely against a virtual image
    and the fit compared with the known geometry. Yields :class:`~..workflow.Message` lines;
    returns ``(image on the scan grid, coverage mask, summary)`` as
    :func:`napari_4dstem_ml.workflow.registered_label` does, for ``run_job(registered=...)``.
    """
    from ..registration import register_label
    from ..workflow import Message, reference_image

    if label.on_scan.shape != dataset.scan_shape:
        raise ValueError(f"the label was made on a {label.on_scan.shape} scan, the data set is "
                         f"{dataset.scan_shape}: register it as a label file instead")
    step = dataset.calibration.scan_step_A
    if step is None:
        from ..preprocess import MissingCalibrationError

        raise MissingCalibrationError("scan_step", "checking the label's registration")
    ref, what = reference_image(dataset)
    yield Message(f"checking the label's geometry against a {what} image ...")
    g = label.geometry
    m = np.asarray(g.scan_to_pixel)
    ny, nx = dataset.scan_shape
    h, w = label.phase.shape
    # known: the scan position of the label's centre, relative to the scan's centre
    centre_scan = np.linalg.solve(m[:, :2], np.array([(h - 1) / 2, (w - 1) / 2]) - m[:, 2])
    known_shift = (float(centre_scan[0] - (ny - 1) / 2), float(centre_scan[1] - (nx - 1) / 2))
    known_scale = g.pixel_size_A / float(step[0])
    known_rot = float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))) if m[0, 0] else 0.0
    reg = register_label(label.phase, g.pixel_size_A, ref, step)
    p = reg.params
    d_shift = float(np.hypot(p.shift_yx[0] - known_shift[0], p.shift_yx[1] - known_shift[1]))
    d_rot = min(abs(((p.rotation_deg - sign * known_rot + 180) % 360) - 180) for sign in (1, -1))
    summary = {"registered": False, "geometry": "the back end's probe positions",
               "reference": what, "check": {
                   "fitted": p.to_dict(), "known_shift_yx": list(known_shift),
                   "known_scale": known_scale, "shift_difference_steps": d_shift,
                   "rotation_difference_deg": d_rot, "score": reg.score}}
    yield Message(f"label placed by its own geometry; a free registration agrees within "
                  f"{d_shift:.2f} scan steps and {d_rot:.2f}° (r = {reg.score:+.3f} against the "
                  f"{what} image)")
    tol = REGISTRATION_TOLERANCE
    if d_shift > tol["shift_steps"] or d_rot > tol["rotation_deg"]:
        yield Message(f"warning: a free registration puts the label {d_shift:.1f} scan steps and "
                      f"{d_rot:.1f}° away from where the reconstruction says it is; check the "
                      "scan rotation and the calibrations (a crystal may also match itself one "
                      "lattice vector away)")
    if abs(reg.score) < 0.3:
        yield Message("warning: the label correlates poorly with the virtual image; check it")
    for wmsg in label.quality.warnings:
        yield Message(f"warning: {wmsg}")
    coverage = np.ones(dataset.scan_shape, bool)
    return label.on_scan, coverage, summary


@dataclass
class TrainingLabel:
    """A reconstructed label ready for training on its data set: the :class:`PtychoLabel`,
    and ``image``/``coverage``/``summary`` as ``run_job(registered=...)`` takes them."""

    label: PtychoLabel
    image: np.ndarray = field(repr=False)
    coverage: np.ndarray = field(repr=False)
    summary: dict[str, Any]


def label_job(dataset: Dataset4D, config: PtychoConfig | None = None,
              output: str | Path | None = None, **options: Any
              ) -> Generator[Any, None, TrainingLabel | None]:
    """The GUI's "Reconstruct label" job in one generator: :func:`reconstruct_label` (its
    events; ``options`` as there), then :func:`training_label` (its messages), then a
    :class:`TrainingLabel` (also returned); ``None`` when cancelled."""
    label = yield from reconstruct_label(dataset, config, output, **options)
    if label is None:
        return None
    image, coverage, summary = yield from training_label(label, dataset)
    result = TrainingLabel(label, image, coverage, summary)
    yield result
    return result
