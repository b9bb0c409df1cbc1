"""How far a ptychographic label can be trusted: its phase on the scan grid, the FRC
self-consistency of two half-data reconstructions, r against a known ground truth (simulations),
and warnings where it is unlikely to be right (sample too thick for the chosen mode, phase
wrapping, strong dark-field scattering, halves that disagree).

Images are ``(y, x)``; object pixels and lengths in Å; phases in rad.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .backends import ObjectGeometry

#: the half-data FRC is judged over the scanned field, less this margin (Å) at each edge
EDGE_MARGIN_A = 1.0


def on_scan_grid(phase: np.ndarray, geometry: ObjectGeometry, scan_shape: tuple[int, int],
                 order: int = 3) -> np.ndarray:
    """The object ``phase`` resampled at every scan position ``(scan_y, scan_x)`` (spline
    ``order``), using the back end's own probe positions: no registration."""
    iy, ix = np.mgrid[0:scan_shape[0], 0:scan_shape[1]].astype(np.float64)
    m = np.asarray(geometry.scan_to_pixel)
    rows = m[0, 0] * iy + m[0, 1] * ix + m[0, 2]
    cols = m[1, 0] * iy + m[1, 1] * ix + m[1, 2]
    return ndimage.map_coordinates(np.asarray(phase, np.float64), [rows, cols], order=order,
                                   mode="nearest").astype(np.float32)


def scanned_box(geometry: ObjectGeometry, scan_shape: tuple[int, int],
                object_shape: tuple[int, int], margin_A: float = EDGE_MARGIN_A
                ) -> tuple[slice, slice]:
    """The object pixels inside the scanned field (less ``margin_A`` at each edge)."""
    m = np.asarray(geometry.scan_to_pixel)
    corners = np.array([[0, 0, 1], [scan_shape[0] - 1, 0, 1], [0, scan_shape[1] - 1, 1],
                        [scan_shape[0] - 1, scan_shape[1] - 1, 1]], float) @ m.T
    lo = np.ceil(corners.min(0) + margin_A / geometry.pixel_size_A).astype(int)
    hi = np.floor(corners.max(0) - margin_A / geometry.pixel_size_A).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, object_shape)
    if np.any(hi - lo < 8):
        raise ValueError(f"the scanned field is too small for an FRC ({(hi - lo).tolist()} object px)")
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


@dataclass(frozen=True)
class HalfDataFRC:
    """FRC of the two half-data reconstructions over the scanned field: ``resolution_A`` where
    it falls below the half-bit curve (``None``: not up to Nyquist, ``nyquist_A``), and the
    Pearson ``r`` of the two halves' phases."""

    resolution_A: float | None
    nyquist_A: float
    r: float
    freq_per_A: list[float] = field(repr=False)
    frc: list[float] = field(repr=False)
    threshold: list[float] = field(repr=False)


def half_data_frc(phase_a: np.ndarray, phase_b: np.ndarray, geometry: ObjectGeometry,
                  scan_shape: tuple[int, int]) -> HalfDataFRC:
    """Self-consistency of two reconstructions of disjoint halves of the patterns on the same
    object grid (``geometry`` of either; they share the scan)."""
    from ..metrics import frc, pearson_r

    shape = tuple(min(a, b) for a, b in zip(phase_a.shape, phase_b.shape))
    box = scanned_box(geometry, scan_shape, shape)
    a = np.asarray(phase_a, np.float64)[box]
    b = np.asarray(phase_b, np.float64)[box]
    f = frc(a, b, pixel_size=geometry.pixel_size_A)
    return HalfDataFRC(f.resolution, 2 * geometry.pixel_size_A, float(pearson_r(a, b)),
                       f.freq.tolist(), f.frc.tolist(), f.threshold.tolist())


def transfer_limit_A(energy_ev: float, convergence_mrad: float, reach_mrad: float) -> float:
    """The finest period (Å) the data can carry: a pattern's pixel at angle θ holds object
    frequencies q with |λq − θ| ≤ α, so nothing beyond (α + θ_max)/λ is measured, θ_max the
    detector's reach (the largest circle inside it, about the centre)."""
    from ..dataset import electron_wavelength_A

    return electron_wavelength_A(energy_ev) / ((convergence_mrad + reach_mrad) * 1e-3)


