"""Run one simulation: :func:`simulate` is a generator of :class:`SimulationEvent` progress
events that writes the HDF5 file (the layout of :mod:`.writer`, plus ``/noise_free``,
``/ground_truth/potential_lowpass_*`` and ``/defects``).

Resumable: finished multislice chunks live in ``<out>.parts/<digest>/`` until the file is
written. Cancellable between chunks (``cancel``: a callable returning True, or a
``threading.Event``); a cancelled run writes nothing and keeps its chunks. abTEM runs on the
CPU, with dask's synchronous scheduler and one FFT/BLAS thread.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import PartsCache
from .detector import (
    counts_dtype,
    detect,
    fourier_interpolate_cell,
    gaussian_scan_blur,
    interpolate_cell_patterns,
    poisson_counts,
)
from .groundtruth import (
    GroundTruth,
    lowpass_periodic,
    lowpass_sigma_A,
    projected_potential,
    reference_datasets,
    sample_periodic,
)
from .multislice import scan_patterns
from .scene import Plan, SimulationConfig, make_plan
from .structures import Crystal, apply_defects, build_crystal, build_unit_cell
from .writer import SampleArrays, write_sample

LABEL_METHOD = ("exact object phase sigma * projected potential of the simulated static "
                "structure (abTEM, Lobato), Gaussian low-pass with 10% transfer at {res} A, on "
                "the scan grid; NOT a ptychographic reconstruction")


@dataclass(frozen=True)
class SimulationEvent:
    """Progress of one simulation. ``stage``: ``"plan"`` (before any work; ``eta_s`` is the
    estimate), ``"multislice"`` (``done`` of ``total`` probe positions, all frozen-phonon
    configurations together), ``"writing"``, ``"done"`` (``path`` written, or found finished
    with ``skipped``), ``"cancelled"``. Times in seconds; ``eta_s`` is None when unknown."""

    stage: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    message: str = ""
    path: str | None = None
    estimate_s: float | None = None
    skipped: bool = False


def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


@contextlib.contextmanager
def _single_thread():
    """abTEM on the CPU, FFTW with one thread, dask synchronous, BLAS/OpenMP one thread."""
    import abtem
    import dask

    limits = contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/numpy stacks
        pass
    with limits, dask.config.set(scheduler="synchronous"), abtem.config.set(
            {"device": "cpu", "fft": "fftw", "fftw.threads": 1}):
        yield


def existing_config(path: str | Path) -> SimulationConfig | None:
    """The configuration stored in a finished simulation file, or None (no file, a file
    from elsewhere, or unreadable)."""
    import h5py

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            s = f.attrs.get("simulation_config")
            return None if s is None else SimulationConfig.from_json(str(s))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _displaced(atoms, config: SimulationConfig, crystal: Crystal, k: int):
    """Frozen-phonon configuration ``k`` (Gaussian displacements, rms per axis)."""
    if config.frozen_phonons <= 0:
        return atoms
    rms = dict(crystal.rms_A)
    rms.update(dict(config.rms_A))
    sig = np.array([rms.get(e, 0.08) for e in atoms.get_chemical_symbols()])
    at = atoms.copy()
    rng = np.random.default_rng([config.seed, 7919, k])
    at.positions += rng.normal(size=at.positions.shape) * sig[:, None]
    at.wrap()
    return at


def _box_atoms(config: SimulationConfig, plan: Plan, crystal: Crystal):
    """The static multislice box (with defects) and the defect sites (y, x) in Å (box frame)."""
    atoms = build_crystal(crystal, plan.lateral)
    if not crystal.is_2d:  # atomic planes mid-slice, not on slice boundaries
        atoms.positions[:, 2] += plan.slice_thickness_A / 2
        atoms.wrap()
    sites: list[tuple[float, float]] = []
    if config.structure.defects:
        ny, nx = config.scan_shape
        oy, ox = plan.scan_origin_A
        targets = [(oy + d.position[0] * (ny - 1) * config.scan_step_A,
                    ox + d.position[1] * (nx - 1) * config.scan_step_A)
                   for d in config.structure.defects]
        atoms, sites = apply_defects(atoms, config.structure.defects, targets)
    return atoms, sites


def ground_truth_grid(config: SimulationConfig, plan: Plan | None = None,
                      crystal: Crystal | None = None, static=None
                      ) -> tuple[np.ndarray, tuple[float, float], np.ndarray, np.ndarray]:
    """The projected potential of the static structure (V·Å, ``(y, x)``, defects included) on
    its fine periodic grid, that grid's (dy, dx) sampling (Å) and the scan positions' y and x
    (Å) in its frame: ``/ground_truth/potential`` is its value there. ``plan``, ``crystal``
    and ``static`` (the box's atoms) are made from ``config`` when not given (no multislice)."""
    if crystal is None:
        crystal = build_unit_cell(config.structure)
    if plan is None:
        plan = make_plan(config, crystal)
    if static is None and plan.method != "periodic":
        static, _ = _box_atoms(config, plan, crystal)
    ny, nx = config.scan_shape
    step = config.scan_step_A
    if plan.method == "periodic":
        ax, by = plan.cell_A[0], plan.cell_A[1]
        cell = crystal.cell.copy()
        proj, samp = projected_potential(cell)
        proj *= crystal.repeats_z
        gy = config.scan_offset_A[0] % by + np.arange(ny) * step
        gx = config.scan_offset_A[1] % ax + np.arange(nx) * step
    else:
        proj, samp = projected_potential(static)
        gy = plan.scan_origin_A[0] + np.arange(ny) * step
        gx = plan.scan_origin_A[1] + np.arange(nx) * step
    return proj, samp, gy, gx


def _chunks(plan: Plan) -> list[tuple[int, int]]:
    r = plan.rows_per_chunk
    return [(r0, min(plan.positions[0], r0 + r)) for r0 in range(0, plan.positions[0], r)]


def scan_jitter_A(config: SimulationConfig, plan: Plan) -> np.ndarray:
    """The random probe-position errors (Å), ``(positions_y, positions_x, 2)`` as (dy, dx),
    of every simulated position (margin included): Gaussian, rms ``config.scan_jitter_A``
    per axis, drawn from ``config.seed``; zeros without jitter."""
    shape = (*plan.positions, 2)
    if config.scan_jitter_A <= 0:
        return np.zeros(shape)
    return np.random.default_rng([config.seed, 5419]).normal(size=shape) * config.scan_jitter_A


def _scan(plan: Plan, config: SimulationConfig, r0: int, r1: int):
    import abtem

    py, px = plan.positions
    if config.scan_jitter_A > 0:  # direct: explicit jittered positions, row-major (y, x)
        s, m = config.scan_step_A, plan.margin_px
        yy = plan.scan_origin_A[0] + (np.arange(r0, r1) - m) * s
        xx = plan.scan_origin_A[1] + (np.arange(px) - m) * s
        jit = scan_jitter_A(config, plan)[r0:r1]
        y = yy[:, None] + jit[..., 0]
        x = xx[None, :] + jit[..., 1]
        return abtem.CustomScan(np.stack([x.ravel(), y.ravel()], -1)), (r1 - r0, px)
    if plan.method == "periodic":
        ax, by = plan.cell_A[0], plan.cell_A[1]
        y0, x0 = (plan.lateral[0] // 2) * by, (plan.lateral[1] // 2) * ax
        dy, dx = by / py, ax / px
    else:
        s, m = config.scan_step_A, plan.margin_px
        y0, x0 = plan.scan_origin_A[0] - m * s, plan.scan_origin_A[1] - m * s
        dy = dx = s
    return abtem.GridScan(start=(x0, y0 + r0 * dy), end=(x0 + px * dx, y0 + r1 * dy),
                          gpts=(px, r1 - r0), endpoint=False), None


def check_cutoff(cutoff_mrad: float, needed_mrad: float) -> None:
    """Raise when abTEM's anti-aliasing cutoff does not reach the largest angle needed."""
    if cutoff_mrad < needed_mrad - 1e-6:
        raise ValueError(
            f"simulation grid reaches {cutoff_mrad:.1f} mrad (abTEM anti-aliasing cutoff), less "
            f"than the {needed_mrad:.1f} mrad the detector corners / ADF outer angle need: "
            "use a finer grid")


def _aberrations(config: SimulationConfig) -> dict[str, Any]:
    """abTEM probe keyword arguments beyond defocus: twofold astigmatism (C12 in Å, phi12 in
    rad, abTEM's polar convention) when set; nothing otherwise (older configurations build
    the same probe)."""
    if config.astigmatism_A <= 0:
        return {}
    return {"aberrations": {"C12": float(config.astigmatism_A),
                            "phi12": float(np.deg2rad(config.astigmatism_angle_deg))}}


class _Detectors:
    """What :func:`.multislice.scan_patterns` reads from a configuration."""

    def __init__(self, config: SimulationConfig):
        self.energy_ev = config.energy_ev
        self.detector = config.detector
        self.adf_inner_mrad = config.adf_inner_mrad
        self.adf_outer_mrad = config.adf_outer_mrad


def simulate(config: SimulationConfig, out: str | Path, cancel: Any = None,
             keep_parts: bool = False, overwrite: bool = False,
             chunk_seconds: float = 20.0) -> Iterator[SimulationEvent]:
    """Simulate ``config`` and write ``out`` (HDF5), yielding progress events.

    A finished file with the same configuration is not recomputed (one ``done`` event with
    ``skipped=True``); a file with another configuration raises ``FileExistsError`` unless
    ``overwrite``. ``keep_parts`` keeps the chunk cache after writing; ``chunk_seconds``
    sizes the chunks (estimated seconds each)."""
    t_start = time.time()
    out = Path(out)
    if out.exists():
        old = existing_config(out)
        if old is not None and old.to_json() == config.to_json():
            yield SimulationEvent("done", 1, 1, 0.0, 0.0, f"{out.name}: already simulated",
                                  path=str(out), skipped=True)
            return
        if not overwrite:
            raise FileExistsError(f"{out} exists and holds another simulation; choose another "
                                  "output name or pass overwrite=True")
    crystal = build_unit_cell(config.structure)
    plan = make_plan(config, crystal, chunk_seconds=chunk_seconds)
    total = plan.total_units
    yield SimulationEvent("plan", 0, total, 0.0, plan.estimate_s,
                          f"{config.name or config.structure.label()}: {plan.method}, "
                          f"{plan.positions[0]}x{plan.positions[1]} positions x {plan.configs} "
                          f"config(s), {plan.n_slices} slices, grid {plan.gpts[0]}x{plan.gpts[1]}"
                          f", estimate {plan.estimate_s:.0f} s", estimate_s=plan.estimate_s)
    cache = PartsCache(out, config.digest(crystal), {"config": config.to_dict(),
                                                     "plan": plan.to_dict()})
    with _single_thread():
        gen = _run(config, plan, crystal, cache, out, cancel, t_start)
        result = yield from gen
    if result is None:
        return
    if not keep_parts:
        cache.remove()
    yield SimulationEvent("done", total, total, time.time() - t_start, 0.0,
                          f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB) in "
                          f"{time.time() - t_start:.0f} s", path=str(out),
                          estimate_s=plan.estimate_s)


def _run(config: SimulationConfig, plan: Plan, crystal: Crystal, cache: PartsCache, out: Path,
         cancel: Any, t_start: float):
    import abtem

    total = plan.total_units
    static, sites = _box_atoms(config, plan, crystal)
    acc = adf_acc = None
    sim_pix: tuple[float, float] | None = None
    cutoff = float("nan")
    done = computed = 0
    t_compute = 0.0
    cpu_chunks = 0.0  # CPU seconds of all chunks, also those computed by an earlier run
    px = plan.positions[1]
    dets = _Detectors(config)
    for k in range(plan.configs):
        potarr = probe = None
        pats, adfs = [], []
        for r0, r1 in _chunks(plan):
            name = f"c{k:02d}_r{r0:04d}_{r1:04d}"
            z = cache.load(name)
            if z is None:
                if _cancelled(cancel):
                    yield SimulationEvent("cancelled", done, total, time.time() - t_start, None,
                                          "cancelled; finished chunks are kept for a rerun")
                    return None
                t0, c0 = time.time(), time.process_time()
                if potarr is None:
                    atoms = _displaced(static, config, crystal, k)
                    pot = abtem.Potential(atoms, gpts=(plan.gpts[1], plan.gpts[0]),
                                          slice_thickness=plan.slice_thickness_A,
                                          projection="infinite", parametrization="lobato",
                                          periodic=True)
                    potarr = pot.build().compute(progress_bar=False)
                    probe = abtem.Probe(energy=config.energy_ev,
                                        semiangle_cutoff=config.convergence_mrad,
                                        defocus=config.defocus_A,
                                        tilt=(config.tilt_mrad[1], config.tilt_mrad[0]),
                                        **_aberrations(config))
                    probe.grid.match(potarr)
                    cutoff = float(min(probe.cutoff_angles))
                    check_cutoff(cutoff, plan.needed_mrad)
                scan, rows_shape = _scan(plan, config, r0, r1)
                p, a, sp = scan_patterns(probe, potarr, scan, dets,
                                         max_angle_mrad=plan.pattern_mrad, shape=rows_shape)
                z = {"patterns": p, "adf": a, "sim_pixel_mrad": np.asarray(sp),
                     "cutoff": np.asarray(cutoff), "cpu_s": np.asarray(time.process_time() - c0)}
                cache.save(name, **z)
                t_compute += time.time() - t0
                computed += (r1 - r0) * px
            pats.append(z["patterns"])
            adfs.append(z["adf"])
            cpu_chunks += float(z.get("cpu_s", np.nan))
            sim_pix = (float(z["sim_pixel_mrad"][0]), float(z["sim_pixel_mrad"][1]))
            cutoff = float(z["cutoff"])
            done += (r1 - r0) * px
            if computed:
                eta = (total - done) * t_compute / computed
            else:
                eta = plan.estimate_s * (total - done) / total
            yield SimulationEvent("multislice", done, total, time.time() - t_start, eta,
                                  f"configuration {k + 1}/{plan.configs}, rows {r1}/"
                                  f"{plan.positions[0]}")
        p = np.concatenate(pats)
        a = np.concatenate(adfs)
        w = np.float32(1.0 / plan.configs)
        acc = p * w if acc is None else acc + p * w
        adf_acc = a * w if adf_acc is None else adf_acc + a * w
        del pats, adfs, p, a
    yield SimulationEvent("writing", total, total, time.time() - t_start, None,
                          "detector, noise, ground truth")
    _finish(config, plan, crystal, static, sites, acc, adf_acc, sim_pix, cutoff, out,
            t_compute, t_start, cpu_chunks)
    return True


def _finish(config: SimulationConfig, plan: Plan, crystal: Crystal, static, sites, pats, adf,
            sim_pix, cutoff, out: Path, t_compute: float, t_start: float, cpu_chunks: float) -> None:
    import abtem

    c_finish = time.process_time()
    from abtem.core.energy import energy2sigma

    ny, nx = config.scan_shape
    step = config.scan_step_A
    ax, by, cz = plan.cell_A
    if plan.method == "periodic":
        y_A = config.scan_offset_A[0] % by + np.arange(ny) * step
        x_A = config.scan_offset_A[1] % ax + np.arange(nx) * step
        full = interpolate_cell_patterns(pats, (by, ax), y_A, x_A, config.source_fwhm_A)
        adf_img = np.clip(fourier_interpolate_cell(adf, (by, ax), y_A, x_A, config.source_fwhm_A),
                          0, None)
    else:
        m = plan.margin_px
        full = gaussian_scan_blur(pats, config.source_fwhm_A, (step, step))[m:m + ny, m:m + nx]
        adf_img = gaussian_scan_blur(adf, config.source_fwhm_A, (step, step))[m:m + ny, m:m + nx]
    del pats
    frac = detect(np.ascontiguousarray(full), sim_pix, config.detector)
    del full
    rng = np.random.default_rng(config.seed)
    expected = frac * np.float32(config.dose_e_per_pattern)
    counts = poisson_counts(rng, expected, counts_dtype(expected))
    del expected
    adf_counts = poisson_counts(rng, adf_img * config.dose_e_per_pattern, np.uint32).astype(np.float32)

    # ground truth: projected potential of the static structure (defects included)
    proj, samp, gy, gx = ground_truth_grid(config, plan, crystal, static)
    gt = sample_periodic(proj, samp, gy, gx)
    gt_low = sample_periodic(lowpass_periodic(proj, samp, config.lowpass_resolution_A), samp, gy, gx)
    sigma = float(energy2sigma(config.energy_ev))
    res = config.lowpass_resolution_A
    res_tag = f"{res:g}A"
    detected = frac.sum(axis=(-1, -2))
    defects = config.structure.defects
    site_px = np.array([[(s[0] - plan.scan_origin_A[0]) / step, (s[1] - plan.scan_origin_A[1]) / step]
                        for s in sites], float).reshape(-1, 2)
    label_method = LABEL_METHOD.format(res=res)
    params = {
        "sample": (config.name + ": " if config.name else "") + crystal.description
        + ("; defects: " + "; ".join(d.describe() for d in defects) if defects else ""),
        "simulator": "abTEM multislice (napari_4dstem_ml.simulate.engine)",
        "abtem_version": abtem.__version__,
        "energy_ev": config.energy_ev, "wavelength_A": config.wavelength_A,
        "convergence_mrad": config.convergence_mrad,
        "defocus_A": config.defocus_A, "c10_A": -config.defocus_A,
        "defocus_convention": "abTEM defocus = -C10; > 0 focuses below the entrance surface",
        "tilt_mrad": list(config.tilt_mrad),
        "astigmatism_C12_A": config.astigmatism_A,
        "astigmatism_phi12_deg": config.astigmatism_angle_deg,
        "scan_jitter_rms_A": config.scan_jitter_A,
        "thickness_A": plan.thickness_A, "unit_cell_A": list(plan.cell_A),
        "repeats_z": plan.repeats_z, "is_2d": plan.is_2d,
        "scan_step_A": [step, step], "scan_shape": [ny, nx],
        "scan_origin_in_cell_A": [config.scan_offset_A[0] % by, config.scan_offset_A[1] % ax],
        "scan_rotation_deg": 0.0,
        "dose_e_per_pattern": config.dose_e_per_pattern,
        "dose_e_per_A2": config.dose_e_per_pattern / step**2,
        "detected_fraction_mean": float(detected.mean()),
        "detected_fraction_min": float(detected.min()),
        "noise": "Poisson", "seed": config.seed,
        "frozen_phonons": config.frozen_phonons,
        "rms_displacement_A": json.dumps({**crystal.rms_A, **dict(config.rms_A)}),
        "source_size_fwhm_A": config.source_fwhm_A,
        "source_size_method": ("Gaussian envelope on the Fourier coefficients of the "
                               "position-periodic 4D intensity" if plan.method == "periodic" else
                               "Gaussian convolution of the noise-free 4D data over the scan"),
        "method": plan.method,
        "position_sampling": (f"{plan.positions} positions per unit cell, periodic Fourier "
                              "interpolation onto the scan (exact: the intensity is periodic "
                              "and band-limited to 2 alpha / lambda)" if plan.method == "periodic"
                              else f"every scan position plus a margin of {plan.margin_px}"),
        "detector": json.dumps(config.detector.to_dict()),
        "descan": "pattern centre = detector centre + centre_offset_px + descan_y_px*(iy/(ny-1)-0.5)"
                  " + descan_x_px*(ix/(nx-1)-0.5), in (ky, kx) pixels",
        "simulation_gpts": list(plan.gpts), "simulation_extent_A": list(plan.extent_A),
        "simulation_lateral_cells": list(plan.lateral),
        "simulation_pixel_mrad": list(sim_pix), "antialias_cutoff_mrad": cutoff,
        "needed_angle_mrad": plan.needed_mrad, "pattern_angle_mrad": plan.pattern_mrad, "probe_radius_A": plan.probe_radius_A,
        "slice_thickness_A": plan.slice_thickness_A, "n_slices": plan.n_slices,
        "parametrization": "lobato",
        "sigma_rad_per_VA": sigma,
        "ground_truth": "projected potential (V*A) of the static structure (no thermal "
                        "displacements), defects included, at the scan positions",
        "label_method": label_method,
        "simulation_config": config.to_json(), "plan": json.dumps(plan.to_dict()),
        "multislice_seconds_this_run": round(t_compute, 1),
        "estimate_seconds": round(plan.estimate_s, 1),
    }
    extras: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        f"ground_truth/potential_lowpass_{res_tag}": (gt_low.astype(np.float32), {
            "units": "V*A", "pixel_size_A": [step, step], "origin_A": [0.0, 0.0],
            "lowpass": f"Gaussian, 10% transfer at {res} A (sigma {lowpass_sigma_A(res):.4f} A)"}),
        **reference_datasets(GroundTruth(proj, samp, gy, gx), step, lowpass=False),
    }
    if config.store_noise_free:
        extras["noise_free/patterns"] = (frac, {
            "units": "fraction of the incident beam per detector pixel",
            "description": "noise-free intensities (source-size blur and detector geometry "
                           "applied); counts = Poisson(dose * patterns)"})
        extras["noise_free/detected_fraction"] = (detected.astype(np.float32), {
            "units": "fraction of the incident beam on the detector"})
    if config.scan_jitter_A > 0:
        m = plan.margin_px
        extras["scan/position_errors_A"] = (
            scan_jitter_A(config, plan)[m:m + ny, m:m + nx].astype(np.float32), {
                "units": "A", "axes": "(scan_y, scan_x, (dy, dx))",
                "description": "true probe position minus the nominal scan grid (random "
                               "jitter); the ground truth and label are on the nominal grid"})
    if defects:
        extras["defects/sites"] = (site_px, {
            "units": "scan pixels (row, col)",
            "description": json.dumps([d.describe() for d in defects])})
    vac = None
    if defects and all(d.kind == "vacancy" for d in defects):
        vac = site_px
    arrays = SampleArrays(
        counts=counts, scan_step_A=(step, step),
        detector_pixel_mrad=(config.detector.pixel_mrad,) * 2, energy_ev=config.energy_ev,
        convergence_mrad=config.convergence_mrad, label=(sigma * gt_low).astype(np.float32),
        label_pixel_A=step, label_origin_A=(0.0, 0.0), label_method=label_method,
        ground_truth=gt, ground_truth_units="V*A (projected potential, abTEM)", adf=adf_counts,
        adf_inner_mrad=config.adf_inner_mrad, adf_outer_mrad=config.adf_outer_mrad,
        params=params, vacancy_sites=vac,
        vacancy_description="; ".join(d.describe() for d in defects),
        extras=extras)
    params["total_seconds"] = round(time.time() - t_start, 1)
    params["multislice_cpu_seconds"] = round(cpu_chunks, 1)
    params["cpu_seconds"] = round(cpu_chunks + time.process_time() - c_finish, 1)
    write_sample(out, arrays)


