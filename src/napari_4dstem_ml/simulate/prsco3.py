"""Thick PrScO3 [001] 4D-STEM sample (test data) simulated with abTEM multislice.

Parameters follow Chen et al., Science 372, 826 (2021): 300 keV, 21.4 mrad, about 21 nm
thick, −20 nm defocus, scan step 0.41 Å, 64 × 64 scan, EMPAD at ≈ 0.82 mrad/px.

Structure: orthorhombic Pbnm, a = 5.61, b = 5.78, c = 8.03 Å. The fractional coordinates
below are GENERIC GdFeO3-type Pbnm values chosen close to those of rare-earth orthoscandates;
they are not copied from the PrScO3 refinements (Gesing, Uecker & Buhl, Z. Kristallogr. NCS
224, 365 (2009); Liferovich & Mitchell, J. Solid State Chem. 177, 2188 (2004)), which were
not available offline here. Octahedral tilts are therefore approximate; the cation sublattice
(what ADF and the tests see) is insensitive to them.

Speed-up (exact for a perfect crystal): the 4D intensity is band-limited in probe position to
2α/λ, and periodic with the projected unit cell, so the multislice runs on an odd grid of
positions finer than λ/(2α) inside one unit cell and the 64 × 64 scan is obtained by periodic
Fourier interpolation (:func:`..detector.fourier_interpolate_cell`). Frozen-phonon averaging
is done before the interpolation, so every unit cell of the scan shows the same (averaged)
thermal configuration.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cache import PartsCache
from .detector import (
    DetectorModel,
    detect,
    fourier_interpolate_cell,
    interpolate_cell_patterns,
    poisson_counts,
)
from .groundtruth import GroundTruth, label_from_phase, reference_datasets, sample_periodic
from .multislice import scan_patterns
from .writer import SampleArrays, write_sample

#: Pbnm general positions (x, y, z) -> 8 equivalents
_PBNM_OPS = (
    (1, 1, 1, 0, 0, 0), (-1, -1, 1, 0, 0, 0.5), (1, -1, -1, 0.5, 0.5, 0), (-1, 1, -1, 0.5, 0.5, 0.5),
    (-1, -1, -1, 0, 0, 0), (1, 1, -1, 0, 0, 0.5), (-1, 1, 1, 0.5, 0.5, 0), (1, -1, 1, 0.5, 0.5, 0.5),
)
#: generic GdFeO3-type Pbnm sites (see module docstring): element, x, y, z
SITES = (("Pr", 0.9880, 0.0480, 0.25), ("Sc", 0.5, 0.0, 0.0),
         ("O", 0.1050, 0.4650, 0.25), ("O", 0.6960, 0.3000, 0.0550))

LABEL_METHOD = (
    "exact object phase sigma * projected potential of the static lattice (not wrapped; for a "
    "thick crystal a projected-potential reference, not a transmission phase), Gaussian low-pass "
    "with 10% transfer at 0.4 A, on its own 0.1 A grid with padding and a sub-pixel offset"
)


@dataclass(frozen=True)
class PrScO3Config:
    """All parameters of the PrScO3 simulation. Lengths in Å, angles in mrad, energy in eV."""

    energy_ev: float = 300e3
    convergence_mrad: float = 21.4
    defocus_nm_paper: float = -20.0
    abtem_defocus_A: float = 200.0  # abTEM: defocus = -C10
    lattice_A: tuple[float, float, float] = (5.61, 5.78, 8.03)
    thickness_cells: int = 26
    window_cells: tuple[int, int] = (4, 4)  # along a (x), b (y)
    gpts: int = 400
    slices_per_cell: int = 2
    cell_samples: tuple[int, int] = (27, 25)  # (along b = y, along a = x), odd
    scan_shape: tuple[int, int] = (64, 64)
    scan_step_A: float = 0.41
    scan_origin_A: tuple[float, float] = (0.37, 0.21)  # (y, x) in the crystal
    frozen_phonons: int = 4
    rms_displacement_A: tuple[tuple[str, float], ...] = (("Pr", 0.07), ("Sc", 0.07), ("O", 0.09))
    dose_e_per_pattern: float = 5.0e4
    source_fwhm_A: float = 0.4
    detector: DetectorModel = field(default_factory=lambda: DetectorModel(
        pixel_mrad=0.82, centre_offset_px=(-1.1, 1.4), descan_y_px=(-0.7, 0.3),
        descan_x_px=(0.2, -0.9)))
    adf_inner_mrad: float = 60.0
    adf_outer_mrad: float = 110.0
    label_pixel_A: float = 0.1
    label_resolution_A: float = 0.4
    label_pad_A: float = 2.0
    label_offset_A: tuple[float, float] = (-0.044, 0.061)
    seed: int = 20210521
    rows_per_chunk: int = 3

    @classmethod
    def tiny(cls) -> PrScO3Config:
        """A configuration that runs in seconds (for tests)."""
        return cls(thickness_cells=2, window_cells=(2, 2), gpts=128, slices_per_cell=2,
                   cell_samples=(5, 5), scan_shape=(4, 4), frozen_phonons=2, abtem_defocus_A=20.0,
                   detector=DetectorModel(shape=(48, 48), pixel_mrad=2.1),
                   adf_inner_mrad=50.0, adf_outer_mrad=70.0, rows_per_chunk=5)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Cache key of the per-configuration multislice results (independent of the number
        of frozen-phonon configurations, so more can be added to a finished run)."""
        skip = {"frozen_phonons", "dose_e_per_pattern", "source_fwhm_A", "scan_shape",
                "scan_step_A", "scan_origin_A", "label_pixel_A", "label_resolution_A",
                "label_pad_A", "label_offset_A"}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def unit_cell(lattice_A=(5.61, 5.78, 8.03)):
    """The 20-atom Pbnm unit cell (ASE ``Atoms``), c along z (the beam)."""
    from ase import Atoms

    symbols, frac = [], []
    for el, x, y, z in SITES:
        seen: list[np.ndarray] = []
        for sx, sy, sz, tx, ty, tz in _PBNM_OPS:
            p = np.mod([sx * x + tx, sy * y + ty, sz * z + tz], 1.0)
            if not any(np.allclose(np.minimum(abs(p - q), 1 - abs(p - q)), 0, atol=1e-4) for q in seen):
                seen.append(p)
        symbols += [el] * len(seen)
        frac += seen
    return Atoms(symbols=symbols, scaled_positions=np.array(frac), cell=list(lattice_A), pbc=True)


