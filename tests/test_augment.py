"""On-the-fly augmentation keeps the physics: the label relation survives every transform."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_4dstem_ml.dataset import Calibration, Dataset4D  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from napari_4dstem_ml.training.augment import (  # noqa: E402
    AugmentConfig,
    AugmentError,
    d4_matrix,
    sample_tile,
)

N, D, GAIN = 24, 32, 0.5  # scan, detector, CoM shift per unit phase gradient (px)


def _phi(y, x):
    """A quadratic 'phase' in scan steps: central differences give its gradient exactly."""
    return 0.02 * y**2 - 0.015 * x * y + 0.01 * x**2 + 0.3 * y - 0.2 * x


def _com_dataset():
    """Each pattern: a narrow Gaussian spot displaced from the detector centre by
    GAIN · ∇φ at its scan position (a centre-of-mass / phase-gradient relation)."""
    yy, xx = np.mgrid[:N, :N].astype(float)
    gy = 0.04 * yy - 0.015 * xx + 0.3
    gx = -0.015 * yy + 0.02 * xx - 0.2
    k = np.arange(D) - (D - 1) / 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    cy, cx = GAIN * gy, GAIN * gx
    pats = np.exp(-((ky[None, None] - cy[..., None, None]) ** 2 + (kx[None, None] - cx[..., None, None]) ** 2)
                  / (2 * 2.0**2))
    pats = (1e4 * pats / pats.sum(axis=(2, 3), keepdims=True)).astype(np.float32)
    cal = Calibration(scan_step=(0.2, 0.2), detector_pixel=(1.0, 1.0), convergence_mrad=10.0)
    return Dataset4D(pats, cal), _phi(yy, xx)


def _com(x):
    k = np.arange(D) - (D - 1) / 2
    s = x.sum(axis=(-1, -2))
    return (x * k[:, None]).sum(axis=(-1, -2)) / s, (x * k[None, :]).sum(axis=(-1, -2)) / s


@pytest.fixture(scope="module")
def field():
    ds, phi = _com_dataset()
    pre = Preprocessor.fit(ds, PreprocessConfig(output_shape=(D, D), normalise=False,
                                                standardise=False, centre=((D - 1) / 2, (D - 1) / 2)))
    lin = pre.transform(np.asarray(ds.data), stage="linear")
    return pre, lin, phi.astype(np.float32)


def test_d4_matrices_form_the_square_group():
    mats = [d4_matrix(i) for i in range(8)]
    assert len({m.tobytes() for m in mats}) == 8
    for m in mats:
        assert abs(round(np.linalg.det(m))) == 1 and np.array_equal(m @ m.T, np.eye(2))


@pytest.mark.parametrize("seed", range(6))
def test_joint_symmetries_keep_com_equal_to_the_label_gradient(field, seed):
    """After a joint rotation/mirror the CoM of every kept pattern still equals GAIN × the
    central-difference gradient of the (transformed) label: scan and detector turned alike."""
    pre, lin, phi = field
    cfg = AugmentConfig(symmetry=True, scan_scale=0.0, centre_shift_px=0.0, descan_px=0.0,
                        detector_zoom=0.0, detector_coarsen=1.0, dose_range=None, thinning=None,
                        probability=1.0)
    region = np.ones((N, N), bool)
    rng = np.random.default_rng(seed)
    t = sample_tile(lin, phi, region, (6, 16, 5, 15), 3, pre, rng, cfg)
    assert t.keep.all()
    cy, cx = _com(t.x[1:-1, 1:-1])  # the outputs' own patterns (halo of K//2 = 1)
    gy = (t.y[2:, 1:-1] - t.y[:-2, 1:-1]) / 2
    gx = (t.y[1:-1, 2:] - t.y[1:-1, :-2]) / 2
    np.testing.assert_allclose(cy[1:-1, 1:-1], GAIN * gy, atol=2e-3)
    np.testing.assert_allclose(cx[1:-1, 1:-1], GAIN * gx, atol=2e-3)


def test_rotation_and_scan_step_keep_the_relation_approximately(field):
    pre, lin, phi = field
    cfg = AugmentConfig(symmetry=True, rotation_deg=20.0, scan_scale=0.15, centre_shift_px=0.0,
                        descan_px=0.0, detector_zoom=0.0, detector_coarsen=1.0, dose_range=None,
                        thinning=None, probability=1.0)
    rng = np.random.default_rng(3)
    t = sample_tile(lin, phi, np.ones((N, N), bool), (7, 17, 7, 17), 3, pre, rng, cfg)
    cy, cx = _com(t.x[1:-1, 1:-1])
    gy = (t.y[2:, 1:-1] - t.y[:-2, 1:-1]) / 2
    gx = (t.y[1:-1, 2:] - t.y[1:-1, :-2]) / 2
    # the label is sampled every s data steps, so its gradient per output step is s × the
    # data's: |CoM| / (GAIN |∇label|) is the same 1/s everywhere, with |s - 1| <= 0.15
    ratio = np.hypot(cy, cx)[1:-1, 1:-1] / (GAIN * np.hypot(gy, gx))
    assert ratio.std() < 0.03 * ratio.mean()
    assert 1 / 1.16 < ratio.mean() < 1 / 0.84
    # and the direction agrees: CoM parallel to the label gradient
    cos = (cy[1:-1, 1:-1] * gy + cx[1:-1, 1:-1] * gx) / (np.hypot(cy, cx)[1:-1, 1:-1] * np.hypot(gy, gx))
    assert cos.min() > 0.995


def test_validation_patterns_never_enter_a_tile(field):
    pre, lin, phi = field
    region = np.zeros((N, N), bool)
    region[:12] = True
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(probability=1.0, rotation_deg=30.0)
    for _ in range(20):
        t = sample_tile(lin, phi, region, (6, 14, 6, 14), 3, pre, rng, cfg)
        # every kept output's 3 × 3 neighbourhood holds only non-zero (training) patterns
        nz = t.x.reshape(*t.x.shape[:2], -1).any(-1)
        ys, xs = np.nonzero(t.keep)
        for y, x in zip(ys, xs):
            assert nz[y : y + 3, x : x + 3].all()


def test_dose_resampling_keeps_the_mean_and_adds_poisson_noise(field):
    pre, lin, phi = field
    cfg = AugmentConfig(symmetry=False, scan_scale=0.0, centre_shift_px=0.0, descan_px=0.0,
                        detector_zoom=0.0, detector_coarsen=1.0, dose_range=(100.0, 100.0),
                        thinning=None, probability=1.0)
    rng = np.random.default_rng(1)
    clean = sample_tile(lin, phi, np.ones((N, N), bool), (4, 20, 4, 20), 3, pre, rng,
                        AugmentConfig.off())
    fractions = lin / lin.sum(axis=(2, 3), keepdims=True)  # noise-free beam fractions
    noisy = sample_tile(fractions, phi, np.ones((N, N), bool), (4, 20, 4, 20), 3, pre, rng, cfg,
                        noise_free_fraction=1.0)
    # 100 e⁻ per pattern: integer counts whose totals scatter around 100 like Poisson
    counts = noisy.x * 100.0
    assert np.allclose(counts, np.rint(counts), atol=1e-3)
    totals = counts.sum(axis=(2, 3))
    assert totals.mean() == pytest.approx(100.0, rel=0.05)
    assert totals.var() == pytest.approx(100.0, rel=0.35)
    assert noisy.x.mean() * 1e4 == pytest.approx(clean.x.mean(), rel=0.05)


def test_bad_settings_are_refused():
    for bad in ({"scan_scale": -0.1}, {"dose_range": (10.0, 1.0)}, {"thinning": (0.0, 2.0)},
                {"detector_coarsen": 0.5}, {"probability": 1.5}):
        with pytest.raises(AugmentError):
            AugmentConfig(**bad)
    assert not AugmentConfig.off().enabled and AugmentConfig().enabled
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
