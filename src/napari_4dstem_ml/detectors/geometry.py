"""Virtual-detector geometry: masks, presets, and the boundary convention.

Axis order of a mask is ``(ky, kx)``; it is float32 (weights, 0/1 for the standard shapes).

**Boundary convention.** Pixel ``(i, j)`` has its centre at coordinates ``(i, j)`` (row, column).
With the pattern centre at sub-pixel ``(cy, cx)``, the pixel's radius is
``r = hypot((i - cy) * sy, (j - cx) * sx)`` (``sy, sx`` the pixel size, 1 for pixel units), and
the pixel belongs to an annulus when ``inner <= r < outer``: the inner edge is inclusive, the
outer edge exclusive. A disk is an annulus with ``inner = 0``. No partial-pixel weighting.

**Presets** from the convergence semi-angle α (see :func:`presets`): BF ``0 <= r < α``
(the BF edge at exactly ``r = α`` is therefore *excluded* — a measure-zero set of pixels;
pass a slightly larger outer radius to include it), ABF ``α/2 <= r < α``,
ADF ``1.5α <= r < 4α``, HAADF ``3α <= r < r_max``, where ``r_max`` is the largest radius that
stays inside the detector from the centre (:func:`max_radius_px`): detectors reaching past it are
clipped to it (a full ring, no corners), and one whose inner radius is already beyond it is left
out of the presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration

KINDS = ("disk", "annulus", "custom")
UNITS = ("mrad", "pixels")


class DetectorError(ValueError):
    """A detector definition or mask request that cannot be honoured."""


def _radius_map(
    shape: tuple[int, int], centre_yx: tuple[float, float], scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Distance (float64, units of ``scale``) of every pixel centre from ``centre_yx`` (px)."""
    ky, kx = (int(n) for n in shape)
    cy, cx = (float(c) for c in centre_yx)
    y = (np.arange(ky, dtype=np.float64) - cy) * float(scale[0])
    x = (np.arange(kx, dtype=np.float64) - cx) * float(scale[1])
    return np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)


