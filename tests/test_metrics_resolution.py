"""Resolution-aware scoring (metrics.resolution_scores) against independent references: an
analytic sum of cosines blurred by exact Gaussian transfer factors, brute-force Pearson r,
the analytic FRC crossing of a blurred white-noise field with added noise, and the bundled
label's own resolution re-measured from the sample file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from napari_4dstem_ml.metrics import (
    LABEL_SIGMA_A,
    half_bit_threshold,
    label_resolution,
    resolution_scores,
)

PIX = 0.1  # Å
N = 96
#: (qy, qx) in 1/Å, amplitude, phase
WAVES = [((0.52, 0.21), 1.0, 0.3), ((-0.9, 1.1), 0.7, 1.1), ((1.9, 0.4), 0.5, 2.0),
         ((0.3, -2.6), 0.4, 0.7), ((2.2, 2.0), 0.3, 1.6)]


def cosines(transfer=lambda q: 1.0) -> np.ndarray:
    y = np.arange(N)[:, None] * PIX
    x = np.arange(N)[None, :] * PIX
    out = np.zeros((N, N))
    for (qy, qx), a, ph in WAVES:
        out += a * transfer(math.hypot(qy, qx)) * np.cos(2 * np.pi * (qy * y + qx * x) + ph)
    return out


def gauss_tf(sigma):
    return lambda q: math.exp(-2 * math.pi**2 * sigma**2 * q**2)


def tenpct_tf(res):
    return lambda q: 10.0 ** (-(q * res) ** 2)  # 10 % transfer at q = 1/res


def brute_r(a, b) -> float:
    a, b = a.ravel(), b.ravel()
    n = a.size
    ma, mb = sum(a) / n, sum(b) / n
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    da = math.sqrt(sum((x - ma) ** 2 for x in a))
    db = math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (da * db)


def test_blurred_image_scores_one_at_its_own_resolution():
    gt = cosines()
    blurred = cosines(gauss_tf(LABEL_SIGMA_A))  # exact, no edges
    c = 8  # Gaussian truncation and 'nearest' edges stay outside
    s = resolution_scores(blurred, gt, PIX, crop=c)
    sl = (slice(c, N - c),) * 2
    assert s.r_label > 0.9995
    assert s.r_raw == pytest.approx(brute_r(blurred[sl], gt[sl]), abs=1e-9)
    assert s.r_raw < 0.95  # the sharp reference penalises the blur ...
    sharp = resolution_scores(gt, gt, PIX, crop=c)
    assert sharp.r_raw == pytest.approx(1.0) and sharp.r_label < s.r_label  # ... and vice versa
    assert s.r_lowpass == pytest.approx(brute_r(blurred[sl], cosines(tenpct_tf(0.4))[sl]), abs=2e-3)
    assert s.r_label == pytest.approx(brute_r(blurred[sl], blurred[sl]), abs=5e-4)
    assert s.ssim_label > 0.999
    # the blur helper against the exact transfer
    np.testing.assert_allclose(label_resolution(gt, PIX)[sl], blurred[sl], atol=2e-3)
    assert s.label_sigma_A == 0.2 and s.lowpass_resolution_A == 0.4


def analytic_crossing(sigma, noise_to_signal, n_pixels, dq):
    """1/q where E[FRC] = H/sqrt(H^2 + N/S) of a blurred white field plus white noise first
    meets the half-bit threshold (linear interpolation between rings, as frc does)."""
    k = np.arange(len(n_pixels))
    h = np.exp(-2 * np.pi**2 * sigma**2 * (k * dq) ** 2)
    curve = h / np.sqrt(h**2 + noise_to_signal)
    thr = half_bit_threshold(n_pixels)
    d = curve - thr
    j = int(np.flatnonzero((d < 0) & (k >= 3))[0])
    return 1.0 / ((j - 1 + d[j - 1] / (d[j - 1] - d[j])) * dq)


@pytest.mark.parametrize("sigma", [0.15, 0.3])
def test_frc_resolution_of_a_blurred_noisy_image_matches_the_analytic_crossing(sigma):
    from napari_4dstem_ml.metrics import frc

    rng = np.random.default_rng(5)
    n, ratio = 128, 1e-3
    gt = rng.normal(size=(n, n))
    qy = np.fft.fftfreq(n, PIX)[:, None]
    qx = np.fft.fftfreq(n, PIX)[None, :]
    h = np.exp(-2 * np.pi**2 * sigma**2 * (qy**2 + qx**2))
    img = np.fft.ifft2(np.fft.fft2(gt) * h).real + rng.normal(size=(n, n)) * math.sqrt(ratio)
    s = resolution_scores(img, gt, PIX, crop=0)
    ref = frc(img, gt, PIX)
    expect = analytic_crossing(sigma, ratio, ref.n_pixels, ref.freq[1])
    assert s.frc_resolution_A == pytest.approx(expect, rel=0.12)
    # and, with these numbers, near the blur's own scale: q* = sqrt(ln(1/ratio * ...)) / (2 pi sigma)
    assert 2 * sigma < s.frc_resolution_A < 5 * sigma


def test_label_sigma_matches_the_bundled_ptychographic_label():
    import importlib.util

    import h5py
    from scipy import ndimage

    path = Path(__file__).resolve().parents[1] / "sample_data" / "mos2_monolayer.h5"
    if not path.is_file():
        pytest.skip("bundled sample not present")
    with h5py.File(path, "r") as f:
        lab = f["label/image"][()]
        o = f["label/image"].attrs["origin_A"]
        p = float(f["label/image"].attrs["pixel_size_A"])
        gt = f["ground_truth/potential"][()].astype(float)
        step = float(f.attrs["scan_step_A"][0])
    yy, xx = np.meshgrid(np.arange(gt.shape[0]) * step, np.arange(gt.shape[1]) * step, indexing="ij")
    on_scan = ndimage.map_coordinates(lab, [(yy - o[0]) / p, (xx - o[1]) / p], order=3)
    sigmas = np.arange(0.08, 0.32, 0.02)
    # the sampled truth blurred afterwards (what a user's compare view can do) ...
    rs = [resolution_scores(on_scan, gt, step, label_sigma_A=s, crop=4).r_label for s in sigmas]
    best = sigmas[int(np.argmax(rs))]
    assert 0.17 <= best <= 0.25 and abs(best - LABEL_SIGMA_A) <= 0.04
    assert max(rs) > 0.95
    if importlib.util.find_spec("abtem") is None:
        return
    # ... and, as the label itself was made, the potential blurred before it is sampled
    from napari_4dstem_ml.simulate.truth import ground_truth

    truth = ground_truth(path)
    sl = (slice(4, -4), slice(4, -4))
    rs_before = [np.corrcoef(on_scan[sl].ravel(), truth.at(s)[sl].ravel())[0, 1] for s in sigmas]
    best = sigmas[int(np.argmax(rs_before))]
    assert abs(best - LABEL_SIGMA_A) <= 0.03
    assert max(rs_before) > max(rs) + 0.005  # the right reference fits the label better
