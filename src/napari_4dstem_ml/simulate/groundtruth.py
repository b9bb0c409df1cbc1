"""Ground truth of a simulation: the projected potential of the static structure, its
low-passed version and their values at the scan positions.

:class:`GroundTruth` blurs the potential on its fine grid *before* sampling it at the scan
positions — the only correct way at coarse steps, where the sampled grid is aliased — and
:func:`reference_datasets` is what every generator stores of it (:data:`LABEL_REFERENCE`,
:data:`LOWPASS_REFERENCE`) for the resolution-aware scores.

Images are ``(y, x)``; ``sampling`` is (dy, dx) in Å with grid point (0, 0) at the origin of
the potential's cell. The potential is periodic with that cell. Units: V·Å (projected
potential); the object phase is ``sigma * V`` with ``sigma`` from
``abtem.core.energy.energy2sigma`` (rad / (V·Å)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import LABEL_SIGMA_A, LOWPASS_RESOLUTION_A


def sample_periodic(img: np.ndarray, sampling: tuple[float, float], y_A, x_A, order: int = 3
                    ) -> np.ndarray:
    """Values of the periodic image ``img`` at the grid ``y_A`` × ``x_A`` (Å), by spline
    interpolation of order ``order`` (exact at the image's own grid points)."""
    from scipy.ndimage import map_coordinates

    gy, gx = np.meshgrid(np.asarray(y_A) / sampling[0], np.asarray(x_A) / sampling[1], indexing="ij")
    return map_coordinates(img, [gy, gx], order=order, mode="grid-wrap")


def lowpass_sigma_A(resolution_A: float) -> float:
    """Standard deviation (Å) of the Gaussian whose transfer is 10 % at spatial frequency
    ``1 / resolution_A``: exp(-2 pi^2 sigma^2 q^2) = 0.1."""
    q = 1.0 / resolution_A
    return float(np.sqrt(np.log(10.0) / (2 * np.pi**2 * q**2)))


def lowpass_periodic(img: np.ndarray, sampling: tuple[float, float], resolution_A: float
                     ) -> np.ndarray:
    """Gaussian low-pass of a periodic image with 10 % transfer at ``1 / resolution_A``."""
    from scipy.ndimage import gaussian_filter

    sig = lowpass_sigma_A(resolution_A)
    return gaussian_filter(img, sigma=(sig / sampling[0], sig / sampling[1]), mode="wrap")


def label_from_phase(phase: np.ndarray, sampling: tuple[float, float], origin_A,
                     scan_extent_A: tuple[float, float], pixel_A: float, resolution_A: float,
                     pad_A: float, offset_A: tuple[float, float]):
    """Blurred exact phase on its own grid covering ``scan_extent_A`` (first to last scan
    position, Å) plus ``pad_A`` on every side: returns (image, label origin relative to scan
    position (0, 0)). ``origin_A`` is scan position (0, 0) in the phase's frame. The Gaussian
    low-pass transfers 10 % at spatial frequency 1/``resolution_A``."""
    blurred = lowpass_periodic(phase, sampling, resolution_A)
    ext = np.asarray(scan_extent_A, float)
    lab_origin = (-pad_A + offset_A[0], -pad_A + offset_A[1])
    n = (int(round((ext[0] + 2 * pad_A) / pixel_A)) + 1, int(round((ext[1] + 2 * pad_A) / pixel_A)) + 1)
    ly = origin_A[0] + lab_origin[0] + np.arange(n[0]) * pixel_A
    lx = origin_A[1] + lab_origin[1] + np.arange(n[1]) * pixel_A
    return sample_periodic(blurred, sampling, ly, lx), lab_origin


def projected_potential(atoms, max_sampling_A: float = 0.02) -> tuple[np.ndarray, tuple[float, float]]:
    """The projected potential (V·Å, ``(y, x)``, float64) of all of ``atoms`` through the
    whole cell along z (abTEM, Lobato parametrisation, infinite projection, periodic), on a
    grid no coarser than ``max_sampling_A``; returns (image, (dy, dx) sampling)."""
    import abtem

    lx, ly, lz = (float(v) for v in atoms.cell.lengths())
    gpts = (int(np.ceil(lx / max_sampling_A)), int(np.ceil(ly / max_sampling_A)))
    pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=lz, projection="infinite",
                          parametrization="lobato", periodic=True)
    arr = pot.build().compute(progress_bar=False, scheduler="synchronous")
    proj = np.asarray(arr.project().array, np.float64).T
    return proj, (ly / gpts[1], lx / gpts[0])


#: HDF5 dataset of the potential at the ptychographic label's resolution (a Gaussian of
#: ``metrics.LABEL_SIGMA_A`` = 0.2 Å), blurred before sampling
LABEL_REFERENCE = f"ground_truth/potential_label_sigma_{LABEL_SIGMA_A:g}A"
#: HDF5 dataset of the potential low-passed to 10 % transfer at 0.4 Å
#: (``metrics.LOWPASS_RESOLUTION_A``), blurred before sampling (the engine's training label)
LOWPASS_REFERENCE = f"ground_truth/potential_lowpass_{LOWPASS_RESOLUTION_A:g}A"


@dataclass(frozen=True)
class GroundTruth:
    """A projected potential (V·Å, ``(y, x)``, periodic) on its fine grid of ``sampling``
    (dy, dx) Å, and the scan positions ``y_A``, ``x_A`` (Å, in its frame)."""

    potential: np.ndarray
    sampling: tuple[float, float]
    y_A: np.ndarray
    x_A: np.ndarray

    def at(self, sigma_A: float = 0.0) -> np.ndarray:
        """The potential blurred by a Gaussian of standard deviation ``sigma_A`` (Å) on its
        fine grid, then sampled at the scan positions: ``(scan_y, scan_x)`` float64, V·Å."""
        from scipy.ndimage import gaussian_filter

        s = float(sigma_A)
        if not (s >= 0 and np.isfinite(s)):
            raise ValueError(f"sigma_A must be >= 0, got {sigma_A!r}")
        img = self.potential
        if s > 0:
            img = gaussian_filter(img, (s / self.sampling[0], s / self.sampling[1]), mode="wrap")
        return sample_periodic(img, self.sampling, self.y_A, self.x_A)


def reference_datasets(truth: GroundTruth, step_A: float, lowpass: bool = True
                       ) -> dict[str, tuple[np.ndarray, dict]]:
    """:data:`LABEL_REFERENCE` (and, with ``lowpass``, :data:`LOWPASS_REFERENCE`) of ``truth``
    as the writer's extra datasets (float32, V·Å, on the scan grid of step ``step_A``)."""
    common = {"units": "V*A", "pixel_size_A": [float(step_A)] * 2, "origin_A": [0.0, 0.0],
              "blurred": "on the simulation's fine grid, before sampling at the scan positions"}
    out = {LABEL_REFERENCE: (truth.at(LABEL_SIGMA_A).astype(np.float32), {
        **common, "sigma_A": LABEL_SIGMA_A,
        "description": "the ptychographic label's resolution (metrics.LABEL_SIGMA_A)"})}
    if lowpass:
        sig = lowpass_sigma_A(LOWPASS_RESOLUTION_A)
        out[LOWPASS_REFERENCE] = (truth.at(sig).astype(np.float32), {
            **common, "sigma_A": sig,
            "lowpass": f"Gaussian, 10% transfer at {LOWPASS_RESOLUTION_A} A (sigma {sig:.4f} A)"})
    return out