def measure_throughput(gpts: int = 256, positions: int = 16, slices: int = 8) -> float:
    """Measure this machine's multislice rate on one core: CPU seconds per (probe position ×
    slice × grid point × log2(grid points)), the unit of :data:`.scene.SECONDS_PER_POINT_LOG2`
    (the probe and detector overhead of :data:`.scene.OVERHEAD_SLICES` included)."""
    import math

    import abtem
    from ase import Atoms

    from .scene import OVERHEAD_SLICES

    with _single_thread():
        atoms = Atoms("Si8", scaled_positions=np.random.default_rng(0).random((8, 3)),
                      cell=[12.0, 12.0, 2.0 * slices], pbc=True)
        pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=2.0, projection="infinite",
                              parametrization="lobato").build().compute(progress_bar=False)
        probe = abtem.Probe(energy=200e3, semiangle_cutoff=20.0)
        probe.grid.match(pot)
        scan = abtem.GridScan(start=(0, 0), end=(2.0, 2.0), gpts=(positions, 1), endpoint=False)
        det = abtem.PixelatedDetector(max_angle=60.0)
        probe.scan(pot, scan=scan, detectors=[det]).compute(progress_bar=False)  # warm-up
        c0 = time.process_time()
        probe.scan(pot, scan=scan, detectors=[det]).compute(progress_bar=False)
        cpu = time.process_time() - c0
    pts = gpts * gpts
    return cpu / (positions * (len(pot) + OVERHEAD_SLICES) * pts * math.log2(pts))


def run_simulation(config: SimulationConfig, out: str | Path,
                   log: Callable[[str], None] = print, **kwargs: Any) -> Path:
    """Run :func:`simulate` to the end, logging one line per event; returns the path."""
    last = None
    for ev in simulate(config, out, **kwargs):
        last = ev
        eta = "" if ev.eta_s is None else f", ETA {ev.eta_s:.0f} s"
        log(f"[{ev.stage}] {ev.done}/{ev.total} {ev.elapsed_s:.0f} s{eta} {ev.message}")
    if last is None or last.stage != "done":
        raise RuntimeError(f"simulation of {out} did not finish")
    return Path(out)
