"""Reading simulated items back for training and scoring: noise-free patterns, counts,
ground truth, calibrations; and redrawing Poisson noise at another dose.

Arrays: 4D ``(scan_y, scan_x, ky, kx)``; images ``(scan_y, scan_x)`` on the scan grid
(pixel (0, 0) = scan position (0, 0)). Noise-free patterns are beam fractions per detector
pixel (float32); counts = Poisson(dose × fraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .scene import SimulationConfig


@dataclass
class SimulatedItem:
    """One simulated data set. ``noise_free`` and ``counts`` are read only when asked for
    (``None`` otherwise); ``lowpass`` is the ground truth low-passed to ``lowpass_A``."""

    path: Path
    config: SimulationConfig
    energy_ev: float
    convergence_mrad: float
    scan_step_A: float
    detector_pixel_mrad: float
    dose_e_per_pattern: float
    thickness_A: float
    ground_truth: np.ndarray  # V·Å
    lowpass: np.ndarray  # V·Å
    lowpass_A: float
    sigma_rad_per_VA: float
    adf: np.ndarray
    detected_fraction: np.ndarray  # (scan_y, scan_x)
    defect_sites: np.ndarray  # (n, 2) (row, col) scan pixels
    noise_free: np.ndarray | None = None
    counts: np.ndarray | None = None
    attrs: dict[str, Any] | None = None

    @property
    def phase(self) -> np.ndarray:
        """Exact projected phase ``sigma * V`` (rad) at the scan positions."""
        return self.sigma_rad_per_VA * self.ground_truth


def read_item(path: str | Path, noise_free: bool = True, counts: bool = False,
              rows: slice | None = None) -> SimulatedItem:
    """Read a file written by :func:`.engine.simulate` (``rows``: a slice of scan rows of the
    4D arrays, default all)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "simulation_config" not in f.attrs:
            raise ValueError(f"{path} was not written by napari_4dstem_ml.simulate.engine "
                             "(no 'simulation_config' attribute)")
        cfg = SimulationConfig.from_json(str(f.attrs["simulation_config"]))
        sel = rows if rows is not None else slice(None)
        low = [k for k in f["ground_truth"] if k.startswith("potential_lowpass_")]
        if not low:
            raise ValueError(f"{path}: no /ground_truth/potential_lowpass_* dataset")
        nf = None
        if noise_free:
            if "noise_free" not in f:
                raise ValueError(f"{path} holds no noise-free patterns (simulated with "
                                 "store_noise_free=False)")
            nf = f["noise_free/patterns"][sel]
        det = (f["noise_free/detected_fraction"][()] if "noise_free" in f else
               np.full(cfg.scan_shape, np.nan, np.float32))
        sites = f["defects/sites"][()] if "defects" in f else np.zeros((0, 2))
        return SimulatedItem(
            path=path, config=cfg, energy_ev=float(f.attrs["energy_ev"]),
            convergence_mrad=float(f.attrs["convergence_mrad"]),
            scan_step_A=float(cfg.scan_step_A), detector_pixel_mrad=float(cfg.detector.pixel_mrad),
            dose_e_per_pattern=float(cfg.dose_e_per_pattern),
            thickness_A=float(f.attrs["thickness_A"]),
            ground_truth=f["ground_truth/potential"][()],
            lowpass=f[f"ground_truth/{low[0]}"][()], lowpass_A=float(cfg.lowpass_resolution_A),
            sigma_rad_per_VA=float(f.attrs["sigma_rad_per_VA"]), adf=f["adf/image"][()],
            detected_fraction=det, defect_sites=np.asarray(sites, float),
            noise_free=nf, counts=f["datacube/data"][sel] if counts else None,
            attrs={k: f.attrs[k] for k in f.attrs})


def redraw_counts(noise_free: np.ndarray, dose_e_per_pattern: float,
                  rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Poisson counts (float32) of noise-free beam fractions at ``dose_e_per_pattern``."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if dose_e_per_pattern <= 0:
        raise ValueError(f"dose_e_per_pattern = {dose_e_per_pattern}: must be > 0")
    lam = np.clip(np.asarray(noise_free, np.float64), 0, None) * dose_e_per_pattern
    return rng.poisson(lam).astype(np.float32)
