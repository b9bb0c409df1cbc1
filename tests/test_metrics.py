"""Tests of napari_4dstem_ml.metrics against independent float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_4dstem_ml import metrics as M

# ----------------------------------------------------------------------------- helpers


def smooth_field(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")


def ssim_brute(a, b, data_range, sigma=1.5):
    """Wang et al. SSIM by explicit loops over 11x11 Gaussian-weighted windows (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    r = int(3.5 * sigma + 0.5)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    w = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    w /= w.sum()
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    vals = []
    for i in range(r, a.shape[0] - r):
        for j in range(r, a.shape[1] - r):
            pa = a[i - r : i + r + 1, j - r : j + r + 1]
            pb = b[i - r : i + r + 1, j - r : j + r + 1]
            ma = np.sum(w * pa)
            mb = np.sum(w * pb)
            va = np.sum(w * (pa - ma) ** 2)
            vb = np.sum(w * (pb - mb) ** 2)
            cov = np.sum(w * (pa - ma) * (pb - mb))
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_matches_definition():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 4, (20, 30))
    img = ref + rng.normal(0, 0.1, ref.shape)
    mse = np.mean((img - ref) ** 2)
    assert M.psnr(img, ref, 4.0) == pytest.approx(10 * math.log10(16 / mse), rel=1e-12)
    assert M.psnr(ref, ref, 1.0) == math.inf
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(img, ref, 0)
    with pytest.raises(ValueError, match="shape"):
        M.psnr(img, ref[:5], 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, (24, 21))
    b = 0.6 * a + 0.4 * rng.uniform(0, 1, a.shape) + 0.1
    assert M.ssim(a, b, 1.2) == pytest.approx(ssim_brute(a, b, 1.2), abs=1e-10)
    # symmetry and identity
    assert M.ssim(b, a, 1.2) == pytest.approx(M.ssim(a, b, 1.2), abs=1e-12)
    assert M.ssim(a, a, 1.0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, (40, 37))
    b = a + rng.normal(0, 0.2, a.shape)
    ref = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.5
    )
    assert M.ssim(a, b, 1.5) == pytest.approx(ref, abs=1e-10)


def test_ssim_too_small_image_raises():
    with pytest.raises(ValueError, match="window"):
        M.ssim(np.ones((8, 30)), np.ones((8, 30)), 1.0)


# ----------------------------------------------------------------------------- fit / r


def test_fit_scale_offset_and_pearson():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(30, 30))
    img = (ref - 0.7) / 2.5 + rng.normal(0, 0.01, ref.shape)
    s, o, fitted = M.fit_scale_offset(img, ref)
    # independent least squares with lstsq
    A = np.stack([img.ravel(), np.ones(img.size)], 1)
    (s_ref, o_ref), *_ = np.linalg.lstsq(A, ref.ravel(), rcond=None)
    assert s == pytest.approx(s_ref, rel=1e-10)
    assert o == pytest.approx(o_ref, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(fitted, s * img + o)
    r = M.pearson_r(img, ref)
    assert r == pytest.approx(np.corrcoef(img.ravel(), ref.ravel())[0, 1], rel=1e-12)
    assert M.pearson_r(fitted, ref) == pytest.approx(r, rel=1e-12)
    assert M.pearson_r(-img, ref) == pytest.approx(-r, rel=1e-12)
    assert math.isnan(M.pearson_r(np.ones((4, 4)), ref[:4, :4]))
    s0, o0, _ = M.fit_scale_offset(np.ones((4, 4)), ref[:4, :4])
    assert s0 == 0.0 and o0 == pytest.approx(ref[:4, :4].mean())


# ----------------------------------------------------------------------------- shift


@pytest.mark.parametrize("shift", [(3.3, -5.7), (-0.45, 0.8), (0.0, 12.25)])
def test_register_shift_non_periodic(shift):
    big = smooth_field((200, 200), 1.5, seed=7)
    moved = ndimage.shift(big, shift, order=3, mode="nearest")  # moved(y) = big(y - shift)
    sl = (slice(40, 136), slice(50, 150))
    dy, dx = M.register_shift(moved[sl], big[sl], upsample=20)
    assert dy == pytest.approx(shift[0], abs=0.1)
    assert dx == pytest.approx(shift[1], abs=0.1)
    dy1, dx1 = M.register_shift(moved[sl], big[sl], upsample=1)
    assert (dy1, dx1) == (round(shift[0]), round(shift[1]))


# ----------------------------------------------------------------------------- FRC


def band_limited(shape, q_cut, seed):
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.normal(size=shape))
    qy = np.fft.fftfreq(shape[0])[:, None]
    qx = np.fft.fftfreq(shape[1])[None, :]
    f[np.hypot(qy, qx) > q_cut] = 0
    return np.fft.ifft2(f).real


