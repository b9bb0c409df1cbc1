"""Image-quality metrics shared by training, the GUI and the benchmarks.

All images are 2D arrays ``(y, x)``; they are converted to float64 internally. Spatial
frequencies are in Å⁻¹ (cycles per Å) when a ``pixel_size`` in Å is given, otherwise in
cycles per pixel (``pixel_size=1``).

Conventions chosen here (and why):

* PSNR and SSIM take an explicit ``data_range`` (no guessing from the dtype).
* SSIM follows Wang et al. (IEEE TIP 13, 600, 2004) and their reference MATLAB code:
  Gaussian weights σ = 1.5 px truncated at radius 5 px (an 11 × 11 window), K1 = 0.01,
  K2 = 0.03, *population* (weighted, un-corrected) variances — scikit-image's
  ``use_sample_covariance=False`` — and the mean over the "valid" region only, i.e. the
  5-px border where the window would leave the image is excluded.
* Before comparing two reconstructions: register (sub-pixel shift), fit scale and offset,
  crop the edges (:func:`compare` does all of it in one call).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "LABEL_SIGMA_A",
    "LOWPASS_RESOLUTION_A",
    "ComparisonReport",
    "Contrast",
    "ResolutionScore",
    "FRCResult",
    "InfoLimitResult",
    "Spot",
    "compare",
    "contrast",
    "fit_scale_offset",
    "frc",
    "half_bit_threshold",
    "information_limit",
    "lattice_spacings",
    "pearson_r",
    "psnr",
    "register_shift",
    "label_resolution",
    "resolution_scores",
    "ssim",
    "ssim_map",
]

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5  # window radius = int(3.5 * sigma + 0.5) = 5 px for sigma = 1.5


# ---------------------------------------------------------------------------- helpers
def _as_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (y, x), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(image: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _as_2d(image, "image")
    b = _as_2d(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"image and reference differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _check_range(data_range: float) -> float:
    r = float(data_range)
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return r


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    """Separable periodic-free Hann window (zero at the edges' outside neighbours)."""
    wy = np.hanning(shape[0] + 2)[1:-1]
    wx = np.hanning(shape[1] + 2)[1:-1]
    return np.outer(wy, wx)


def _tukey(n: int, alpha: float) -> np.ndarray:
    """Tukey (tapered cosine) window of length ``n``; ``alpha`` = tapered fraction."""
    if n < 3 or alpha <= 0:
        return np.ones(n)
    x = np.arange(n) / (n - 1)
    w = np.ones(n)
    a = min(alpha, 1.0)
    lo = x < a / 2
    hi = x > 1 - a / 2
    w[lo] = 0.5 * (1 + np.cos(2 * np.pi / a * (x[lo] - a / 2)))
    w[hi] = 0.5 * (1 + np.cos(2 * np.pi / a * (x[hi] - 1 + a / 2)))
    return w


def _freq_grid(shape: tuple[int, int], pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (qy, qx) of an *unshifted* FFT, in cycles per unit of ``pixel_size``."""
    qy = np.fft.fftfreq(shape[0], d=pixel_size)
    qx = np.fft.fftfreq(shape[1], d=pixel_size)
    return qy[:, None], qx[None, :]


# ---------------------------------------------------------------------------- PSNR / SSIM
def psnr(image: Any, reference: Any, data_range: float) -> float:
    """Peak signal-to-noise ratio 10·log10(R² / MSE) in dB; ``inf`` for identical images.

    ``data_range`` R is required (e.g. the reference's max − min); nothing is guessed.
    """
    a, b = _pair(image, reference)
    r = _check_range(data_range)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


def ssim_map(image: Any, reference: Any, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Local SSIM over the valid region (border of the window radius removed), float64."""
    a, b = _pair(image, reference)
    r = _check_range(data_range)
    radius = int(SSIM_TRUNCATE * sigma + 0.5)
    if min(a.shape) <= 2 * radius:
        raise ValueError(
            f"SSIM needs images larger than the {2 * radius + 1}-px window, got {a.shape}"
        )

    def filt(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = filt(a), filt(b)
    vx = filt(a * a) - ux * ux
    vy = filt(b * b) - uy * uy
    vxy = filt(a * b) - ux * uy
    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s[radius:-radius, radius:-radius]


def ssim(image: Any, reference: Any, data_range: float, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian window σ = ``sigma`` px.

    K1 = 0.01, K2 = 0.03, population (weighted, not sample-corrected) covariances as in
    Wang's code and scikit-image's ``use_sample_covariance=False``; the mean is taken over
    the valid region (the window radius, 5 px for σ = 1.5, is cropped from each border).
    Symmetric in its two arguments; 1 for identical images.
    """
    return float(np.mean(ssim_map(image, reference, data_range, sigma)))


# ---------------------------------------------------------------------------- fit / correlation
def fit_scale_offset(image: Any, reference: Any) -> tuple[float, float, np.ndarray]:
    """Least-squares ``scale``, ``offset`` minimising ‖scale·image + offset − reference‖².

    Returns ``(scale, offset, fitted)`` with ``fitted = scale·image + offset`` (float64).
    A constant ``image`` gives scale 0 and the reference's mean as offset.
    """
    a, b = _pair(image, reference)
    am, bm = a.mean(), b.mean()
    da = a - am
    var = float(np.sum(da * da))
    scale = 0.0 if var == 0.0 else float(np.sum(da * (b - bm)) / var)
    offset = float(bm - scale * am)
    return scale, offset, scale * a + offset


def pearson_r(image: Any, reference: Any) -> float:
    """Pearson correlation coefficient of the two images' pixels (NaN if either is constant).

    r is invariant to a scale/offset fit of either image (for a positive scale), so it is
    the same before and after :func:`fit_scale_offset`; a negative r means inverted contrast.
    """
    a, b = _pair(image, reference)
    da = a - a.mean()
    db = b - b.mean()
    den = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if den == 0.0:
        return math.nan
    return float(np.sum(da * db) / den)


# ---------------------------------------------------------------------------- registration
def _upsampled_xcorr(
    cross: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Inverse DFT of ``cross`` evaluated at (non-integer) shifts ``ys`` × ``xs`` (pixels)."""
    fy = np.fft.fftfreq(cross.shape[0])
    fx = np.fft.fftfreq(cross.shape[1])
    ky = np.exp(2j * np.pi * np.outer(ys, fy))
    kx = np.exp(2j * np.pi * np.outer(fx, xs))
    return (ky @ cross @ kx).real


def register_shift(
    image: Any, reference: Any, upsample: int = 10, *, phase: bool = False
) -> tuple[float, float]:
    """Sub-pixel translation (dy, dx) in pixels with ``image(y, x) ≈ reference(y − dy, x − dx)``.

    Cross-correlation through the FFT of the mean-subtracted, Hann-windowed images (the
    window suppresses the edge discontinuity of non-periodic images); with ``phase=True`` the
    cross-power spectrum is normalised to unit modulus (phase correlation: sharper peak,
    but poor on smooth or noisy images). The integer peak is refined to 1/``upsample`` px
    with a matrix-multiply DFT over a ±1.5 px neighbourhood (Guizar-Sicairos et al., Opt.
    Lett. 33, 156, 2008). To align, shift ``image`` by (−dy, −dx).
    """
    a, b = _pair(image, reference)
    up = int(upsample)
    if up < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    w = _hann2d(a.shape)
    fa = np.fft.fft2((a - a.mean()) * w)
    fb = np.fft.fft2((b - b.mean()) * w)
    cross = fa * np.conj(fb)
    if phase:
        mag = np.abs(cross)
        cross = cross / (mag + 1e-12 * float(mag.max()) + 1e-300)
    corr = np.fft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    ny, nx = corr.shape
    dy = float(iy - ny if iy > ny // 2 else iy)
    dx = float(ix - nx if ix > nx // 2 else ix)
    if up == 1:
        return dy, dx
    n = int(math.ceil(1.5 * up)) * 2 + 1
    offs = (np.arange(n) - n // 2) / up
    fine = _upsampled_xcorr(cross, dy + offs, dx + offs)
    jy, jx = np.unravel_index(int(np.argmax(fine)), fine.shape)
    return float(dy + offs[jy]), float(dx + offs[jx])


# ---------------------------------------------------------------------------- FRC
def half_bit_threshold(n: Any) -> np.ndarray:
    """Half-bit threshold T(n) = (0.2071 + 1.9102/√n) / (1.2071 + 0.9102/√n), n = ring pixels."""
    s = np.sqrt(np.maximum(np.asarray(n, dtype=np.float64), 1.0))
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


@dataclass(frozen=True)
class FRCResult:
    """Fourier ring correlation. ``freq`` in 1/(unit of pixel_size) (Å⁻¹ for Å pixels),
    ``frc`` and ``threshold`` (half-bit) per ring, ``n_pixels`` per ring, ``resolution`` =
    1/frequency where the FRC first falls below the half-bit curve (same unit as the pixel
    size), or ``None`` when it never does up to Nyquist."""

    freq: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    n_pixels: np.ndarray
    resolution: float | None
    pixel_size: float


def frc(
    image1: Any,
    image2: Any,
    pixel_size: float = 1.0,
    n_bins: int | None = None,
    taper: float = 0.5,
    first_ring: int = 3,
) -> FRCResult:
    """Fourier ring correlation of two images of the same field, with half-bit resolution.

    Each image has its mean removed and is multiplied by a separable Tukey window (tapered
    fraction ``taper`` on each axis) to suppress the edge cross in the FFT. Ring k holds
    the pixels with round(|q| / Δq) = k, Δq = 1/(min(N)·pixel_size) by default
    (``n_bins`` rings up to Nyquist 1/(2·pixel_size) otherwise). The crossing with the
    half-bit curve is the first ring k ≥ ``first_ring`` (default 3: rings with fewer than
    ~20 pixels are too noisy to judge) below the threshold whose next ring is below too
    (one noisy dip is not a crossing), interpolated linearly from the ring before.
    With a very high SNR the window's leakage carries a sharp band limit a few rings on.
    Between a prediction and its label the FRC measures agreement, not resolution.
    """
    a, b = _pair(image1, image2)
    p = float(pixel_size)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"pixel_size must be positive, got {pixel_size!r}")
    ny, nx = a.shape
    nmin = min(ny, nx)
    if n_bins is None:
        n_bins = nmin // 2
    n_bins = int(n_bins)
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    w = np.outer(_tukey(ny, taper), _tukey(nx, taper))
    fa = np.fft.fft2((a - a.mean()) * w)
    fb = np.fft.fft2((b - b.mean()) * w)
    qy, qx = _freq_grid(a.shape, p)
    q = np.sqrt(qy * qy + qx * qx)
    dq = (0.5 / p) / n_bins
    ring = np.floor(q / dq + 0.5).astype(np.int64).ravel()
    keep = ring < n_bins
    ring = ring[keep]
    num = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], minlength=n_bins)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], minlength=n_bins)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], minlength=n_bins)
    npx = np.bincount(ring, minlength=n_bins)
    den = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    thr = half_bit_threshold(npx)
    freq = np.arange(n_bins) * dq
    resolution = None
    below = curve < thr
    for k in range(max(first_ring, 1), n_bins):
        if below[k] and (k + 1 >= n_bins or below[k + 1]):
            fc = freq[k]
            if k > first_ring and not below[k - 1]:
                d0 = curve[k - 1] - thr[k - 1]
                d1 = curve[k] - thr[k]
                fc = freq[k - 1] + d0 / (d0 - d1) * dq
            resolution = 1.0 / fc
            break
    return FRCResult(freq, curve, thr, npx, resolution, p)


# ---------------------------------------------------------------------------- diffractograms
class Spot(NamedTuple):
    """A diffractogram peak: position (ky, kx) and modulus ``g`` in 1/Å, and its ``snr``."""

    ky: float
    kx: float
    g: float
    snr: float


@dataclass(frozen=True)
class InfoLimitResult:
    """``resolution_A`` = 1/|g| of the highest-frequency significant spot (``None`` if no
    spot passes); ``spots`` = significant spots (one per Friedel pair), highest |g| first."""

    resolution_A: float | None
    spots: list[Spot] = field(default_factory=list)
    snr_threshold: float = 0.0


def _radial_hann(shape: tuple[int, int]) -> np.ndarray:
    """Circularly symmetric Hann window inscribed in ``shape`` (isotropic leakage)."""
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    rad = min(shape) / 2
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / rad
    return np.where(r < 1, 0.5 * (1 + np.cos(np.pi * np.minimum(r, 1))), 0.0)


def _remove_plane(image: np.ndarray) -> np.ndarray:
    """``image`` minus its least-squares plane a + b·y + c·x."""
    yy, xx = np.indices(image.shape, dtype=np.float64)
    basis = np.stack([np.ones(image.size), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(basis, image.ravel(), rcond=None)
    return image - (basis @ coef).reshape(image.shape)


def _diffractogram(image: np.ndarray, pad: int = 1) -> np.ndarray:
    """Power spectrum |FFT(w · (image − mean))|², fftshifted, zero-padded ``pad``-fold.

    A least-squares plane is removed first (a ramp leaks far into the spectrum).
    ``w`` is a circularly symmetric Hann window, so its leakage is isotropic and the
    annulus background at the same |g| accounts for it (a separable window leaks along
    the axes and fakes spots there)."""
    w = _radial_hann(image.shape)
    x = _remove_plane(image) * w
    shape = (image.shape[0] * pad, image.shape[1] * pad)
    f = np.fft.fftshift(np.fft.fft2(x, s=shape))
    return f.real**2 + f.imag**2


def _shifted_freqs(shape: tuple[int, int], pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    qy = np.fft.fftshift(np.fft.fftfreq(shape[0], d=pixel_size))[:, None]
    qx = np.fft.fftshift(np.fft.fftfreq(shape[1], d=pixel_size))[None, :]
    return qy, qx


def _half_plane(shape: tuple[int, int]) -> np.ndarray:
    """Mask of one half of a centred (fftshifted) spectrum, so Friedel pairs count once."""
    cy, cx = shape[0] // 2, shape[1] // 2
    yy, xx = np.indices(shape)
    return (yy > cy) | ((yy == cy) & (xx > cx))


def _peak_candidates(
    power: np.ndarray, qabs: np.ndarray, q_min: float, q_max: float, size: int
) -> np.ndarray:
    local = power == ndimage.maximum_filter(power, size=size, mode="nearest")
    ok = local & (qabs >= q_min) & (qabs <= q_max) & _half_plane(power.shape) & (power > 0)
    return np.argwhere(ok)


def _annulus_background(
    power: np.ndarray, qabs: np.ndarray, idx: np.ndarray, band: float
) -> np.ndarray:
    """Median of ``power`` in the annulus |q| ± band around each candidate."""
    order = np.argsort(qabs, axis=None)
    qs = qabs.ravel()[order]
    ps = power.ravel()[order]
    out = np.empty(len(idx))
    for i, (iy, ix) in enumerate(idx):
        g = qabs[iy, ix]
        lo, hi = np.searchsorted(qs, [g - band, g + band])
        out[i] = np.median(ps[lo:hi])
    return out


def information_limit(
    image: Any,
    pixel_size: float,
    *,
    snr_threshold: float = 12.0,
    min_frequency: float | None = None,
    band: float | None = None,
) -> InfoLimitResult:
    """Information limit from the Bragg spots of a diffractogram (Hann-windowed |FFT|²).

    The power spectrum is averaged over 3 × 3 pixels (which gathers a windowed spot and
    tames the exponential noise statistics); local maxima (5 × 5) are candidate spots and
    their ``snr`` is the averaged power over the median of the annulus |g| ± ``band`` (default
    3 frequency pixels) at the same |g| — spot-to-background power ratio. Spots with
    snr ≥ ``snr_threshold`` (default 12; the largest pure-noise peaks measured 5–9 from 128² to 2048²)
    and |g| ≥ ``min_frequency`` (default 5 frequency pixels) and within the Nyquist circle
    count; the limit is d = 1/max|g| in Å (``pixel_size`` in Å).
    """
    a = _as_2d(image, "image")
    p = float(pixel_size)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"pixel_size must be positive (Å), got {pixel_size!r}")
    power = ndimage.uniform_filter(_diffractogram(a), size=3, mode="wrap")
    qy, qx = _shifted_freqs(power.shape, p)
    qabs = np.sqrt(qy * qy + qx * qx)
    dq = 1.0 / (min(a.shape) * p)
    q_min = 5 * dq if min_frequency is None else float(min_frequency)
    q_max = 0.5 / p - 2 * dq
    band = 3 * dq if band is None else float(band)
    idx = _peak_candidates(power, qabs, q_min, q_max, size=5)
    if len(idx) == 0:
        return InfoLimitResult(None, [], float(snr_threshold))
    bg = _annulus_background(power, qabs, idx, band)
    vals = power[idx[:, 0], idx[:, 1]]
    snr = np.where(bg > 0, vals / np.where(bg > 0, bg, 1.0), np.inf)
    spots = [
        Spot(float(qy[iy, 0]), float(qx[0, ix]), float(qabs[iy, ix]), float(s))
        for (iy, ix), s in zip(idx, snr)
        if s >= snr_threshold
    ]
    spots.sort(key=lambda s: -s.g)
    res = 1.0 / spots[0].g if spots else None
    return InfoLimitResult(res, spots, float(snr_threshold))


def _parabolic(vm: float, v0: float, vp: float) -> float:
    den = vm - 2 * v0 + vp
    return 0.0 if den >= 0 else float(np.clip(0.5 * (vm - vp) / den, -0.5, 0.5))


def lattice_spacings(
    image: Any,
    pixel_size: float,
    n: int = 3,
    *,
    min_spacing: float | None = None,
    max_spacing: float | None = None,
) -> list[float]:
    """Spacings d = 1/|g| (Å) of the ``n`` strongest diffractogram peaks, strongest first.

    One entry per Friedel pair (symmetry-equivalent spots each appear, e.g. the six {100}
    spots of MoS2 give three entries of 2.74 Å). The Hann-windowed spectrum is zero-padded
    to ≥ 512 px and peaks refined by a parabola through log-power; strength = power above
    the annulus median. ``min_spacing``/``max_spacing`` (Å) bound the search (defaults:
    2 px and a fifth of the field).
    """
    a = _as_2d(image, "image")
    p = float(pixel_size)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"pixel_size must be positive (Å), got {pixel_size!r}")
    pad = max(1, int(math.ceil(512 / min(a.shape))))
    pad = min(pad, 8)
    power = _diffractogram(a, pad)
    qy, qx = _shifted_freqs(power.shape, p)
    qabs = np.sqrt(qy * qy + qx * qx)
    q_max = 0.5 / p if min_spacing is None else 1.0 / float(min_spacing)
    fov = min(a.shape) * p
    q_min = 5.0 / fov if max_spacing is None else 1.0 / float(max_spacing)
    idx = _peak_candidates(power, qabs, q_min, min(q_max, 0.5 / p), size=2 * pad + 1)
    if len(idx) == 0:
        return []
    bg = _annulus_background(power, qabs, idx, 3.0 / (min(power.shape) * p))
    strength = power[idx[:, 0], idx[:, 1]] - bg
    order = np.argsort(-strength)[: int(n)]
    out = []
    lp = np.log(np.maximum(power, power.max() * 1e-300 + 1e-300))
    ny, nx = power.shape
    dqy = 1.0 / (ny * p)
    dqx = 1.0 / (nx * p)
    for i in order:
        iy, ix = idx[i]
        oy = _parabolic(lp[(iy - 1) % ny, ix], lp[iy, ix], lp[(iy + 1) % ny, ix])
        ox = _parabolic(lp[iy, (ix - 1) % nx], lp[iy, ix], lp[iy, (ix + 1) % nx])
        gy = qy[iy, 0] + oy * dqy
        gx = qx[0, ix] + ox * dqx
        out.append(float(1.0 / math.hypot(gy, gx)))
    return out


# ---------------------------------------------------------------------------- contrast
@dataclass(frozen=True)
class Contrast:
    """``michelson`` = (I_hi − I_lo)/(I_hi + I_lo) with I_hi/I_lo the given percentiles
    (meaningful for non-negative intensities; NaN when I_hi + I_lo ≤ 0); ``rms`` =
    std/mean (NaN when the mean is 0)."""

    michelson: float
    rms: float
    percentiles: tuple[float, float]


def contrast(
    image: Any, mask: Any = None, percentiles: tuple[float, float] = (1.0, 99.0)
) -> Contrast:
    """Michelson contrast on robust extremes (percentiles) and RMS contrast std/mean.

    ``mask`` (bool, same shape) selects the pixels used; default all.
    """
    a = _as_2d(image, "image")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} differs from image shape {a.shape}")
        vals = a[m]
        if vals.size == 0:
            raise ValueError("mask selects no pixels")
    else:
        vals = a.ravel()
    lo, hi = np.percentile(vals, percentiles)
    s = hi + lo
    mich = float((hi - lo) / s) if s > 0 else math.nan
    mean = float(vals.mean())
    rms = float(vals.std() / mean) if mean != 0 else math.nan
    return Contrast(mich, rms, (float(percentiles[0]), float(percentiles[1])))


# ---------------------------------------------------------------------------- one-call comparison
@dataclass(frozen=True)
class ComparisonReport:
    """Result of :func:`compare`. ``shift_yx`` (px) is how far ``image`` was displaced from
    ``reference`` (it was shifted back by it); ``scale``/``offset`` map image → reference;
    ``crop`` px were removed from every edge; ``data_range`` is the cropped reference's
    max − min unless given; ``pearson_r`` is taken before the scale fit, so it is negative when
    the contrast is inverted (``scale`` < 0); ``frc_resolution`` (unit of ``pixel_size``) is where the FRC
    between the aligned image and the reference crosses half-bit (agreement, not resolution).
    ``aligned`` / ``reference_cropped`` are the cropped, fitted arrays that were compared."""

    shift_yx: tuple[float, float]
    scale: float
    offset: float
    crop: int
    data_range: float
    data_range_source: str
    psnr: float
    ssim: float
    pearson_r: float
    frc_resolution: float | None
    pixel_size: float
    aligned: np.ndarray = field(repr=False, compare=False)
    reference_cropped: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields (JSON-serialisable; arrays left out)."""
        d = asdict(self)
        d.pop("aligned")
        d.pop("reference_cropped")
        d["shift_yx"] = list(self.shift_yx)
        return d

    def summary(self) -> str:
        res = "—" if self.frc_resolution is None else f"{self.frc_resolution:.3g}"
        return (
            f"PSNR {self.psnr:.2f} dB (range {self.data_range:.4g}, {self.data_range_source}), "
            f"SSIM {self.ssim:.4f}, r {self.pearson_r:.4f}, FRC½bit {res}; "
            f"shift ({self.shift_yx[0]:.2f}, {self.shift_yx[1]:.2f}) px, crop {self.crop} px"
        )


def compare(
    image: Any,
    reference: Any,
    crop: int | None = None,
    data_range: float | None = None,
    *,
    register: bool = True,
    upsample: int = 10,
    pixel_size: float = 1.0,
) -> ComparisonReport:
    """Register ``image`` to ``reference`` (sub-pixel shift), crop the edges, fit scale and
    offset, then PSNR, SSIM, Pearson r and FRC.

    ``crop`` = pixels removed from each edge after the shift; default ceil(max|shift|) plus
    5 % of the smaller side (at least 2). ``data_range`` defaults to the cropped reference's
    max − min (stated in the report). The shift is applied with cubic spline interpolation.
    """
    a, b = _pair(image, reference)
    if register:
        dy, dx = register_shift(a, b, upsample=upsample)
    else:
        dy, dx = 0.0, 0.0
    if dy or dx:
        a = ndimage.shift(a, (-dy, -dx), order=3, mode="nearest")
    if crop is None:
        crop = int(math.ceil(max(abs(dy), abs(dx)))) + max(2, round(0.05 * min(a.shape)))
    crop = int(crop)
    if crop < 0 or 2 * crop >= min(a.shape):
        raise ValueError(f"crop={crop} px leaves nothing of a {a.shape} image")
    sl = (slice(crop, a.shape[0] - crop), slice(crop, a.shape[1] - crop))
    a, b = a[sl], b[sl]
    scale, offset, fitted = fit_scale_offset(a, b)
    if data_range is None:
        rng = float(b.max() - b.min())
        src = "reference max − min after cropping"
        if rng <= 0:
            raise ValueError("the cropped reference is constant; give data_range explicitly")
    else:
        rng = _check_range(data_range)
        src = "given"
    s = ssim(fitted, b, rng) if min(b.shape) > 10 else math.nan
    f = frc(fitted, b, pixel_size=pixel_size)
    return ComparisonReport(
        shift_yx=(dy, dx),
        scale=scale,
        offset=offset,
        crop=crop,
        data_range=rng,
        data_range_source=src,
        psnr=psnr(fitted, b, rng),
        ssim=s,
        pearson_r=pearson_r(a, b),  # before the fit: its sign shows inverted contrast
        frc_resolution=f.resolution,
        pixel_size=float(pixel_size),
        aligned=fitted.astype(np.float32),
        reference_cropped=b.astype(np.float32),
    )


# ---------------------------------------------------------------------------- transfer scoring
def lowpass(image: Any, pixel_size: float, resolution: float = 0.4) -> np.ndarray:
    """Gaussian low-pass transferring 10 % at spatial frequency 1/``resolution`` (same unit as
    ``pixel_size``): the convention of the simulated labels' information limit."""
    q = 1.0 / float(resolution)
    sigma = math.sqrt(math.log(10.0) / (2 * math.pi**2 * q**2))
    return ndimage.gaussian_filter(_as_2d(image, "image"), sigma / float(pixel_size), mode="nearest")


def lattice_vectors(reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """The two shortest non-collinear lattice vectors (px, sub-pixel) of a crystal image, from
    the peaks of its (circular) autocorrelation.

    A lattice translation maps the whole crystal onto itself, so its autocorrelation peak is
    about as high as the highest; a translation between sublattices (e.g. W onto S2 columns)
    overlaps only part of the crystal and peaks lower. Only peaks within 75 % of the highest
    non-zero shift count.
    """
    g = _as_2d(reference, "reference")
    g = g - g.mean()
    ac = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(g)) ** 2)))
    ac /= ac.max()
    cy, cx = (n // 2 for n in ac.shape)
    peaks = (ac == ndimage.maximum_filter(ac, size=5)) & (ac > 0.2)
    cands = []
    for y, x in zip(*np.nonzero(peaks)):
        if 0 < y < ac.shape[0] - 1 and 0 < x < ac.shape[1] - 1:
            dy = _parabolic(ac[y - 1, x], ac[y, x], ac[y + 1, x])
            dx = _parabolic(ac[y, x - 1], ac[y, x], ac[y, x + 1])
            v = np.array([y - cy + dy, x - cx + dx])
            if np.hypot(*v) > 2 and np.hypot(*v) < 0.45 * min(ac.shape):
                cands.append((float(ac[y, x]), v))
    if not cands:
        raise ValueError("no lattice peaks in the reference image's autocorrelation")
    top = max(h for h, _ in cands)
    vecs = sorted((v for h, v in cands if h >= 0.75 * top), key=lambda v: float(np.hypot(*v)))
    for i, a in enumerate(vecs):
        for b in vecs[i + 1 :]:
            if abs(a[0] * b[1] - a[1] * b[0]) > 0.3 * np.hypot(*a) * np.hypot(*b):
                return a, b
    raise ValueError("no two independent lattice vectors in the reference image")


def _refine_peak(image: np.ndarray, p: np.ndarray, radius: int) -> np.ndarray:
    y, x = int(round(p[0])), int(round(p[1]))
    y0, x0 = max(0, y - radius), max(0, x - radius)
    win = image[y0 : y + radius + 1, x0 : x + radius + 1]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    y, x = y0 + iy, x0 + ix
    dy = _parabolic(image[y - 1, x], image[y, x], image[y + 1, x]) if 0 < y < image.shape[0] - 1 else 0.0
    dx = _parabolic(image[y, x - 1], image[y, x], image[y, x + 1]) if 0 < x < image.shape[1] - 1 else 0.0
    return np.array([y + dy, x + dx])


def equivalent_sites(
    reference: Any, site: Any, pixel_size: float, *, margin: int = 3
) -> np.ndarray:
    """Sites equivalent to ``site`` (row, col) by the reference crystal's lattice
    translations, each refined to the nearest peak of the 0.4 Å low-passed reference; ``(n, 2)``,
    the site itself and positions within ``margin`` px of the edge excluded.

    The lattice vectors start from the autocorrelation and are refitted by least squares to
    the refined peaks, first of the nearest cells, then of all, so they do not drift across
    the field.
    """
    ref = _as_2d(reference, "reference")
    a1, a2 = lattice_vectors(ref)
    smooth = lowpass(ref, pixel_size)
    ny, nx = ref.shape
    s0 = np.asarray(site, float)
    radius = max(1, int(round(0.5 / pixel_size)))

    def predict(limit: int) -> tuple[np.ndarray, np.ndarray]:
        ij, pts = [], []
        for i in range(-limit, limit + 1):
            for j in range(-limit, limit + 1):
                if i == 0 and j == 0:
                    continue
                p = s0 + i * a1 + j * a2
                if margin <= p[0] <= ny - 1 - margin and margin <= p[1] <= nx - 1 - margin:
                    ij.append((i, j))
                    pts.append(_refine_peak(smooth, p, radius))
        return np.array(ij, float).reshape(-1, 2), np.array(pts).reshape(-1, 2)

    n = int(2 * max(ny, nx) / max(1.0, min(np.hypot(*a1), np.hypot(*a2)))) + 2
    for limit in (2, n):
        ij, pts = predict(limit)
        if len(ij) >= 3:  # least squares: pts - site = ij @ [a1; a2]
            sol = np.linalg.lstsq(ij, pts - s0, rcond=None)[0]
            a1, a2 = sol[0], sol[1]
    return predict(n)[1]


def defect_contrast(
    image: Any, reference: Any, site: Any, sites: Any, pixel_size: float, blur: float = 0.35
) -> float:
    """How clearly ``image`` shows a point defect, in standard deviations of the intact sites.

    Column intensities are Gaussian-weighted means over ``blur`` (unit of ``pixel_size``)
    around each site, after a scale/offset fit of the image to the reference; the result is
    (mean over the intact ``sites`` − value at ``site``) / their standard deviation, signed so
    that it is positive when the defect shows the way it does in ``reference``.
    """
    s = float(blur) / float(pixel_size)
    ref = ndimage.gaussian_filter(_as_2d(reference, "reference"), s)
    _, _, fitted = fit_scale_offset(ndimage.gaussian_filter(_as_2d(image, "image"), s), ref)
    pts = np.asarray(sites, float).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError("need at least 3 intact sites to measure a defect's contrast")

    def at(a: np.ndarray, p: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(a, np.atleast_2d(p).T, order=1)

    intact = at(fitted, pts)
    d = float(at(fitted, np.asarray(site, float))[0])
    sign = np.sign(at(ref, pts).mean() - at(ref, np.asarray(site, float))[0]) or 1.0
    sd = float(intact.std())
    return float(sign * (intact.mean() - d) / sd) if sd > 0 else math.nan


def uncertainty_error_correlation(
    image: Any, uncertainty: Any, reference: Any, crop: int = 3, window: float = 1.0
) -> float:
    """Spearman rank correlation between a per-pixel ``uncertainty`` and the actual error of
    ``image`` against ``reference`` (after a scale/offset fit of the image, the uncertainty
    scaled alike); ``crop`` edge pixels left out.

    A pixel's error is one draw of a random variable whose spread the uncertainty predicts
    (even a perfect σ ranks |N(0, σ)| at only ~0.4), so both are compared as local RMS over
    a Gaussian window of ``window`` pixels (σ; 0: pixel by pixel).
    """
    from scipy.stats import spearmanr

    a, b = _pair(image, reference)
    u = _as_2d(uncertainty, "uncertainty")
    scale, offset, fitted = fit_scale_offset(a, b)
    err2 = (fitted - b) ** 2
    unc2 = (scale * u) ** 2
    if window > 0:
        err2 = ndimage.gaussian_filter(err2, window, mode="nearest")
        unc2 = ndimage.gaussian_filter(unc2, window, mode="nearest")
    sl = (slice(crop, a.shape[0] - crop), slice(crop, a.shape[1] - crop))
    e, v = np.sqrt(err2[sl]).ravel(), np.sqrt(unc2[sl]).ravel()
    ok = np.isfinite(e) & np.isfinite(v)
    return float(spearmanr(v[ok], e[ok]).statistic)


# ---------------------------------------------------------------------------- resolution-aware scoring
#: Gaussian **σ** (Å, not FWHM; FWHM = 2.355 σ = 0.47 Å) that matches the resolution of the
#: bundled MoS2 ptychographic label (sample_data/mos2_monolayer.h5, ``/label/image``, py4DSTEM
#: single-slice, 0.097 Å object pixel): its correlation with the ground-truth projected
#: potential blurred by a Gaussian of σ, both on the 0.24 Å scan grid, peaks at σ ≈ 0.2 Å —
#: r 0.983 with the potential blurred before it is sampled (``simulate.truth``), 0.972 with
#: the sampled potential blurred afterwards (r 0.921 at σ = 0.12 Å; 0.849 unblurred).
#: tests/test_metrics_resolution.py re-measures both from the sample file.
LABEL_SIGMA_A = 0.2
#: the simulated labels' information limit: Gaussian with 10 % transfer at 0.4 Å (:func:`lowpass`)
LOWPASS_RESOLUTION_A = 0.4


def label_resolution(ground_truth: Any, pixel_size: float, sigma: float = LABEL_SIGMA_A) -> np.ndarray:
    """``ground_truth`` blurred with a Gaussian of standard deviation ``sigma`` (same unit as
    ``pixel_size``; default :data:`LABEL_SIGMA_A` in Å): the ground truth at the resolution of
    the ptychographic label. Edges extended with their nearest value, as :func:`lowpass`."""
    p, s = float(pixel_size), float(sigma)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"pixel_size must be positive, got {pixel_size!r}")
    if not (s >= 0 and math.isfinite(s)):
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    g = _as_2d(ground_truth, "ground_truth")
    return ndimage.gaussian_filter(g, s / p, mode="nearest") if s > 0 else g.copy()


@dataclass(frozen=True)
class ResolutionScore:
    """Scores of one image against a ground truth at three resolutions (all Pearson r, sign
    kept: negative means inverted contrast), over the image minus ``crop`` px per edge.

    ``r_label``: against the ground truth blurred with a Gaussian of σ = ``label_sigma_A``
    (the ptychographic label's resolution); ``r_raw``: against the ground truth itself;
    ``r_lowpass``: against it low-passed to 10 % transfer at ``lowpass_resolution_A``
    (:func:`lowpass`); ``ssim_label``: SSIM after a scale/offset fit, against the label-
    resolution ground truth (data range: its max − min); ``frc_resolution_A``: where the FRC of
    the image against the raw ground truth crosses the half-bit threshold (Å; None: no crossing
    below Nyquist). A noise-free blur alone does not lower the FRC (it is a ratio per ring):
    the crossing is where the image's signal sinks below its noise and errors."""

    r_label: float
    r_raw: float
    r_lowpass: float
    ssim_label: float
    frc_resolution_A: float | None
    label_sigma_A: float
    lowpass_resolution_A: float
    pixel_size_A: float
    crop: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolution_scores(
    image: Any,
    ground_truth: Any,
    pixel_size: float,
    *,
    label_sigma_A: float = LABEL_SIGMA_A,
    lowpass_resolution_A: float = LOWPASS_RESOLUTION_A,
    crop: int = 3,
    label_reference: Any = None,
    lowpass_reference: Any = None,
) -> ResolutionScore:
    """Score ``image`` against ``ground_truth`` (same scan grid ``(y, x)``, ``pixel_size`` in
    Å) at the label's resolution, raw, and low-passed, with SSIM and the half-bit FRC
    resolution (see :class:`ResolutionScore`). The references are blurred on the whole field,
    then ``crop`` px are removed from each edge of everything; no registration (simulated
    ground truths are on the scan grid).

    ``label_reference`` / ``lowpass_reference``: the ground truth at those resolutions blurred
    *before* it was sampled on the scan grid (for a simulation:
    ``napari_4dstem_ml.simulate.truth.ground_truth(path).at(sigma)``). Without them the sampled
    ``ground_truth`` is blurred here, which is exact only when it has no detail beyond the
    scan's Nyquist frequency — at steps of 0.3 Å and more atomic potentials do, and the
    blurred grid keeps their aliasing."""
    a, g = _pair(image, ground_truth)
    crop = int(crop)
    if crop < 0 or 2 * crop >= min(a.shape) - 2:
        raise ValueError(f"crop={crop} px leaves too little of a {a.shape} image")
    sl = (slice(crop, a.shape[0] - crop), slice(crop, a.shape[1] - crop))
    g_label = (label_resolution(g, pixel_size, label_sigma_A) if label_reference is None
               else _pair(a, label_reference)[1])[sl]
    g_low = (lowpass(g, pixel_size, lowpass_resolution_A) if lowpass_reference is None
             else _pair(a, lowpass_reference)[1])[sl]
    ac, gc = a[sl], g[sl]
    rng = float(g_label.max() - g_label.min())
    if min(ac.shape) > 10 and rng > 0:
        s = ssim(fit_scale_offset(ac, g_label)[2], g_label, rng)
    else:
        s = math.nan
    res = frc(ac, gc, pixel_size=pixel_size).resolution if min(ac.shape) >= 8 else None
    res = None if res is None else float(res)
    return ResolutionScore(
        r_label=pearson_r(ac, g_label),
        r_raw=pearson_r(ac, gc),
        r_lowpass=pearson_r(ac, g_low),
        ssim_label=s,
        frc_resolution_A=res,
        label_sigma_A=float(label_sigma_A),
        lowpass_resolution_A=float(lowpass_resolution_A),
        pixel_size_A=float(pixel_size),
        crop=crop,
    )
