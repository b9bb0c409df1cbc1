"""Monolayer MoS2 4D-STEM sample (training data) simulated with abTEM multislice.

Parameters follow Jiang et al., Nature 559, 343 (2018): 80 keV, 21.4 mrad, scan step
≈ 0.2–0.25 Å, EMPAD 128 × 128 at ≈ 0.84 mrad/px. One sulfur monovacancy (one S of an S2
column removed) lies in the lower half of the scan; the upper half is the training region.

abTEM and ASE are imported inside the functions (optional extra ``[sim]``).
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
    gaussian_scan_blur,
    poisson_counts,
)
from .groundtruth import GroundTruth, label_from_phase, reference_datasets, sample_periodic
from .multislice import scan_patterns
from .writer import SampleArrays, write_sample

LABEL_METHOD_EXACT = (
    "exact object phase: sigma * projected potential of the simulated structure (abTEM, "
    "Lobato parametrisation), Gaussian low-pass with 10% transfer at 0.4 A (ptychography's "
    "information limit), resampled onto its own 0.1 A grid with padding and a sub-pixel offset; "
    "NOT a ptychographic reconstruction"
)


@dataclass(frozen=True)
class MoS2Config:
    """All parameters of the MoS2 simulation. Lengths in Å, angles in mrad, energy in eV."""

    energy_ev: float = 80e3
    convergence_mrad: float = 21.4
    defocus_A: float = 0.0
    a_A: float = 3.16
    thickness_S_S_A: float = 3.17
    scan_shape: tuple[int, int] = (64, 64)
    scan_step_A: float = 0.24
    margin_px: int = 2
    cells: tuple[int, int] = (10, 6)  # orthogonal cells (a, a*sqrt(3)) along x, y
    gpts: int = 512
    slice_thickness_A: float = 2.0
    cell_height_A: float = 6.0
    vacancy_frac: tuple[float, float] = (0.75, 0.5)  # (row, col) fraction of the scan
    dose_e_per_pattern: float = 3.0e4
    source_fwhm_A: float = 0.4
    detector: DetectorModel = field(default_factory=lambda: DetectorModel(pixel_mrad=0.84))
    adf_inner_mrad: float = 60.0
    adf_outer_mrad: float = 200.0
    label_pixel_A: float = 0.1
    label_resolution_A: float = 0.4
    label_pad_A: float = 2.0
    label_offset_A: tuple[float, float] = (0.037, -0.052)
    seed: int = 20180719
    rows_per_chunk: int = 4

    @classmethod
    def tiny(cls) -> MoS2Config:
        """A configuration that runs in seconds (for tests)."""
        return cls(scan_shape=(6, 6), scan_step_A=0.4, margin_px=1, cells=(4, 3), gpts=192,
                   vacancy_frac=(0.7, 0.5), detector=DetectorModel(shape=(48, 48), pixel_mrad=2.1,
                   centre_offset_px=(0.5, -0.4), descan_y_px=(0.3, 0.0), descan_x_px=(0.0, 0.3)),
                   adf_outer_mrad=150.0, rows_per_chunk=4)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Cache key of the multislice results (ignores dose, noise seed, blur and label)."""
        skip = {"dose_e_per_pattern", "seed", "source_fwhm_A", "label_pixel_A",
                "label_resolution_A", "label_pad_A", "label_offset_A"}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def build_atoms(cfg: MoS2Config):
    """The MoS2 supercell (ASE ``Atoms``), the scan origin (y, x) in Å (scan position (0, 0),
    margin excluded) and the removed S atom's (y, x) in Å."""
    import abtem
    from ase.build import mx2

    at = mx2(formula="MoS2", kind="2H", a=cfg.a_A, thickness=cfg.thickness_S_S_A, vacuum=2.0)
    at = abtem.orthogonalize_cell(at)
    at = at * (cfg.cells[0], cfg.cells[1], 1)
    cell = at.cell.lengths()
    at.set_cell([cell[0], cell[1], cfg.cell_height_A])
    at.center(axis=2)
    ny, nx = cfg.scan_shape
    nfy, nfx = ny + 2 * cfg.margin_px, nx + 2 * cfg.margin_px
    start_y = cell[1] / 2 - nfy * cfg.scan_step_A / 2
    start_x = cell[0] / 2 - nfx * cfg.scan_step_A / 2
    origin = (start_y + cfg.margin_px * cfg.scan_step_A, start_x + cfg.margin_px * cfg.scan_step_A)
    target = (origin[0] + cfg.vacancy_frac[0] * (ny - 1) * cfg.scan_step_A,
              origin[1] + cfg.vacancy_frac[1] * (nx - 1) * cfg.scan_step_A)
    pos = at.get_positions()
    s_idx = np.flatnonzero(at.numbers == 16)
    d = np.hypot(pos[s_idx, 1] - target[0], pos[s_idx, 0] - target[1])
    column = s_idx[d < d.min() + 0.1]
    remove = column[np.argmax(pos[column, 2])]
    site = (float(pos[remove, 1]), float(pos[remove, 0]))
    del at[int(remove)]
    return at, origin, (start_y, start_x), site


