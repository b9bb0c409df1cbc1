"""BF-disk centre, radius and descan fit on synthetic data with known answers."""

import numpy as np
import pytest

from napari_4dstem_ml.detectors.centre import (
    CentreError,
    DescanFit,
    bf_disk_radius,
    find_bf_centre,
    fit_descan,
)


def _disk(shape, cy, cx, r, level=100.0, bg=2.0, oversample=8):
    """Anti-aliased disk: each pixel's area fraction inside the circle (sub-sampled)."""
    o = oversample
    sub = (np.arange(o) + 0.5) / o - 0.5
    yy = np.arange(shape[0])[:, None, None, None] + sub[None, None, :, None]
    xx = np.arange(shape[1])[None, :, None, None] + sub[None, None, None, :]
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).mean(axis=(2, 3))
    return bg + (level - bg) * inside


@pytest.mark.parametrize("cy, cx", [(31.37, 29.81), (40.5, 20.23)])
def test_centre_of_synthetic_disk(cy, cx):
    rng = np.random.default_rng(0)
    p = _disk((64, 60), cy, cx, 11.3) + rng.normal(0, 0.5, (64, 60))
    fy, fx = find_bf_centre(p)
    assert abs(fy - cy) < 0.05 and abs(fx - cx) < 0.05
    assert abs(bf_disk_radius(p, (fy, fx)) - 11.3) < 0.15


def test_flat_pattern_raises():
    with pytest.raises(CentreError):
        find_bf_centre(np.ones((16, 16)))
    with pytest.raises(CentreError):
        find_bf_centre(np.ones(16))


def test_descan_fit_recovers_planted_plane_despite_outliers():
    rng = np.random.default_rng(3)
    ny, nx = 20, 25
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    cy = 30.2 + 0.031 * yy - 0.012 * xx + rng.normal(0, 0.01, (ny, nx))
    cx = 28.7 - 0.008 * yy + 0.045 * xx + rng.normal(0, 0.01, (ny, nx))
    bad = rng.choice(ny * nx, 8, replace=False)
    cy.ravel()[bad] += 5.0
    cx.ravel()[bad[:4]] -= 7.0
    fit = fit_descan(cy, cx)
    np.testing.assert_allclose(fit.y, (30.2, 0.031, -0.012), atol=5e-3)
    np.testing.assert_allclose(fit.x, (28.7, -0.008, 0.045), atol=5e-3)
    assert fit.n_outliers >= 8 and fit.rms < 0.03
    my, mx = fit.centres((ny, nx))
    assert my.shape == (ny, nx)
    assert np.allclose(fit.centre_at(3, 4), (my[3, 4], mx[3, 4]))
    assert DescanFit.from_json(fit.to_json()) == fit


def test_bf_disk_takes_the_radius_from_the_calibration_when_it_can():
    from napari_4dstem_ml.dataset import Calibration
    from napari_4dstem_ml.detectors import bf_disk, bf_disk_radius, find_bf_centre

    yy, xx = np.mgrid[:64, :64]
    pattern = (np.hypot(yy - 30.3, xx - 33.6) < 12.0).astype(float) * 100 + 1
    centre, r = bf_disk(pattern)
    assert centre == find_bf_centre(pattern)
    assert r == bf_disk_radius(pattern, centre) and abs(r - 12.0) < 0.5
    cal = Calibration(detector_pixel=(0.5, 0.5), convergence_mrad=7.0)
    assert bf_disk(pattern, cal)[1] == pytest.approx(14.0)
    # without a convergence angle the pattern decides
    assert bf_disk(pattern, Calibration(detector_pixel=(0.5, 0.5)))[1] == r


def _blurred_disk(shape, centre, radius, psf_sigma, level=200.0, dark_field=3.0, seed=0):
    """A disk of ``radius`` px about ``centre`` (8 x 8 supersampled, so its area is exact),
    blurred by a Gaussian point spread, on a dark-field background decaying outwards, with
    Poisson noise, one hot and one dead pixel: what a mean pattern of real data looks like."""
    from scipy import ndimage

    s = 8
    yy, xx = np.mgrid[: shape[0] * s, : shape[1] * s]
    r = np.hypot((yy + 0.5) / s - 0.5 - centre[0], (xx + 0.5) / s - 0.5 - centre[1])
    disk = (r < radius).reshape(shape[0], s, shape[1], s).mean((1, 3))
    img = ndimage.gaussian_filter(disk * level, psf_sigma) if psf_sigma else disk * level
    ry, rx = np.mgrid[: shape[0], : shape[1]]
    rr = np.hypot(ry - centre[0], rx - centre[1])
    img = img + dark_field * np.exp(-np.clip(rr - radius, 0, None) / (2 * radius + 5))
    rng = np.random.default_rng(seed)
    img = rng.poisson(img * 50) / 50.0
    img[3, 5] = 50 * level  # a hot pixel
    img[int(centre[0]), int(centre[1]) + 1] = 0.0  # a dead one inside the disk
    return img


@pytest.mark.parametrize("radius,psf,shape", [(2.0, 0.5, (256, 256)), (6.5, 0.7, (128, 128)),
                                              (15.3, 1.0, (128, 128)), (30.7, 1.5, (128, 128)),
                                              (48.2, 1.0, (192, 192))])
def test_bf_disk_radius_and_centre_on_blurred_noisy_disks(radius, psf, shape):
    """Radius within 2 % (or 0.1 px) and centre within 0.05 px of the disk drawn, for disks
    from 2 px (a Merlin at a small camera length) to half the detector, whatever their size
    relative to the detector, with a hot pixel far brighter than the disk."""
    from napari_4dstem_ml.detectors.centre import measure_bf_disk

    centre = (shape[0] / 2 - 2.3, shape[1] / 2 + 1.6)
    pattern = _blurred_disk(shape, centre, radius, psf)
    disk = measure_bf_disk(pattern)
    assert disk.radius_px == pytest.approx(radius, abs=max(0.1, 0.02 * radius))
    assert disk.centre == pytest.approx(centre, abs=0.05)


def test_convergence_offered_from_the_disk_and_the_detector_pixel():
    from napari_4dstem_ml.dataset import Calibration
    from napari_4dstem_ml.detectors.centre import measure_bf_disk

    pattern = _blurred_disk((128, 128), (63.2, 64.9), 25.0, 0.8)
    assert measure_bf_disk(pattern).convergence_mrad is None
    disk = measure_bf_disk(pattern, Calibration(detector_pixel=(0.84, 0.84)))
    assert disk.convergence_mrad == pytest.approx(25.0 * 0.84, rel=0.02)
