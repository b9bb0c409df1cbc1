"""On-the-fly augmentation of training patches, so a model learns what transfers.

Every training step draws, per patch, a physically meaningful variation of the data:

- **joint symmetry**: one of the 8 rotations/mirrors of the square (D4), applied to the scan
  axes and the detector axes *together* (a rotated or mirrored sample rotates or mirrors
  both), optionally followed by a small continuous joint rotation;
- **scan step**: the patch is sampled at a scan step ``s`` times the data's (``|s - 1| <=
  scan_scale``), patterns between scan positions interpolated bilinearly (the 4D intensity
  is smooth in probe position), and the label interpolated at the same points;
- **detector geometry**: a sub-pixel shift of the pattern centre, a linear descan across the
  patch, a small angular-calibration error (zoom) and a coarser detector sampling (area
  binning by up to ``detector_coarsen`` then bilinear interpolation back);
- **dose**: Poisson counts drawn at a dose log-uniform in ``dose_range`` e⁻/pattern for
  data with noise-free intensities (simulations), or binomial-like thinning (Poisson of the
  kept fraction) of measured counts;
- **detector reach**: everything beyond a radius drawn uniformly between ``reach_crop`` and 1
  times the grid's radius set to zero, as a smaller detector (or a longer camera length)
  would record it, so the model learns patterns whose dark field ends early.

Patterns are handled as *linear intensities* on the model's detector grid
(``Preprocessor.transform(..., stage="linear")``: counts per model pixel divided by the data
set's mean counts per model pixel); compression and standardisation follow
(``Preprocessor.finish``). Tiles are ``(H, W, oy, ox)`` = outputs plus a K//2 halo; patterns
whose scan position (any interpolation tap) lies outside the training region are zeroed, so
no validation pattern reaches a training step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..preprocess import Preprocessor
from .clusters import reflect_index

__all__ = ["AugmentConfig", "AugmentError", "PatchTile", "sample_tile", "d4_matrix"]


class AugmentError(ValueError):
    """An augmentation setting is out of range."""


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to draw, and how strong; see the module docstring.

    ``probability`` is the chance that each (non-dose) augmentation is applied to a patch.
    ``dose_range`` (e⁻/pattern, log-uniform) applies to data with noise-free intensities;
    ``thinning`` (kept fraction, uniform) to measured counts; ``None`` turns either off.
    """

    symmetry: bool = True
    rotation_deg: float = 0.0
    scan_scale: float = 0.1
    centre_shift_px: float = 0.5
    descan_px: float = 0.5
    detector_zoom: float = 0.04
    detector_coarsen: float = 1.6
    dose_range: tuple[float, float] | None = (5e3, 5e5)
    thinning: tuple[float, float] | None = (0.3, 1.0)
    reach_crop: float = 0.55
    probability: float = 0.7

    def __post_init__(self) -> None:
        def nonneg(name: str, hi: float) -> None:
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 0 <= v <= hi):
                raise AugmentError(f"{name} must be in [0, {hi}], got {getattr(self, name)!r}")

        nonneg("rotation_deg", 180.0)
        nonneg("scan_scale", 0.5)
        nonneg("centre_shift_px", 8.0)
        nonneg("descan_px", 8.0)
        nonneg("detector_zoom", 0.5)
        nonneg("probability", 1.0)
        nonneg("reach_crop", 1.0)
        if not (math.isfinite(float(self.detector_coarsen)) and 1.0 <= float(self.detector_coarsen) <= 4.0):
            raise AugmentError(f"detector_coarsen must be in [1, 4], got {self.detector_coarsen!r}")
        for name, lo, hi in (("dose_range", 1.0, 1e12), ("thinning", 1e-3, 1.0)):
            v = getattr(self, name)
            if v is None:
                continue
            t = tuple(float(x) for x in v)
            if len(t) != 2 or not (lo <= t[0] <= t[1] <= hi):
                raise AugmentError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {v!r}")
            object.__setattr__(self, name, t)

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(symmetry=False, rotation_deg=0.0, scan_scale=0.0, centre_shift_px=0.0,
                   descan_px=0.0, detector_zoom=0.0, detector_coarsen=1.0, dose_range=None,
                   thinning=None, reach_crop=0.0, probability=0.0)

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig.off()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise AugmentError(f"AugmentConfig: unknown parameter(s) {unknown}")
        return cls(**d)