def _simulate_chunks(cfg: MoS2Config, cache: PartsCache, log: Callable[[str], None]):
    """Run the multislice in chunks of scan rows, caching each chunk in ``cache``."""
    import abtem

    abtem.config.set({"device": "cpu"})
    atoms, origin, start, site = build_atoms(cfg)
    potarr = _potential(cfg, atoms)
    probe = abtem.Probe(energy=cfg.energy_ev, semiangle_cutoff=cfg.convergence_mrad,
                        defocus=cfg.defocus_A)
    probe.grid.match(potarr)
    cutoff = min(probe.cutoff_angles)
    if cutoff < cfg.adf_outer_mrad:
        raise ValueError(f"simulation grid reaches {cutoff:.0f} mrad < ADF outer angle "
                         f"{cfg.adf_outer_mrad} mrad: raise gpts")
    step = cfg.scan_step_A
    nfy = cfg.scan_shape[0] + 2 * cfg.margin_px
    nfx = cfg.scan_shape[1] + 2 * cfg.margin_px
    pats, adfs = [], []
    sim_pix = None
    for r0 in range(0, nfy, cfg.rows_per_chunk):
        r1 = min(nfy, r0 + cfg.rows_per_chunk)
        part = f"rows_{r0:04d}_{r1:04d}"
        z = cache.load(part)
        if z is not None:
            pats.append(z["patterns"])
            adfs.append(z["adf"])
            sim_pix = tuple(z["sim_pixel_mrad"])
            continue
        t0 = time.time()
        scan = abtem.GridScan(start=(start[1], start[0] + r0 * step),
                              end=(start[1] + nfx * step, start[0] + r1 * step),
                              gpts=(nfx, r1 - r0), endpoint=False)
        p, a, sim_pix = scan_patterns(probe, potarr, scan, cfg)
        cache.save(part, patterns=p, adf=a, sim_pixel_mrad=np.asarray(sim_pix))
        pats.append(p)
        adfs.append(a)
        log(f"mos2: scan rows {r0}-{r1} of {nfy} in {time.time() - t0:.1f} s")
    proj, pot_sampling = _projected(potarr)
    return (np.concatenate(pats), np.concatenate(adfs), sim_pix, proj, pot_sampling,
            origin, site, abtem.__version__, cutoff)


def _potential(cfg: MoS2Config, atoms):
    """The multislice potential of ``atoms`` (abTEM, Lobato, infinite projection), built."""
    import abtem

    pot = abtem.Potential(atoms, gpts=cfg.gpts, slice_thickness=cfg.slice_thickness_A,
                          projection="infinite", parametrization="lobato")
    return pot.build().compute(progress_bar=False)


def _projected(potarr) -> tuple[np.ndarray, tuple[float, float]]:
    """Projected potential (V·Å, ``(y, x)``) of a built potential and its (dy, dx) sampling."""
    return (np.asarray(potarr.project().array, np.float64).T,
            (float(potarr.sampling[1]), float(potarr.sampling[0])))


def ground_truth_grid(cfg: MoS2Config) -> tuple[np.ndarray, tuple[float, float], np.ndarray, np.ndarray]:
    """The projected potential (V·Å, ``(y, x)``) on the simulation's grid, its (dy, dx)
    sampling (Å) and the scan positions' y and x (Å): ``/ground_truth/potential`` is its value
    there (no multislice is run)."""
    atoms, origin, _, _ = build_atoms(cfg)
    proj, sampling = _projected(_potential(cfg, atoms))
    ny, nx = cfg.scan_shape
    return (proj, sampling, origin[0] + np.arange(ny) * cfg.scan_step_A,
            origin[1] + np.arange(nx) * cfg.scan_step_A)


