"""Small synthetic 4D-STEM data with a known answer, for tests and examples.

The object is a projected "potential" ``V`` ``(Ny, Nx)``: Gaussian atoms on a square lattice
with a second, lighter sublattice at the cell centres, and one vacancy near the middle. The
probe sees ``Vp = V`` blurred by a Gaussian probe. Each diffraction pattern ``(ky, kx)`` has

- a bright-field disk (radius ``bf_radius_px``, soft edge) whose intensity falls with ``Vp``
  and whose position shifts along ``-grad Vp`` (a centre-of-mass-like signal), and
- a dark-field ring (1.1–2.5 disk radii) whose intensity grows with ``Vp``,

scaled to ``dose`` expected electrons per pattern, with Poisson noise. The label is ``V``
(optionally blurred by ``label_blur`` scan pixels). Axis order ``(scan_y, scan_x, ky, kx)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dataset import Calibration, Dataset4D

__all__ = ["SyntheticData", "make_potential", "make_synthetic"]


@dataclass
class SyntheticData:
    """``dataset`` (in memory, float32), ``truth`` = V ``(Ny, Nx)``, ``label`` (what a model
    is trained against), ``probe_potential`` = the probe-blurred V the patterns encode."""

    dataset: Dataset4D
    truth: np.ndarray
    label: np.ndarray
    probe_potential: np.ndarray


def make_potential(
    scan_shape: tuple[int, int], spacing: float = 6.0, atom_sigma: float = 1.0, vacancy: bool = True
) -> np.ndarray:
    """Gaussian atoms (amplitude 1) on a square lattice of ``spacing`` scan pixels, lighter
    atoms (0.5) at the cell centres, one heavy atom missing near the middle; ``(Ny, Nx)``."""
    ny, nx = scan_shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    v = np.zeros(scan_shape)
    off = spacing / 4
    cy, cx = ny / 2, nx / 2
    sites = []
    for iy in range(-1, int(ny / spacing) + 2):
        for ix in range(-1, int(nx / spacing) + 2):
            sites.append((off + iy * spacing, off + ix * spacing, 1.0))
            sites.append((off + (iy + 0.5) * spacing, off + (ix + 0.5) * spacing, 0.5))
    if vacancy:
        heavy = [s for s in sites if s[2] == 1.0]
        gone = min(heavy, key=lambda s: (s[0] - cy) ** 2 + (s[1] - cx) ** 2)
        sites.remove(gone)
    for y, x, a in sites:
        v += a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * atom_sigma**2))
    return v


def make_synthetic(
    scan_shape: tuple[int, int] = (48, 48),
    detector_shape: tuple[int, int] = (32, 32),
    *,
    spacing: float = 6.0,
    atom_sigma: float = 1.0,
    probe_sigma: float = 0.8,
    bf_radius_px: float = 6.0,
    centre_offset: tuple[float, float] = (0.4, -0.6),
    shift_gain: float = 1.5,
    dose: float = 5000.0,
    detector_pixel_mrad: float = 2.0,
    energy_ev: float = 80e3,
    scan_step_A: float = 0.2,
    label_blur: float = 0.0,
    vacancy: bool = True,
    noise: bool = True,
    seed: int = 0,
) -> SyntheticData:
    """Build the synthetic data set (see the module docstring); deterministic for ``seed``."""
    from scipy.ndimage import gaussian_filter

    ny, nx = scan_shape
    ky, kx = detector_shape
    v = make_potential(scan_shape, spacing, atom_sigma, vacancy)
    vp = gaussian_filter(v, probe_sigma, mode="wrap") if probe_sigma > 0 else v.copy()
    gy, gx = np.gradient(vp)
    c0y = (ky - 1) / 2 + centre_offset[0]
    c0x = (kx - 1) / 2 + centre_offset[1]
    qy, qx = np.mgrid[0:ky, 0:kx].astype(np.float64)
    r0 = np.hypot(qy - c0y, qx - c0x)
    ring = ((r0 > 1.1 * bf_radius_px) & (r0 < 2.5 * bf_radius_px)) * np.exp(
        -(r0 - 1.1 * bf_radius_px) / bf_radius_px
    )
    ring_sum = ring.sum()
    disk_area = np.pi * bf_radius_px**2
    rng = np.random.default_rng(seed)
    data = np.empty((ny, nx, ky, kx), np.float32)
    for y in range(ny):
        cy = c0y - shift_gain * gy[y][:, None, None]
        cx = c0x - shift_gain * gx[y][:, None, None]
        r = np.hypot(qy[None] - cy, qx[None] - cx)
        disk = 1.0 / (1.0 + np.exp((r - bf_radius_px) / 0.7))
        bf = disk * (1.0 - 0.4 * vp[y][:, None, None]) / disk_area
        df = ring[None] * (0.15 * vp[y][:, None, None]) / ring_sum
        expected = dose * (bf + df)
        data[y] = rng.poisson(expected) if noise else expected
    label = gaussian_filter(v, label_blur, mode="wrap") if label_blur > 0 else v.copy()
    cal = Calibration(
        scan_step=(scan_step_A, scan_step_A),
        scan_units="A",
        detector_pixel=(detector_pixel_mrad, detector_pixel_mrad),
        detector_units="mrad",
        energy_ev=energy_ev,
        convergence_mrad=bf_radius_px * detector_pixel_mrad,
    )
    ds = Dataset4D(data, cal, reader="synthetic", metadata={"synthetic": True, "seed": seed})
    return SyntheticData(dataset=ds, truth=v.astype(np.float32), label=label.astype(np.float32),
                         probe_potential=vp.astype(np.float32))
