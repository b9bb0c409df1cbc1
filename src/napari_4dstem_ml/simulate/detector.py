"""Detector and acquisition model applied to simulated patterns (NumPy/SciPy only).

Axis order: patterns ``(n, ky, kx)`` or ``(scan_y, scan_x, ky, kx)``; angles in mrad, scan
positions in Å. Intensities are fractions of the incident beam until :func:`poisson_counts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DetectorModel:
    """A pixelated detector (EMPAD-like) with a pattern centre off the detector centre and a
    linear descan over the scan.

    The pattern centre of scan position ``(iy, ix)`` of an ``(ny, nx)`` scan lies at
    ``detector centre + centre_offset_px + descan_y_px * (iy/(ny-1) - 0.5)
    + descan_x_px * (ix/(nx-1) - 0.5)`` in ``(ky, kx)`` pixels; the detector centre is at
    pixel ``(shape - 1) / 2``.
    """

    shape: tuple[int, int] = (128, 128)
    pixel_mrad: float = 0.84
    centre_offset_px: tuple[float, float] = (1.3, -0.9)
    descan_y_px: tuple[float, float] = (0.8, -0.2)
    descan_x_px: tuple[float, float] = (0.25, 0.9)

    def to_dict(self) -> dict:
        return asdict(self)

    def centres_px(self, scan_shape: tuple[int, int]) -> np.ndarray:
        """Pattern centres ``(ny, nx, 2)`` in detector pixels ``(ky, kx)``."""
        ny, nx = scan_shape
        fy = np.linspace(-0.5, 0.5, ny) if ny > 1 else np.zeros(1)
        fx = np.linspace(-0.5, 0.5, nx) if nx > 1 else np.zeros(1)
        c0 = (np.asarray(self.shape, float) - 1) / 2 + np.asarray(self.centre_offset_px)
        out = (c0[None, None, :]
               + fy[:, None, None] * np.asarray(self.descan_y_px)[None, None, :]
               + fx[None, :, None] * np.asarray(self.descan_x_px)[None, None, :])
        return out

    @property
    def max_angle_mrad(self) -> float:
        """Largest |angle| along an axis a pattern must cover (half width plus shifts + 2 px)."""
        shift = (np.abs(self.centre_offset_px).max() + np.abs(self.descan_y_px).max()
                 + np.abs(self.descan_x_px).max())
        return (max(self.shape) / 2 + shift + 2) * self.pixel_mrad


def resample_to_detector(
    patterns: np.ndarray,
    sim_pixel_mrad: tuple[float, float],
    sim_centre_px: tuple[float, float],
    centres_px: np.ndarray,
    model: DetectorModel,
) -> np.ndarray:
    """Put simulated patterns ``(n, sy, sx)`` (fraction of the beam per simulation pixel, the
    unscattered beam at pixel ``sim_centre_px``) on the detector grid, each centred at
    ``centres_px[i]`` (``(n, 2)``, detector pixels). Bilinear interpolation of the intensity
    density, times the detector pixel area: returns the beam fraction per detector pixel,
    float32 ``(n, ky, kx)``."""
    from scipy.ndimage import map_coordinates

    patterns = np.asarray(patterns, dtype=np.float32)
    n = patterns.shape[0]
    dy, dx = sim_pixel_mrad
    area_ratio = model.pixel_mrad**2 / (dy * dx)
    ky = np.arange(model.shape[0], dtype=np.float64)
    kx = np.arange(model.shape[1], dtype=np.float64)
    out = np.empty((n, *model.shape), np.float32)
    for i in range(n):
        cy, cx = centres_px[i]
        sy = sim_centre_px[0] + (ky - cy) * model.pixel_mrad / dy
        sx = sim_centre_px[1] + (kx - cx) * model.pixel_mrad / dx
        gy, gx = np.meshgrid(sy, sx, indexing="ij")
        out[i] = map_coordinates(patterns[i], [gy, gx], order=1, mode="constant", cval=0.0)
    out *= np.float32(area_ratio)
    return out


def gaussian_scan_blur(values: np.ndarray, fwhm_A: float, step_A: tuple[float, float]) -> np.ndarray:
    """Partial spatial coherence as incoherent source-size blur: convolve over the first two
    (scan) axes with a Gaussian of ``fwhm_A`` (Å). Edges use 'nearest'; simulate a margin of
    scan positions and crop it afterwards."""
    from scipy.ndimage import gaussian_filter

    if fwhm_A <= 0:
        return values
    sig = fwhm_A / (2 * np.sqrt(2 * np.log(2)))
    sigma = [sig / step_A[0], sig / step_A[1]] + [0] * (values.ndim - 2)
    return gaussian_filter(values, sigma=sigma, mode="nearest")


def fourier_interpolate_cell(
    values: np.ndarray,
    cell_A: tuple[float, float],
    y_A: np.ndarray,
    x_A: np.ndarray,
    blur_fwhm_A: float = 0.0,
) -> np.ndarray:
    """Band-limited periodic interpolation of ``values`` sampled on a regular ``(my, mx, ...)``
    grid over one unit cell (``cell_A`` = (b, a), grid points at ``j * b / my``) onto the scan
    grid ``y_A`` × ``x_A`` (Å); returns ``(len(y_A), len(x_A), ...)``.

    Exact for 4D-STEM intensities of a perfect crystal when the cell is sampled finer than
    λ/(2α) (the intensity is band-limited to 2α/λ in probe position). Odd ``my``, ``mx`` avoid
    the Nyquist ambiguity. ``blur_fwhm_A`` multiplies the Fourier coefficients by a Gaussian
    (source-size blur)."""
    my, mx = values.shape[:2]
    rest = values.shape[2:]
    c = np.fft.fft2(values.astype(np.complex128, copy=False).reshape(my, mx, -1), axes=(0, 1))
    qy = np.fft.fftfreq(my, d=cell_A[0] / my)
    qx = np.fft.fftfreq(mx, d=cell_A[1] / mx)
    if blur_fwhm_A > 0:
        s = blur_fwhm_A / (2 * np.sqrt(2 * np.log(2)))
        g = np.exp(-2 * np.pi**2 * s**2 * (qy[:, None] ** 2 + qx[None, :] ** 2))
        c *= g[:, :, None]
    ey = np.exp(2j * np.pi * np.outer(np.asarray(y_A, float), qy)) / my  # (ny, my)
    ex = np.exp(2j * np.pi * np.outer(np.asarray(x_A, float), qx)) / mx  # (nx, mx)
    a = np.einsum("jn,mnp->mjp", ex, c)  # (my, nx, p)
    out = np.einsum("im,mjp->ijp", ey, a).real
    return out.reshape(len(y_A), len(x_A), *rest)


def poisson_counts(rng: np.random.Generator, expected: np.ndarray, dtype=np.uint16) -> np.ndarray:
    """Poisson-sampled integer counts; raises when ``dtype`` would overflow."""
    lam = np.clip(np.asarray(expected, np.float64), 0, None)
    counts = rng.poisson(lam)
    if counts.size and counts.max() > np.iinfo(dtype).max:
        raise ValueError(f"counts up to {counts.max()} overflow {np.dtype(dtype).name}; lower the dose")
    return counts.astype(dtype)


def detect(patterns: np.ndarray, sim_pixel_mrad: tuple[float, float], model: DetectorModel
           ) -> np.ndarray:
    """Simulated patterns ``(ny, nx, sy, sx)`` (beam fraction per simulation pixel, the
    unscattered beam at pixel ``(sy // 2, sx // 2)``) on the detector, with the model's
    pattern centre and descan at every scan position: beam fraction per detector pixel,
    float32 ``(ny, nx, ky, kx)``."""
    ny, nx, sy, sx = patterns.shape
    centres = model.centres_px((ny, nx)).reshape(-1, 2)
    frac = resample_to_detector(patterns.reshape(-1, sy, sx), sim_pixel_mrad, (sy // 2, sx // 2),
                                centres, model)
    return frac.reshape(ny, nx, *model.shape)


def interpolate_cell_patterns(patterns: np.ndarray, cell_A: tuple[float, float], y_A: np.ndarray,
                              x_A: np.ndarray, blur_fwhm_A: float = 0.0) -> np.ndarray:
    """:func:`fourier_interpolate_cell` of patterns ``(my, mx, sy, sx)`` onto the scan
    ``(len(y_A), len(x_A), sy, sx)`` (float32), a block of pattern rows at a time to bound
    memory; negative ringing is clipped to 0."""
    sy, sx = patterns.shape[2:]
    full = np.empty((len(y_A), len(x_A), sy, sx), np.float32)
    block = max(1, 4096 // sx)
    for i in range(0, sy, block):  # interpolate a block of detector rows at a time
        full[:, :, i:i + block] = fourier_interpolate_cell(
            patterns[:, :, i:i + block], cell_A, y_A, x_A, blur_fwhm_A)
    np.clip(full, 0, None, out=full)
    return full


def counts_dtype(expected: np.ndarray) -> type:
    """uint16 when Poisson counts of ``expected`` surely fit (max + 12 sigma + 20), else uint32."""
    m = float(np.max(expected)) if np.size(expected) else 0.0
    return np.uint16 if m + 12 * np.sqrt(m) + 20 < np.iinfo(np.uint16).max else np.uint32