def test_half_bit_threshold_values():
    n = np.array([1.0, 100.0, 1e8])
    expected = (0.2071 + 1.9102 / np.sqrt(n)) / (1.2071 + 0.9102 / np.sqrt(n))
    np.testing.assert_allclose(M.half_bit_threshold(n), expected)
    assert M.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, rel=1e-5)


@pytest.mark.parametrize("q_cut", [0.15, 0.3])
def test_frc_crosses_near_band_limit(q_cut):
    sig = band_limited((128, 128), q_cut, seed=1)
    sig /= sig.std()
    rng = np.random.default_rng(2)
    a = sig + 0.5 * rng.normal(size=sig.shape)
    b = sig + 0.5 * rng.normal(size=sig.shape)
    px = 0.5
    res = M.frc(a, b, pixel_size=px)
    dq = 1 / (128 * px)
    assert res.freq[1] == pytest.approx(dq)
    assert res.resolution is not None
    # crossing (1/Å) at the band limit, or a few rings beyond it through window leakage
    q_cross = 1 / res.resolution
    assert q_cut / px - 0.5 * dq <= q_cross <= q_cut / px + 3 * dq
    low = (res.freq > 2.5 * dq) & (res.freq < 0.8 * q_cut / px)
    assert np.all(res.frc[low] > res.threshold[low])
    # a pixel size only rescales the frequency axis
    res1 = M.frc(a, b)
    assert res1.resolution == pytest.approx(res.resolution / px)


def test_frc_identical_and_independent():
    a = smooth_field((96, 80), 1.0, seed=3)
    same = M.frc(a, a)
    np.testing.assert_allclose(same.frc[1:], 1.0, atol=1e-12)
    assert same.resolution is None
    rng = np.random.default_rng(4)
    ind = M.frc(rng.normal(size=(128, 128)), rng.normal(size=(128, 128)))
    frac_below = np.mean(np.abs(ind.frc[2:]) < ind.threshold[2:])
    assert frac_below > 0.9
    assert abs(np.mean(ind.frc[2:])) < 0.05


# ----------------------------------------------------------------------------- diffractograms

A_MOS2 = 3.16
PX = 0.2


def mos2_image(n=256, q_cut=None, noise=0.05, sigma_atom=0.12, blur=0.08, theta=10.0, seed=0):
    """Hexagonal MoS2-like lattice of Gaussian atoms (Mo 1.0 at 0, S2 0.6 at 1/3,1/3)."""
    rng = np.random.default_rng(seed)
    t = np.deg2rad(theta)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    a1 = rot @ np.array([A_MOS2, 0.0])
    a2 = rot @ np.array([A_MOS2 / 2, A_MOS2 * np.sqrt(3) / 2])
    size = n * PX
    m = int(size / A_MOS2 * 2) + 4
    ii, jj = np.meshgrid(np.arange(-m, m), np.arange(-m, m), indexing="ij")
    base = ii.ravel()[:, None] * a1 + jj.ravel()[:, None] * a2
    pos = np.concatenate([base, base + (a1 + a2) / 3])  # (x, y) in Å
    w = np.r_[np.full(len(base), 1.0), np.full(len(base), 0.6)]
    keep = np.all((pos > -1) & (pos < size + 0.5), axis=1)
    pos, w = pos[keep], w[keep]
    img = np.zeros((n + 20, n + 20))
    off = np.arange(-6, 7)
    c = pos / PX
    ci = np.round(c).astype(int)
    dy = (ci[:, 1, None] + off - c[:, 1, None]) * PX
    dx = (ci[:, 0, None] + off - c[:, 0, None]) * PX
    g = w[:, None, None] * np.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma_atom**2))
    yy = np.broadcast_to(ci[:, 1, None, None] + off[None, :, None] + 10, g.shape)
    xx = np.broadcast_to(ci[:, 0, None, None] + off[None, None, :] + 10, g.shape)
    np.add.at(img, (yy, xx), g)
    img = img[10:-10, 10:-10]
    qy = np.fft.fftfreq(n, PX)[:, None]
    qx = np.fft.fftfreq(n, PX)[None, :]
    q2 = qy**2 + qx**2
    tf = np.exp(-2 * np.pi**2 * blur**2 * q2)
    if q_cut is not None:
        tf = tf * (q2 < q_cut**2)
    img = np.fft.ifft2(np.fft.fft2(img) * tf).real
    return img + noise * rng.normal(size=img.shape)