def _config_patterns(cfg: PrScO3Config, k: int, cache: PartsCache, log):
    import abtem

    a, b, c = cfg.lattice_A
    my, mx = cfg.cell_samples
    part = f"fp{k:02d}"
    z = cache.load(part)
    if z is not None:
        return z["patterns"], z["adf"], tuple(z["sim_pixel_mrad"]), float(z["cutoff"])
    t0 = time.time()
    atoms = unit_cell(cfg.lattice_A) * (cfg.window_cells[0], cfg.window_cells[1], cfg.thickness_cells)
    rng = np.random.default_rng([cfg.seed, k])
    sig = dict(cfg.rms_displacement_A)
    s = np.array([sig[el] for el in atoms.get_chemical_symbols()])
    atoms.positions += rng.normal(size=atoms.positions.shape) * s[:, None]
    pot = abtem.Potential(atoms, gpts=cfg.gpts, slice_thickness=c / cfg.slices_per_cell,
                          projection="infinite", parametrization="lobato", periodic=True)
    potarr = pot.build().compute(progress_bar=False)
    probe = abtem.Probe(energy=cfg.energy_ev, semiangle_cutoff=cfg.convergence_mrad,
                        defocus=cfg.abtem_defocus_A)
    probe.grid.match(potarr)
    cutoff = float(min(probe.cutoff_angles))
    if cutoff < cfg.adf_outer_mrad:
        raise ValueError(f"simulation grid reaches {cutoff:.0f} mrad < ADF outer angle "
                         f"{cfg.adf_outer_mrad} mrad: raise gpts")
    x0 = (cfg.window_cells[0] // 2) * a
    y0 = (cfg.window_cells[1] // 2) * b
    pats, adfs = [], []
    for r0 in range(0, my, cfg.rows_per_chunk):
        r1 = min(my, r0 + cfg.rows_per_chunk)
        chunk = f"fp{k:02d}_rows{r0:03d}"
        z = cache.load(chunk)
        if z is not None:
            pats.append(z["patterns"])
            adfs.append(z["adf"])
            sim_pix = tuple(z["sim_pixel_mrad"])
            continue
        scan = abtem.GridScan(start=(x0, y0 + r0 * b / my), end=(x0 + a, y0 + r1 * b / my),
                              gpts=(mx, r1 - r0), endpoint=False)
        p, q, sim_pix = scan_patterns(probe, potarr, scan, cfg)
        cache.save(chunk, patterns=p, adf=q, sim_pixel_mrad=np.asarray(sim_pix))
        pats.append(p)
        adfs.append(q)
        log(f"prsco3: phonon config {k}, cell rows {r0}-{r1} of {my}: {time.time() - t0:.0f} s")
    p, q = np.concatenate(pats), np.concatenate(adfs)
    cache.save(part, patterns=p, adf=q, sim_pixel_mrad=np.asarray(sim_pix), cutoff=np.asarray(cutoff))
    return p, q, sim_pix, cutoff


def static_projected_potential(cfg: PrScO3Config) -> tuple[np.ndarray, tuple[float, float]]:
    """The static lattice's projected potential (V·Å, ``(y, x)``, periodic with one unit cell):
    one cell's times the number of cells, and its (dy, dx) sampling (Å)."""
    import abtem

    a, b, c = cfg.lattice_A
    cell_pot = abtem.Potential(unit_cell(cfg.lattice_A) * (1, 1, 1), sampling=0.05,
                               slice_thickness=c / cfg.slices_per_cell, projection="infinite",
                               parametrization="lobato", periodic=True)
    proj = np.asarray(cell_pot.build().compute(progress_bar=False).project().array, np.float64).T
    proj *= cfg.thickness_cells
    return proj, (b / proj.shape[0], a / proj.shape[1])


def ground_truth_grid(cfg: PrScO3Config) -> tuple[np.ndarray, tuple[float, float], np.ndarray, np.ndarray]:
    """:func:`static_projected_potential`, its sampling and the scan positions' y and x (Å):
    ``/ground_truth/potential`` is its value there (no multislice is run)."""
    proj, samp = static_projected_potential(cfg)
    ny, nx = cfg.scan_shape
    return (proj, samp, cfg.scan_origin_A[0] + np.arange(ny) * cfg.scan_step_A,
            cfg.scan_origin_A[1] + np.arange(nx) * cfg.scan_step_A)


def simulate_prsco3(cfg: PrScO3Config, out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Simulate the PrScO3 sample and write it to ``out`` (HDF5); per-configuration results
    are cached in ``<out>.parts/<config digest>/`` so a rerun resumes."""
    import abtem
    from abtem.core.energy import energy2sigma

    out = Path(out)
    cache = PartsCache(out, cfg.digest(), cfg.to_dict())
    abtem.config.set({"device": "cpu"})
    t0 = time.time()
    pats = adf = None
    for k in range(cfg.frozen_phonons):
        p, q, sim_pix, cutoff = _config_patterns(cfg, k, cache, log)
        pats = p / cfg.frozen_phonons if pats is None else pats + p / cfg.frozen_phonons
        adf = q / cfg.frozen_phonons if adf is None else adf + q / cfg.frozen_phonons
    t_sim = time.time() - t0
    a, b, c = cfg.lattice_A
    ny, nx = cfg.scan_shape
    y_A = cfg.scan_origin_A[0] + np.arange(ny) * cfg.scan_step_A
    x_A = cfg.scan_origin_A[1] + np.arange(nx) * cfg.scan_step_A
    full = interpolate_cell_patterns(pats, (b, a), y_A, x_A, cfg.source_fwhm_A)
    adf_img = np.clip(fourier_interpolate_cell(adf, (b, a), y_A, x_A, cfg.source_fwhm_A), 0, None)
    frac = detect(full, sim_pix, cfg.detector).reshape(-1, *cfg.detector.shape)
    del full
    rng = np.random.default_rng(cfg.seed)
    counts = poisson_counts(rng, frac * cfg.dose_e_per_pattern).reshape(ny, nx, *cfg.detector.shape)
    adf_counts = poisson_counts(rng, adf_img * cfg.dose_e_per_pattern, np.uint32).astype(np.float32)

    proj, samp = static_projected_potential(cfg)
    gt = sample_periodic(proj, samp, y_A, x_A)
    extent = ((ny - 1) * cfg.scan_step_A, (nx - 1) * cfg.scan_step_A)
    label, lab_origin = label_from_phase(energy2sigma(cfg.energy_ev) * proj, samp, cfg.scan_origin_A,
                                         extent, cfg.label_pixel_A, cfg.label_resolution_A,
                                         cfg.label_pad_A, cfg.label_offset_A)
    params = {
        "sample": "PrScO3 [001] (orthorhombic Pbnm), thick cross-section",
        "structure": "generic GdFeO3-type Pbnm fractional coordinates (see napari_4dstem_ml."
                     "simulate.prsco3.SITES), lattice a,b,c from Chen et al. 2021; not a "
                     "published PrScO3 refinement",
        "structure_sites": json.dumps(SITES),
        "simulator": "abTEM multislice", "abtem_version": abtem.__version__,
        "energy_ev": cfg.energy_ev, "convergence_mrad": cfg.convergence_mrad,
        "defocus_nm_paper_convention": cfg.defocus_nm_paper,
        "abtem_defocus_A": cfg.abtem_defocus_A,
        "lattice_A": list(cfg.lattice_A), "thickness_A": cfg.thickness_cells * c,
        "scan_step_A": [cfg.scan_step_A, cfg.scan_step_A], "scan_shape": list(cfg.scan_shape),
        "scan_origin_in_crystal_A": list(cfg.scan_origin_A), "scan_rotation_deg": 0.0,
        "dose_e_per_pattern": cfg.dose_e_per_pattern,
        "dose_e_per_A2": cfg.dose_e_per_pattern / cfg.scan_step_A**2,
        "detected_fraction_mean": float(frac.sum(axis=(-1, -2)).mean()),
        "noise": "Poisson", "seed": cfg.seed, "frozen_phonons": cfg.frozen_phonons,
        "rms_displacement_A": json.dumps(cfg.rms_displacement_A),
        "source_size_fwhm_A": cfg.source_fwhm_A,
        "source_size_method": "Gaussian envelope on the Fourier coefficients of the "
                              "position-periodic 4D intensity (= convolution over the scan)",
        "position_sampling": f"{cfg.cell_samples} positions per unit cell, periodic Fourier "
                             "interpolation onto the scan (exact for a band-limited, periodic "
                             "intensity)",
        "detector": json.dumps(cfg.detector.to_dict()),
        "descan": "pattern centre = detector centre + centre_offset_px + descan_y_px*(iy/(ny-1)-0.5)"
                  " + descan_x_px*(ix/(nx-1)-0.5), in (ky, kx) pixels",
        "simulation_gpts": cfg.gpts, "simulation_window_cells": list(cfg.window_cells),
        "simulation_pixel_mrad": list(sim_pix), "antialias_cutoff_mrad": cutoff,
        "slice_thickness_A": c / cfg.slices_per_cell, "parametrization": "lobato",
        "label_method": LABEL_METHOD, "config": json.dumps(cfg.to_dict()),
        "multislice_seconds_this_run": round(t_sim, 1),  # ~0 when resumed from the cache
    }
    arrays = SampleArrays(
        counts=counts, scan_step_A=(cfg.scan_step_A,) * 2,
        detector_pixel_mrad=(cfg.detector.pixel_mrad,) * 2, energy_ev=cfg.energy_ev,
        convergence_mrad=cfg.convergence_mrad, label=label, label_pixel_A=cfg.label_pixel_A,
        label_origin_A=lab_origin, label_method=LABEL_METHOD, ground_truth=gt,
        ground_truth_units="V*A (projected potential of the static lattice, abTEM)",
        adf=adf_counts, adf_inner_mrad=cfg.adf_inner_mrad, adf_outer_mrad=cfg.adf_outer_mrad,
        params=params,
        extras=reference_datasets(GroundTruth(proj, samp, y_A, x_A), cfg.scan_step_A))
    write_sample(out, arrays)
    log(f"prsco3: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {time.time() - t0:.0f} s")
    return out