def simulate_mos2(cfg: MoS2Config, out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Simulate the MoS2 sample and write it to ``out`` (HDF5). Intermediate multislice
    results are cached next to it (``<out>.parts/<config digest>/``) so a rerun resumes."""
    from abtem.core.energy import energy2sigma

    out = Path(out)
    cache = PartsCache(out, cfg.digest(), cfg.to_dict())
    t0 = time.time()
    pats, adf, sim_pix, proj, pot_sampling, origin, site, version, cutoff = _simulate_chunks(cfg, cache, log)
    t_sim = time.time() - t0
    m = cfg.margin_px
    ny, nx = cfg.scan_shape
    step = (cfg.scan_step_A, cfg.scan_step_A)
    pats = gaussian_scan_blur(pats, cfg.source_fwhm_A, step)[m:m + ny, m:m + nx]
    adf = gaussian_scan_blur(adf, cfg.source_fwhm_A, step)[m:m + ny, m:m + nx]
    frac = detect(pats, sim_pix, cfg.detector).reshape(-1, *cfg.detector.shape)
    rng = np.random.default_rng(cfg.seed)
    counts = poisson_counts(rng, frac * cfg.dose_e_per_pattern).reshape(ny, nx, *cfg.detector.shape)
    adf_counts = poisson_counts(rng, adf * cfg.dose_e_per_pattern, np.uint32).astype(np.float32)
    y_A = origin[0] + np.arange(ny) * cfg.scan_step_A
    x_A = origin[1] + np.arange(nx) * cfg.scan_step_A
    gt = sample_periodic(proj, pot_sampling, y_A, x_A)
    sigma = energy2sigma(cfg.energy_ev)
    extent = ((ny - 1) * cfg.scan_step_A, (nx - 1) * cfg.scan_step_A)
    label, lab_origin = label_from_phase(sigma * proj, pot_sampling, origin, extent,
                                         cfg.label_pixel_A, cfg.label_resolution_A,
                                         cfg.label_pad_A, cfg.label_offset_A)
    vac = np.array([[(site[0] - origin[0]) / cfg.scan_step_A, (site[1] - origin[1]) / cfg.scan_step_A]])
    params = {
        "sample": "MoS2 monolayer (2H), one sulfur monovacancy in the lower half",
        "simulator": "abTEM multislice", "abtem_version": version,
        "energy_ev": cfg.energy_ev, "convergence_mrad": cfg.convergence_mrad,
        "defocus_A": cfg.defocus_A, "lattice_a_A": cfg.a_A, "thickness_A": cfg.thickness_S_S_A,
        "scan_step_A": [cfg.scan_step_A, cfg.scan_step_A], "scan_shape": list(cfg.scan_shape),
        "dose_e_per_pattern": cfg.dose_e_per_pattern,
        "dose_e_per_A2": cfg.dose_e_per_pattern / cfg.scan_step_A**2,
        "detected_fraction_mean": float(frac.sum(axis=(-1, -2)).mean()),
        "noise": "Poisson", "seed": cfg.seed, "frozen_phonons": 0,
        "source_size_fwhm_A": cfg.source_fwhm_A,
        "source_size_method": "Gaussian convolution of the noise-free 4D data and ADF over the "
                              "scan (incoherent source-size blur)",
        "detector": json.dumps(cfg.detector.to_dict()),
        "descan": "pattern centre = detector centre + centre_offset_px + descan_y_px*(iy/(ny-1)-0.5)"
                  " + descan_x_px*(ix/(nx-1)-0.5), in (ky, kx) pixels",
        "simulation_gpts": cfg.gpts, "simulation_extent_A": [float(pot_sampling[0] * proj.shape[0]),
                                                            float(pot_sampling[1] * proj.shape[1])],
        "simulation_pixel_mrad": list(sim_pix), "antialias_cutoff_mrad": float(cutoff),
        "slice_thickness_A": cfg.slice_thickness_A, "parametrization": "lobato",
        "scan_origin_in_cell_A": list(origin), "label_method": LABEL_METHOD_EXACT,
        "training_region": "upper half (rows < scan_y/2)", "config": json.dumps(cfg.to_dict()),
        "multislice_seconds_this_run": round(t_sim, 1),  # ~0 when resumed from the cache
    }
    arrays = SampleArrays(
        counts=counts, scan_step_A=step, detector_pixel_mrad=(cfg.detector.pixel_mrad,) * 2,
        energy_ev=cfg.energy_ev, convergence_mrad=cfg.convergence_mrad, label=label,
        label_pixel_A=cfg.label_pixel_A, label_origin_A=lab_origin, label_method=LABEL_METHOD_EXACT,
        ground_truth=gt, ground_truth_units="V*A (projected potential, abTEM)", adf=adf_counts,
        adf_inner_mrad=cfg.adf_inner_mrad, adf_outer_mrad=cfg.adf_outer_mrad, params=params,
        vacancy_sites=vac,
        extras=reference_datasets(GroundTruth(proj, pot_sampling, y_A, x_A), cfg.scan_step_A))
    write_sample(out, arrays)
    log(f"mos2: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {time.time() - t0:.0f} s")
    return out