def hex_shells(a, g_max):
    """|g| of the hexagonal reflection shells below g_max (1/Å), from h² + hk + k²."""
    ns = sorted({h * h + h * k + k * k for h in range(-30, 31) for k in range(-30, 31)} - {0})
    g = [2 / (a * math.sqrt(3)) * math.sqrt(n) for n in ns]
    return [x for x in g if x < g_max]


@pytest.mark.parametrize("d_cut", [0.85, 0.65])
@pytest.mark.parametrize("seed", [0, 1])
def test_information_limit_on_band_limited_lattice(d_cut, seed):
    img = mos2_image(q_cut=1 / d_cut, seed=seed)
    res = M.information_limit(img, PX)
    g_expected = max(hex_shells(A_MOS2, 1 / d_cut))
    dq = 1 / (img.shape[0] * PX)
    assert res.resolution_A is not None
    assert 1 / res.resolution_A == pytest.approx(g_expected, abs=1.5 * dq)
    assert res.spots[0].g == pytest.approx(1 / res.resolution_A)
    # the strong low-order spots are found too, one per Friedel pair: six {100}+{110} spots
    g100 = 2 / (A_MOS2 * math.sqrt(3))
    assert sum(abs(s.g - g100) < 1.5 * dq for s in res.spots) == 3


def test_information_limit_pure_noise_has_no_spots():
    rng = np.random.default_rng(11)
    for shape in [(256, 256), (300, 200)]:
        res = M.information_limit(rng.normal(size=shape) + 5.0, 0.3)
        assert res.resolution_A is None and res.spots == []


def test_lattice_spacings_mos2():
    img = mos2_image(n=128, noise=0.05, sigma_atom=0.3, blur=0.2, theta=23.0)
    d = M.lattice_spacings(img, PX, n=6)
    d100 = A_MOS2 * math.sqrt(3) / 2
    d110 = A_MOS2 / 2
    assert len(d) == 6
    # the six strongest Friedel pairs are the three {100} and three {110} pairs
    got = sorted(d)
    np.testing.assert_allclose(got[:3], d110, rtol=0.02)
    np.testing.assert_allclose(got[3:], d100, rtol=0.02)


# ----------------------------------------------------------------------------- contrast


def test_contrast_definitions():
    rng = np.random.default_rng(0)
    img = rng.uniform(1, 3, (50, 50))
    c = M.contrast(img)
    lo, hi = np.percentile(img, [1, 99])
    assert c.michelson == pytest.approx((hi - lo) / (hi + lo))
    assert c.rms == pytest.approx(img.std() / img.mean())
    mask = np.zeros(img.shape, bool)
    mask[:10] = True
    cm = M.contrast(img, mask, percentiles=(0, 100))
    sub = img[:10]
    assert cm.michelson == pytest.approx((sub.max() - sub.min()) / (sub.max() + sub.min()))
    assert math.isnan(M.contrast(np.zeros((5, 5))).michelson)
    with pytest.raises(ValueError, match="mask"):
        M.contrast(img, np.zeros((3, 3), bool))


# ----------------------------------------------------------------------------- compare


def test_compare_recovers_shift_scale_and_reports_metrics():
    big = smooth_field((160, 160), 1.5, seed=9)
    ref = big[30:126, 30:126]
    moved = ndimage.shift(big, (1.6, -2.3), order=3, mode="nearest")[30:126, 30:126]
    img = 3.0 * moved + 10.0
    rep = M.compare(img, ref, pixel_size=0.2)
    assert rep.shift_yx[0] == pytest.approx(1.6, abs=0.1)
    assert rep.shift_yx[1] == pytest.approx(-2.3, abs=0.1)
    assert rep.scale == pytest.approx(1 / 3, rel=0.02)
    assert rep.offset == pytest.approx(-10 / 3, rel=0.05, abs=0.05)
    assert rep.crop == 3 + 5
    assert rep.aligned.shape == (96 - 16, 96 - 16)
    cropped = ref[8:-8, 8:-8]
    assert rep.data_range == pytest.approx(cropped.max() - cropped.min(), rel=1e-6)
    assert rep.pearson_r > 0.99
    assert rep.ssim > 0.95
    assert rep.psnr == pytest.approx(
        M.psnr(rep.aligned.astype(np.float64), cropped, rep.data_range), abs=0.05
    )
    d = rep.to_dict()
    assert "aligned" not in d and d["crop"] == 8
    assert "PSNR" in rep.summary()


