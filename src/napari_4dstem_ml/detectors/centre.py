"""Bright-field disk centre and radius, and the descan fit.

Coordinates are detector pixels ``(cy, cx)`` with pixel ``(i, j)`` centred at ``(i, j)`` (the
convention of :mod:`.geometry`). Descan maps are over the scan ``(Ny, Nx)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class CentreError(ValueError):
    """A pattern or CoM map from which no centre can be found."""


def _check_pattern(p: Any) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 3:
        raise CentreError(f"the mean diffraction pattern must be a 2D (ky, kx) array, got shape {np.shape(p)}")
    if not np.all(np.isfinite(a)):
        raise CentreError("the mean diffraction pattern holds NaN or infinite values")
    return a


def _levels(a: np.ndarray) -> tuple[float, float]:
    """(background, disk) intensity levels of a pattern, robust to hot and dead pixels and to a
    disk that covers a small fraction of the detector: the pattern is 3 x 3 median-filtered;
    background = its 5th percentile; disk = the median of the pixels above half-way between
    the background and the filtered maximum (the disk's plateau, or about 0.7 of the peak of a
    disk blurred to a blob)."""
    from scipy import ndimage

    med = ndimage.median_filter(a, size=3, mode="nearest")
    bg = float(np.percentile(med, 5))
    peak = float(med.max())
    if not peak > bg:
        return bg, peak
    top = med[med > bg + 0.5 * (peak - bg)]
    return bg, float(np.median(top))


def _disk_component(a: np.ndarray) -> np.ndarray:
    """Boolean mask of the bright region half-way between background and disk level that holds
    the most signal (a hot pixel is a region too, but a small one)."""
    from scipy import ndimage

    bg, top = _levels(a)
    if not top > bg:
        raise CentreError("the mean diffraction pattern is flat: no bright-field disk to find")
    lab, n = ndimage.label(ndimage.median_filter(a, size=3, mode="nearest") > bg + 0.5 * (top - bg))
    if n == 0:
        raise CentreError("no pixel above the half-way threshold")
    signal = ndimage.sum_labels(np.clip(a - bg, 0, None), lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(signal)))


def find_bf_centre(mean_pattern: Any, *, iterations: int = 10) -> tuple[float, float]:
    """Sub-pixel centre ``(cy, cx)`` (px) of the bright-field disk of ``mean_pattern`` ``(ky, kx)``.

    Threshold half-way between background and disk level (see :func:`_levels`), keep the
    bright region holding the most signal, take its centre of mass; then refine by the
    intensity centre of mass of the background-subtracted pattern (values clipped at the disk
    level, so that a hot pixel weighs no more than a disk pixel) in a circular window of 1.5
    disk radii about the current estimate, iterated until it moves less than 1e-4 px. Accurate
    to a few hundredths of a pixel for a disk well inside the detector.
    """
    a = _check_pattern(mean_pattern)
    disk = _disk_component(a)
    yy, xx = np.nonzero(disk)
    cy, cx = float(yy.mean()), float(xx.mean())
    radius = float(np.sqrt(disk.sum() / np.pi))
    bg, top = _levels(a)
    w = np.clip(a - bg, 0.0, top - bg)
    iy = np.arange(a.shape[0], dtype=np.float64)[:, None]
    ix = np.arange(a.shape[1], dtype=np.float64)[None, :]
    win_r = 1.5 * radius + 2.0
    for _ in range(int(iterations)):
        win = (iy - cy) ** 2 + (ix - cx) ** 2 < win_r**2
        ww = w * win
        s = ww.sum()
        if not s > 0:
            break
        ny_, nx_ = float((ww * iy).sum() / s), float((ww * ix).sum() / s)
        moved = abs(ny_ - cy) + abs(nx_ - cx)
        cy, cx = ny_, nx_
        if moved < 1e-4:
            break
    return cy, cx


def bf_disk_radius(mean_pattern: Any, centre: tuple[float, float] | None = None) -> float:
    """Radius (px) of the bright-field disk: where the azimuthal mean of the pattern about
    ``centre`` falls half-way from the disk's central level to the background.

    The radial profile is taken in 0.25 px bins; the central level is its mean inside half a
    first-guess radius (the area of the half-way region), the background the pattern's robust
    low level (:func:`_levels`); the crossing is interpolated linearly. For a disk with a
    blurred but symmetric edge this is the edge itself; for a disk blurred to a blob it is the
    half width at half maximum. Hot pixels and a dark-field background do not move it.
    """
    a = _check_pattern(mean_pattern)
    if centre is None:
        centre = find_bf_centre(a)
    cy, cx = centre
    from scipy import ndimage

    # hot pixels clipped to the filtered maximum (a median filter would erode a small disk)
    clipped = np.minimum(a, ndimage.median_filter(a, size=3, mode="nearest").max())
    r0 = float(np.sqrt(_disk_component(a).sum() / np.pi))
    bg, _ = _levels(a)
    r = np.hypot(*np.meshgrid(np.arange(a.shape[0]) - cy, np.arange(a.shape[1]) - cx,
                              indexing="ij"))
    step = 0.25
    rmax = min(3.0 * r0 + 4.0, float(r.max()))
    sel = r < rmax
    idx = (r[sel] / step).astype(np.int64)
    counts = np.bincount(idx)
    prof = np.bincount(idx, weights=clipped[sel]) / np.maximum(counts, 1)
    radii = (np.arange(len(prof)) + 0.5) * step
    ok = counts > 0
    radii, prof = radii[ok], prof[ok]
    inner = radii < max(0.75, 0.5 * r0)
    level = float(np.average(prof[inner], weights=counts[ok][inner])) if inner.any() else float(prof[0])
    if not level > bg:
        raise CentreError("cannot tell the disk level from the background")
    half = bg + 0.5 * (level - bg)
    below = np.nonzero((prof < half) & (radii > 0.5 * r0))[0]
    if below.size == 0:
        raise CentreError("the bright-field disk does not fall off inside the detector")
    i = int(below[0])
    if i == 0:
        return float(radii[0])
    r_a, r_b, p_a, p_b = radii[i - 1], radii[i], prof[i - 1], prof[i]
    return float(r_a + (p_a - half) / (p_a - p_b) * (r_b - r_a))


@dataclass(frozen=True)
class BfDisk:
    """The bright-field disk measured on a mean pattern: centre ``(cy, cx)`` and radius (px),
    and the convergence semi-angle it implies (mrad) when the detector pixel is known."""

    centre: tuple[float, float]
    radius_px: float
    convergence_mrad: float | None = None

    def describe(self) -> str:
        a = (f" = {self.convergence_mrad:.4g} mrad" if self.convergence_mrad else "")
        return (f"bright-field disk: centre ({self.centre[0]:.2f}, {self.centre[1]:.2f}) px, "
                f"radius {self.radius_px:.2f} px{a}")


def measure_bf_disk(mean_pattern: Any, calibration: Any = None) -> BfDisk:
    """Centre and radius of the bright-field disk measured on ``mean_pattern``, and the
    convergence semi-angle α they imply (radius x detector mrad/px) when ``calibration`` gives
    the detector pixel: the value to offer a user whose file does not state α."""
    centre = find_bf_centre(mean_pattern)
    radius = bf_disk_radius(mean_pattern, centre)
    px = None if calibration is None else calibration.detector_pixel_mrad
    alpha = None if px is None else radius * float(np.sqrt(px[0] * px[1]))
    return BfDisk(centre, radius, alpha)


def bf_disk(mean_pattern: Any, calibration: Any = None) -> tuple[tuple[float, float], float]:
    """Centre (cy, cx) and radius (px) of the bright-field disk of a mean pattern.

    The radius is the convergence semi-angle divided by the detector pixel when the
    ``calibration`` (a :class:`~napari_4dstem_ml.dataset.Calibration`) gives both, otherwise
    it is measured from the pattern (:func:`bf_disk_radius`).
    """
    centre = find_bf_centre(mean_pattern)
    px = None if calibration is None else calibration.detector_pixel_mrad
    if px is not None and calibration.convergence_mrad:
        return centre, float(calibration.convergence_mrad / px[0])
    return centre, bf_disk_radius(mean_pattern, centre)


@dataclass(frozen=True)
class DescanFit:
    """Pattern centre as a plane over the scan: ``c = a + b*y + c*x`` (px; y, x scan indices).

    ``y`` holds (a, b, c) for the centre's ky coordinate, ``x`` for kx. ``rms`` is the residual
    of the inliers (px); ``n_outliers`` how many positions were rejected.
    """

    y: tuple[float, float, float]
    x: tuple[float, float, float]
    rms: float = 0.0
    n_outliers: int = 0

    def centre_at(self, iy: float, ix: float) -> tuple[float, float]:
        """Centre (cy, cx) px at scan position (iy, ix)."""
        return (
            self.y[0] + self.y[1] * iy + self.y[2] * ix,
            self.x[0] + self.x[1] * iy + self.x[2] * ix,
        )

    def centres(self, scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Per-position centre maps (cy, cx), each ``(Ny, Nx)`` float64."""
        yy, xx = np.meshgrid(
            np.arange(scan_shape[0], dtype=np.float64),
            np.arange(scan_shape[1], dtype=np.float64),
            indexing="ij",
        )
        return self.centre_at(yy, xx)  # type: ignore[return-value]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> DescanFit:
        d = json.loads(s)
        return cls(tuple(d["y"]), tuple(d["x"]), d.get("rms", 0.0), d.get("n_outliers", 0))