def label_resolution_A(frc_result: HalfDataFRC | None, pixel_size_A: float,
                       transfer_limit: float) -> float:
    """The label's resolution: the half-data FRC's half-bit crossing (else the Nyquist period
    of its grid), but never finer than what the data carry (:func:`transfer_limit_A`): two
    halves reconstructed alike agree beyond it on what neither measured."""
    res = 2.0 * float(pixel_size_A)
    if frc_result is not None and frc_result.resolution_A is not None:
        res = float(frc_result.resolution_A)
    return max(res, float(transfer_limit))


@dataclass(frozen=True)
class TruthScore:
    """The label on the scan grid against a ground-truth image on the same grid: Pearson r
    against the truth low-passed to the label's ``resolution_A`` (Gaussian, 10 % transfer
    there, :func:`napari_4dstem_ml.metrics.lowpass`) and against the raw truth; the sub-pixel
    shift (scan px) that :func:`napari_4dstem_ml.metrics.compare` found (≈ 0 when the
    geometry is right)."""

    r_at_resolution: float
    r_raw: float
    resolution_A: float
    shift_px: tuple[float, float]


def truth_score(label_on_scan: np.ndarray, truth: np.ndarray, scan_step_A: float,
                resolution_A: float) -> TruthScore:
    from ..metrics import compare, lowpass

    truth = np.asarray(truth, np.float64)
    if truth.shape != label_on_scan.shape:
        raise ValueError(f"the ground truth is {truth.shape} but the scan is {label_on_scan.shape}; "
                         "it must be on the scan grid")
    low = lowpass(truth, scan_step_A, resolution_A) if resolution_A > 2 * scan_step_A else truth
    rep = compare(label_on_scan, low, pixel_size=scan_step_A)
    raw = compare(label_on_scan, truth, pixel_size=scan_step_A)
    return TruthScore(float(rep.pearson_r), float(raw.pearson_r), float(resolution_A),
                      (float(rep.shift_yx[0]), float(rep.shift_yx[1])))


def depth_of_field_A(energy_ev: float, convergence_mrad: float) -> float:
    """The probe's depth of field λ/α² (Å): the thickness up to which a single-slice
    (projection) object describes the sample."""
    from ..dataset import electron_wavelength_A

    a = convergence_mrad * 1e-3
    return electron_wavelength_A(energy_ev) / (a * a)


def dark_field_fraction(mean_pattern: np.ndarray, detector_pixel_mrad: float,
                        convergence_mrad: float) -> float:
    """Fraction of the mean pattern's counts beyond 1.2 α of its centre of mass."""
    p = np.clip(np.asarray(mean_pattern, np.float64), 0, None)
    tot = p.sum()
    if tot <= 0:
        return math.nan
    yy, xx = np.indices(p.shape)
    cy, cx = (p * yy).sum() / tot, (p * xx).sum() / tot
    r = np.hypot(yy - cy, xx - cx) * detector_pixel_mrad
    return float(p[r > 1.2 * convergence_mrad].sum() / tot)


#: dark-field fraction (within the detector's reach) above which the sample scatters more than
#: a weak, thin object does (a monolayer puts about 1 % there: the MoS2 sample 1.2 %)
DARK_FIELD_WARN = 0.10
#: the two halves' phases must correlate at least this well
HALVES_R_WARN = 0.7