# ---------------------------------------------------------------------------- transfer scoring
def _lattice(shape=(64, 64), a=(7.3, 0.0), b=(0.0, 6.1), sigma=1.0, missing=None, amp=None, noise=0.0, seed=0):
    """Gaussian atoms on a lattice a, b (px); ``missing`` (i, j) gets amplitude ``amp``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    sites = {}
    for i in range(-2, 14):
        for j in range(-2, 14):
            p = np.array([3.2, 2.7]) + i * np.array(a) + j * np.array(b)
            w = amp if (i, j) == missing else 1.0
            img += w * np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / (2 * sigma**2))
            sites[(i, j)] = p
    rng = np.random.default_rng(seed)
    return img + noise * rng.standard_normal(shape), sites


def test_lattice_vectors_and_equivalent_sites_of_a_known_lattice():
    img, sites = _lattice(a=(0.0, 7.3), b=(6.1, 0.0))
    a1, a2 = M.lattice_vectors(img)  # a first estimate from the autocorrelation
    lengths = sorted([np.hypot(*a1), np.hypot(*a2)])
    assert lengths == pytest.approx([6.1, 7.3], rel=0.03)
    eq = M.equivalent_sites(img, sites[(4, 4)], pixel_size=0.24, margin=3)
    inside = [p for k, p in sites.items() if k != (4, 4) and 3 <= p[0] <= 60 and 3 <= p[1] <= 60]
    assert len(eq) == len(inside)
    d = np.min(np.hypot(*(eq[:, None, :] - np.array(inside)[None]).transpose(2, 0, 1)), axis=1)
    assert d.max() < 0.1


def test_defect_contrast_in_sigma_of_the_intact_sites():
    """A site at half amplitude in noise: the contrast equals the drop over the intact sites'
    scatter; an image that does not show the defect scores about zero; the sign follows the
    reference."""
    truth, sites = _lattice(missing=(4, 4), amp=0.5)
    eq = M.equivalent_sites(truth, sites[(4, 4)], pixel_size=0.24)
    noisy, _ = _lattice(missing=(4, 4), amp=0.5, noise=0.05, seed=1)
    intact, _ = _lattice(noise=0.05, seed=1)
    c_def = M.defect_contrast(noisy, truth, sites[(4, 4)], eq, pixel_size=0.1, blur=0.1)
    c_none = M.defect_contrast(intact, truth, sites[(4, 4)], eq, pixel_size=0.1, blur=0.1)
    assert c_def > 5 and abs(c_none) < 3
    assert M.defect_contrast(-noisy, truth, sites[(4, 4)], eq, pixel_size=0.1, blur=0.1) == pytest.approx(c_def)
    with pytest.raises(ValueError, match="3 intact sites"):
        M.defect_contrast(noisy, truth, sites[(4, 4)], eq[:2], pixel_size=0.1)


def test_uncertainty_error_correlation_ranks():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 40))
    sd = np.linspace(0.01, 1.0, 1600).reshape(40, 40)
    img = 3.0 * (ref + sd * rng.standard_normal((40, 40))) + 7.0
    good = M.uncertainty_error_correlation(img, 3.0 * sd, ref)
    bad = M.uncertainty_error_correlation(img, rng.random((40, 40)), ref)
    pixelwise = M.uncertainty_error_correlation(img, 3.0 * sd, ref, window=0)
    assert good > 0.7 and abs(bad) < 0.2
    assert 0.2 < pixelwise < 0.6  # a pixel's error is one draw: even the true σ ranks it weakly


def test_compare_reports_inverted_contrast_as_negative_r():
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.standard_normal((48, 48)), 2)
    rep = M.compare(-ref + 0.01 * rng.standard_normal((48, 48)), ref, register=False)
    assert rep.pearson_r < -0.99 and rep.scale < 0 and rep.ssim > 0.9