def d4_matrix(index: int) -> np.ndarray:
    """The ``index``-th (0…7) element of the square's symmetry group as a 2×2 integer matrix
    acting on (y, x) offsets: ``index % 4`` quarter turns, then a mirror of y when
    ``index >= 4``."""
    q = int(index) % 4
    r = np.array([[0, -1], [1, 0]], np.int64)  # (y, x) -> (-x, y): a quarter turn
    m = np.linalg.matrix_power(r, q)
    if int(index) >= 4:
        m = np.array([[-1, 0], [0, 1]], np.int64) @ m
    return m


@dataclass
class PatchTile:
    """One training patch: input ``x`` ``(H, W, oy, ox)`` (finished, model units), target
    ``y`` ``(h, w)`` (standardised label, 0 where not kept) and ``keep`` ``(h, w)`` bool."""

    x: np.ndarray
    y: np.ndarray
    keep: np.ndarray


def _bilinear_taps(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions ``p`` along one axis → reflected indices (i0, i1) and the weight of i1."""
    f = np.floor(p)
    w = p - f
    i0 = reflect_index(f.astype(np.int64), n)
    i1 = reflect_index(f.astype(np.int64) + 1, n)
    return i0, i1, w


def _sample_scan(field: np.ndarray, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, list]:
    """Bilinear samples of ``field`` ``(Ny, Nx, ...)`` at positions (py, px) (any shape S) →
    ``(*S, ...)`` and the four taps [(iy, ix, weight)], reflected at the edges."""
    ny, nx = field.shape[:2]
    y0, y1, wy = _bilinear_taps(py, ny)
    x0, x1, wx = _bilinear_taps(px, nx)
    taps = [(y0, x0, (1 - wy) * (1 - wx)), (y0, x1, (1 - wy) * wx),
            (y1, x0, wy * (1 - wx)), (y1, x1, wy * wx)]
    out = None
    extra = (None,) * (field.ndim - 2)
    for iy, ix, w in taps:
        if not np.any(w > 1e-9):
            continue
        term = field[iy, ix] * w[(...,) + extra].astype(field.dtype)
        out = term if out is None else out + term
    return out, taps


def _pattern_warp(tile: np.ndarray, mat: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample every pattern of ``tile`` ``(n, oy, ox)``: output pixel at offset ``k`` (from
    the grid centre) takes the input at ``mat @ k + shift[i]`` (bilinear, zero outside);
    ``shift`` ``(n, 2)`` in pixels. Counts per pixel are preserved up to the area change."""
    import torch
    import torch.nn.functional as F

    n, oy, ox = tile.shape
    cy, cx = (oy - 1) / 2.0, (ox - 1) / 2.0
    ky = np.arange(oy) - cy
    kx = np.arange(ox) - cx
    gy, gx = np.meshgrid(ky, kx, indexing="ij")
    src_y = mat[0, 0] * gy + mat[0, 1] * gx  # (oy, ox)
    src_x = mat[1, 0] * gy + mat[1, 1] * gx
    sy = src_y[None] + shift[:, 0, None, None] + cy
    sx = src_x[None] + shift[:, 1, None, None] + cx
    # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are pixel centres)
    grid = np.stack([2 * sx / max(ox - 1, 1) - 1, 2 * sy / max(oy - 1, 1) - 1], -1)
    out = F.grid_sample(torch.from_numpy(tile[:, None]), torch.from_numpy(grid.astype(np.float32)),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0].numpy() * np.float32(abs(np.linalg.det(mat)))


def _coarsen(tile: np.ndarray, factor: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Area-bin patterns ``(n, oy, ox)`` onto a grid ``factor`` times coarser; returns the
    coarse patterns (counts per coarse pixel in the same units) and their shape."""
    import torch
    import torch.nn.functional as F

    n, oy, ox = tile.shape
    cs = (max(2, int(round(oy / factor))), max(2, int(round(ox / factor))))
    t = torch.from_numpy(tile[:, None])
    coarse = F.interpolate(t, size=cs, mode="area")[:, 0].numpy()
    return coarse * np.float32(oy * ox / (cs[0] * cs[1])), cs


def _refine(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    cs = coarse.shape[1:]
    t = torch.from_numpy(np.ascontiguousarray(coarse[:, None], np.float32))
    fine = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[:, 0].numpy()
    return fine * np.float32(cs[0] * cs[1] / (shape[0] * shape[1]))


def sample_tile(
    linear: np.ndarray,
    target: np.ndarray,
    region: np.ndarray,
    window: tuple[int, int, int, int],
    k: int,
    pre: Preprocessor,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    noise_free_fraction: float | None = None,
) -> PatchTile:
    """An augmented training patch for the outputs of ``window`` ``(y0, y1, x0, x1)``.

    ``linear`` ``(Ny, Nx, oy, ox)``: the item's linear intensities on the model grid: noise-free
    beam fractions when ``noise_free_fraction`` (the mean detected fraction of the beam) is
    given — normalised by it, like counts by their mean, when ``pre`` normalises — else
    measured counts; ``target`` ``(Ny, Nx)`` the standardised label (NaN =
    unknown); ``region`` ``(Ny, Nx)`` bool the training region.
    """
    y0, y1, x0, x1 = window
    h, w = y1 - y0, x1 - x0
    half = k // 2
    hh, ww = h + 2 * half, w + 2 * half
    oy, ox = pre.output_shape
    p = config.probability

    def chance() -> bool:
        return bool(p > 0 and rng.random() < p)

    # -- the scan transform: positions = centre + A @ offsets ---------------------------------
    g = d4_matrix(int(rng.integers(8))) if config.symmetry and chance() else np.eye(2, dtype=np.int64)
    theta = math.radians(rng.uniform(-1, 1) * config.rotation_deg) if config.rotation_deg and chance() else 0.0
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    s = 1.0 + rng.uniform(-1, 1) * config.scan_scale if config.scan_scale and chance() else 1.0
    a = s * rot @ g
    cy, cx = (y0 + y1 - 1) / 2.0, (x0 + x1 - 1) / 2.0
    oyy, oxx = np.meshgrid(np.arange(hh) - (hh - 1) / 2.0, np.arange(ww) - (ww - 1) / 2.0, indexing="ij")
    py = cy + a[0, 0] * oyy + a[0, 1] * oxx
    px = cx + a[1, 0] * oyy + a[1, 1] * oxx
    exact = np.allclose(a, np.rint(a)) and float(cy).is_integer() == float((hh - 1) / 2).is_integer()
    if exact:  # integer positions: plain gathers, no interpolation
        py, px = np.rint(py), np.rint(px)
    tile, taps = _sample_scan(linear, py, px)
    tile = np.ascontiguousarray(tile, np.float32).reshape(hh * ww, oy, ox)
    inside = np.ones((hh, ww), bool)
    for iy, ix, wt in taps:
        inside &= (wt <= 1e-9) | region[iy, ix]
    lab, ltaps = _sample_scan(np.where(np.isfinite(target), target, 0.0), py, px)
    lab_ok = np.ones((hh, ww), bool)
    for iy, ix, wt in ltaps:
        lab_ok &= (wt <= 1e-9) | np.isfinite(target[iy, ix])

    # -- the same rotation/mirror on the detector, plus calibration errors ------------------
    # The tile shows the data at A u (A = s R G): the sample turned by Q = (R G)^-1. Turning a
    # sample by Q moves a diffraction feature from k to Q k, so the new pattern at k is the old
    # one at (R G) k: the detector is sampled with the same matrix as the scan (scan and
    # detector axes aligned, as after scan-rotation correction), without the scan-step factor.
    rg = rot @ g
    zoom = 1.0 + rng.uniform(-1, 1) * config.detector_zoom if config.detector_zoom and chance() else 1.0
    shift = np.zeros((hh * ww, 2))
    if config.centre_shift_px and chance():
        shift += rng.uniform(-1, 1, 2) * config.centre_shift_px
    if config.descan_px and chance():
        ramp = rng.uniform(-1, 1, (2, 2)) * config.descan_px  # px across the tile, per scan axis
        shift += (ramp[:, 0][None] * (oyy.ravel() / max(hh, 1))[:, None]
                  + ramp[:, 1][None] * (oxx.ravel() / max(ww, 1))[:, None])
    if theta == 0.0 and zoom == 1.0 and not shift.any():
        if not np.array_equal(g, np.eye(2)):  # exact: a signed permutation of the grid
            tile = _d4_patterns(tile, g)
    else:
        tile = _pattern_warp(tile, rg / zoom, shift)

    # -- detector sampling and dose ---------------------------------------------------------
    coarse_shape = None
    if config.detector_coarsen > 1.0 and chance():
        tile, coarse_shape = _coarsen(tile, rng.uniform(1.0, config.detector_coarsen))
    # counts per linear unit (coarse pixels hold sums of linear values: the same factor);
    # linear values are counts / (mean counts per model pixel) when normalising, else counts
    norm = pre.config.normalise
    per_unit = pre.mean_counts / float(oy * ox) if norm else 1.0
    if noise_free_fraction is not None and config.dose_range is not None:
        lo, hi = config.dose_range
        dose = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        # noise-free linear values are beam fractions (normalised by the mean detected
        # fraction when normalising): counts = fraction × dose
        scale = dose * (float(noise_free_fraction) / float(oy * ox) if norm else 1.0)
        tile = rng.poisson(np.clip(tile, 0, None) * scale).astype(np.float32) / np.float32(scale)
    elif noise_free_fraction is None and config.thinning is not None and chance():
        keep = rng.uniform(*config.thinning)
        if keep < 1.0:
            scale = per_unit * keep
            tile = rng.poisson(np.clip(tile, 0, None) * scale).astype(np.float32) / np.float32(scale)
    if coarse_shape is not None:
        tile = _refine(tile, (oy, ox))
    if config.reach_crop and chance():
        f = rng.uniform(config.reach_crop, 1.0)
        cy0, cx0 = (oy - 1) / 2.0, (ox - 1) / 2.0
        rr = np.hypot(*np.meshgrid(np.arange(oy) - cy0, np.arange(ox) - cx0, indexing="ij"))
        tile[:, rr > f * min(oy, ox) / 2.0] = 0.0

    x = pre.finish(tile).reshape(hh, ww, oy, ox)
    x[~inside] = 0.0
    # outputs: kept where the whole K×K neighbourhood is inside and the label is known
    ok = inside & lab_ok
    if half:
        win = np.lib.stride_tricks.sliding_window_view(inside, (k, k)).all(axis=(-2, -1))
    else:
        win = inside
    keep = win & ok[half : half + h, half : half + w]
    y = np.where(keep, lab[half : half + h, half : half + w], 0.0).astype(np.float32)
    return PatchTile(x=x, y=y, keep=keep)


def _d4_patterns(tile: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Patterns ``(n, oy, ox)`` where output pixel at offset k shows input at ``g @ k``
    (a signed permutation: exact index arithmetic about the grid centre)."""
    n, oy, ox = tile.shape
    cy, cx = (oy - 1) / 2.0, (ox - 1) / 2.0
    gy, gx = np.meshgrid(np.arange(oy) - cy, np.arange(ox) - cx, indexing="ij")
    sy = g[0, 0] * gy + g[0, 1] * gx + cy
    sx = g[1, 0] * gy + g[1, 1] * gx + cx
    iy, ix = np.rint(sy).astype(np.int64), np.rint(sx).astype(np.int64)
    if oy != ox and (np.any((iy < 0) | (iy >= oy)) or np.any((ix < 0) | (ix >= ox))):
        raise AugmentError("joint rotations need a square model detector grid")
    return tile[:, iy, ix]