@dataclass(frozen=True)
class LabelQuality:
    """All checks of one label. ``warnings`` are sentences for the user (empty: none)."""

    frc: HalfDataFRC | None
    resolution_A: float
    transfer_limit_A: float
    truth: TruthScore | None
    phase_range_rad: float
    dark_field_fraction: float
    depth_of_field_A: float
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        if self.frc is not None:
            for k in ("freq_per_A", "frc", "threshold"):
                d["frc"].pop(k)
        return d

    def summary(self) -> str:
        parts = [f"resolution {self.resolution_A:.2f} Å (the data carry {self.transfer_limit_A:.2f} Å)"]
        if self.frc is not None:
            res = (f"{self.frc.resolution_A:.2f} Å" if self.frc.resolution_A is not None
                   else f"no crossing up to Nyquist ({self.frc.nyquist_A:.2f} Å)")
            parts.append(f"half-data FRC (half-bit) {res}, halves r {self.frc.r:.3f}")
        if self.truth is not None:
            parts.append(f"r against the ground truth {self.truth.r_at_resolution:.3f} at "
                         f"{self.truth.resolution_A:.2f} Å ({self.truth.r_raw:.3f} raw)")
        parts.append(f"dark-field fraction {self.dark_field_fraction:.2f}")
        return "; ".join(parts)


def trust_warnings(*, mode: str, slices: int, slice_thickness_A: float | None,
                   sample_thickness_A: float | None, dof_A: float, phase_range: float,
                   df_fraction: float, frc_result: HalfDataFRC | None) -> tuple[str, ...]:
    """Sentences saying why the label may be wrong (none when nothing is suspicious)."""
    out = []
    if sample_thickness_A is not None:
        if mode == "single-slice" and sample_thickness_A > dof_A:
            out.append(
                f"the sample ({sample_thickness_A:.0f} Å) is thicker than the probe's depth of "
                f"field λ/α² = {dof_A:.0f} Å: a single-slice object cannot describe it; use "
                f"multislice with slices of at most {dof_A:.0f} Å, or train from simulation")
        elif mode == "multislice" and slice_thickness_A is not None and slice_thickness_A > dof_A:
            out.append(f"slices of {slice_thickness_A:.0f} Å are thicker than the depth of field "
                       f"λ/α² = {dof_A:.0f} Å: use more, thinner slices")
        elif mode == "multislice" and slice_thickness_A is not None and \
                slices * slice_thickness_A < 0.8 * sample_thickness_A:
            out.append(f"{slices} slices of {slice_thickness_A:.0f} Å cover "
                       f"{slices * slice_thickness_A:.0f} Å of the {sample_thickness_A:.0f} Å sample")
    if phase_range > math.pi:
        out.append(f"the phase spans {phase_range:.2f} rad (> π): a strong phase object, "
                   "possibly wrapped; the sample may be too thick or strongly scattering")
    if math.isfinite(df_fraction) and df_fraction > DARK_FIELD_WARN:
        out.append(f"{100 * df_fraction:.0f} % of the counts lie beyond 1.2 α (dark field): the "
                   "sample scatters strongly, as thick samples do; a single-slice label is "
                   "unlikely to be right")
    if frc_result is not None and frc_result.r < HALVES_R_WARN:
        out.append(f"the two half-data reconstructions agree poorly (r {frc_result.r:.2f}): "
                   "the label is not reproducible; try more iterations or check the calibration")
    return tuple(out)


def crop_to_scan(phase: np.ndarray, geometry: ObjectGeometry, scan_shape: tuple[int, int],
                 margin_A: float = EDGE_MARGIN_A) -> tuple[np.ndarray, ObjectGeometry]:
    """The object cut to the scanned field plus ``margin_A`` on every side (the back end's
    padding beyond it is unconstrained noise), with its geometry moved accordingly."""
    box = scanned_box(geometry, scan_shape, phase.shape, margin_A=-margin_A)
    y0, x0 = box[0].start, box[1].start
    m = [list(r) for r in geometry.scan_to_pixel]
    m[0][2] -= y0
    m[1][2] -= x0
    origin = (geometry.origin_A[0] + y0 * geometry.pixel_size_A,
              geometry.origin_A[1] + x0 * geometry.pixel_size_A)
    rows = (tuple(m[0]), tuple(m[1]))
    return (np.ascontiguousarray(phase[box]),
            ObjectGeometry(geometry.pixel_size_A, rows, origin))  # type: ignore[arg-type]