def annular_mask(
    shape: tuple[int, int],
    centre_yx: tuple[float, float],
    inner_px: float,
    outer_px: float,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Annulus ``inner <= r < outer`` as a float32 ``(ky, kx)`` mask of 0/1.

    ``centre_yx`` is in pixels; radii are in pixels, or in the units of ``scale`` (the pixel size
    (dky, dkx), e.g. mrad per pixel) when given. ``outer`` may be ``inf``.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise DetectorError(f"mask shape must be two positive sizes (ky, kx), got {shape!r}")
    inner, outer = float(inner_px), float(outer_px)
    if not (inner >= 0 and outer >= inner) or math.isnan(outer):
        raise DetectorError(f"need 0 <= inner <= outer, got inner={inner_px!r}, outer={outer_px!r}")
    r = _radius_map(shape, centre_yx, scale)
    return ((r >= inner) & (r < outer)).astype(np.float32)


def max_radius_px(shape: tuple[int, int], centre_yx: tuple[float, float]) -> float:
    """Largest radius (px) of a circle about ``centre_yx`` that stays inside the detector.

    The detector spans ``-0.5 .. k - 0.5`` along each axis (pixel edges).
    """
    ky, kx = shape
    cy, cx = centre_yx
    return float(max(0.0, min(cy + 0.5, ky - 0.5 - cy, cx + 0.5, kx - 0.5 - cx)))


@dataclass(frozen=True)
class Detector:
    """A virtual detector. Radii are in ``units`` ("mrad", or "pixels" when uncalibrated).

    ``kind`` "disk" (``inner`` is 0), "annulus", or "custom" (``custom_mask`` is a ``(ky, kx)``
    weight array, drawn for the pattern centre it was made for; it is not shifted).
    """

    name: str
    kind: str = "annulus"
    inner: float = 0.0
    outer: float = math.inf
    units: str = "mrad"
    custom_mask: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DetectorError(f"detector kind must be one of {KINDS}, got {self.kind!r}")
        if self.units not in UNITS:
            raise DetectorError(f"detector units must be one of {UNITS}, got {self.units!r}")
        if self.kind == "custom":
            if self.custom_mask is None or np.ndim(self.custom_mask) != 2:
                raise DetectorError(f"custom detector {self.name!r} needs a 2D (ky, kx) custom_mask")
            m = np.array(self.custom_mask, dtype=np.float32)
            m.setflags(write=False)
            object.__setattr__(self, "custom_mask", m)
            return
        inner, outer = float(self.inner), float(self.outer)
        if self.kind == "disk" and inner != 0:
            raise DetectorError(f"a disk detector has inner radius 0, got {self.inner!r}")
        if not (inner >= 0 and outer > inner):
            raise DetectorError(
                f"detector {self.name!r}: need 0 <= inner < outer, got {self.inner!r}, {self.outer!r}"
            )
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "outer", outer)

    def radii_px(self, calibration: Calibration | None = None) -> tuple[float, float]:
        """(inner, outer) in pixels along ky (needs a calibration for mrad radii)."""
        if self.units == "pixels":
            return self.inner, self.outer
        if calibration is None:
            raise DetectorError(f"detector {self.name!r} is in mrad: a Calibration is needed")
        dky, _ = calibration.require_detector_mrad(f"detector {self.name!r} in mrad")
        return self.inner / dky, self.outer / dky

    def to_mask(
        self,
        shape: tuple[int, int],
        centre_yx: tuple[float, float],
        calibration: Calibration | None = None,
    ) -> np.ndarray:
        """Float32 ``(ky, kx)`` mask for a pattern centred at ``centre_yx`` (px).

        mrad radii use the calibration's pixel size per axis (non-square pixels give an ellipse
        in pixels, a circle in mrad).
        """
        if self.kind == "custom":
            if tuple(self.custom_mask.shape) != tuple(shape):
                raise DetectorError(
                    f"custom detector {self.name!r} has shape {self.custom_mask.shape}, "
                    f"the data's detector is {tuple(shape)}"
                )
            return np.array(self.custom_mask, dtype=np.float32)
        if self.units == "pixels":
            scale = (1.0, 1.0)
        else:
            if calibration is None:
                raise DetectorError(f"detector {self.name!r} is in mrad: a Calibration is needed")
            scale = calibration.require_detector_mrad(f"detector {self.name!r} in mrad")
        return annular_mask(shape, centre_yx, self.inner, self.outer, scale=scale)

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "inner": self.inner if math.isfinite(self.inner) else None,
            "outer": self.outer if math.isfinite(self.outer) else None,
            "units": self.units,
        }
        if self.kind == "custom":
            d["custom_mask"] = self.custom_mask.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detector:
        d = dict(d)
        if d.get("outer") is None:
            d["outer"] = math.inf
        if d.get("inner") is None:
            d["inner"] = 0.0
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def presets(alpha_mrad: float, max_mrad: float, units: str = "mrad") -> dict[str, Detector]:
    """BF, ABF, ADF and HAADF detectors for convergence semi-angle ``alpha_mrad``.

    ``max_mrad`` is the largest radius inside the detector (:func:`max_radius_px` × pixel size);
    outer radii beyond it are clipped to it and detectors starting beyond it are left out.
    Both numbers are in ``units`` (use "pixels" with a BF-disk radius in px when uncalibrated).
    """
    a, rmax = float(alpha_mrad), float(max_mrad)
    if not (a > 0 and rmax > 0):
        raise DetectorError(f"alpha and max radius must be positive, got {alpha_mrad!r}, {max_mrad!r}")
    spec = {
        "BF": ("disk", 0.0, a),
        "ABF": ("annulus", 0.5 * a, a),
        "ADF": ("annulus", 1.5 * a, 4.0 * a),
        "HAADF": ("annulus", 3.0 * a, rmax),
    }
    out: dict[str, Detector] = {}
    for name, (kind, inner, outer) in spec.items():
        outer = min(outer, rmax)
        if inner >= outer:
            continue
        out[name] = Detector(name, kind, inner, outer, units)
    return out


def masks_for(
    detectors: list[Detector] | tuple[Detector, ...],
    shape: tuple[int, int],
    centre_yx: tuple[float, float],
    calibration: Calibration | None = None,
) -> np.ndarray:
    """Stack of masks ``(n, ky, kx)`` float32 for ``detectors`` at ``centre_yx``."""
    return np.stack([d.to_mask(shape, centre_yx, calibration) for d in detectors])