def fit_descan(com_y: Any, com_x: Any, *, n_sigma: float = 4.0, iterations: int = 10) -> DescanFit:
    """Fit planes to per-position centres ``com_y``, ``com_x`` ``(Ny, Nx)`` (px).

    Robust: least squares, then repeatedly drop positions whose residual (either axis) exceeds
    ``n_sigma`` × 1.4826 × median absolute residual, and refit. NaN positions are ignored.
    """
    cy = np.asarray(com_y, dtype=np.float64)
    cx = np.asarray(com_x, dtype=np.float64)
    if cy.ndim != 2 or cy.shape != cx.shape:
        raise CentreError(f"com_y and com_x must be 2D maps of one shape, got {cy.shape}, {cx.shape}")
    yy, xx = np.meshgrid(np.arange(cy.shape[0]), np.arange(cy.shape[1]), indexing="ij")
    a = np.stack([np.ones(cy.size), yy.ravel(), xx.ravel()], 1).astype(np.float64)
    by, bx = cy.ravel(), cx.ravel()
    keep = np.isfinite(by) & np.isfinite(bx)
    if keep.sum() < 3:
        raise CentreError("need at least 3 finite centres to fit a descan plane")
    py = px = np.zeros(3)
    for _ in range(int(iterations)):
        py = np.linalg.lstsq(a[keep], by[keep], rcond=None)[0]
        px = np.linalg.lstsq(a[keep], bx[keep], rcond=None)[0]
        res = np.hypot(by - a @ py, bx - a @ px)
        res[~np.isfinite(res)] = np.inf
        mad = 1.4826 * float(np.median(res[keep]))
        new = np.isfinite(res) & (res <= n_sigma * max(mad, 1e-9))
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
    res = np.hypot(by - a @ py, bx - a @ px)
    rms = float(np.sqrt(np.mean(res[keep] ** 2)))
    return DescanFit(tuple(float(v) for v in py), tuple(float(v) for v in px), rms, int((~keep).sum()))
