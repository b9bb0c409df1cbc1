"""Detector grids in units of α and scan clusters in Å, against analytic cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.preprocess import (
    MissingCalibrationError,
    PreprocessConfig,
    Preprocessor,
    ScanGrid,
)
from napari_4dstem_ml.training.clusters import PatternSource


def _disk_dataset(alpha_mrad: float, px_mrad: float, det: int = 128, scan=(4, 4), step=0.25,
                  centre=(63.3, 64.6)) -> Dataset4D:
    """Every pattern: a uniform disk of radius α (1000 counts per pixel inside) plus a ring
    of 10 counts/px between 1.5 α and 2 α, drawn by exact pixel-area supersampling."""
    sub = 8
    y = (np.arange(det * sub) + 0.5) / sub - 0.5
    yy, xx = np.meshgrid(y, y, indexing="ij")
    r = np.hypot(yy - centre[0], xx - centre[1]) * px_mrad / alpha_mrad
    img = np.where(r <= 1.0, 1000.0, 0.0) + np.where((r >= 1.5) & (r <= 2.0), 10.0, 0.0)
    pat = img.reshape(det, sub, det, sub).mean(axis=(1, 3))
    data = np.broadcast_to(pat, (*scan, det, det)).astype(np.float32).copy()
    cal = Calibration(scan_step=(step, step), detector_pixel=(px_mrad, px_mrad),
                      convergence_mrad=alpha_mrad, energy_ev=80e3)
    return Dataset4D(data, cal)


def test_alpha_grid_makes_two_microscopes_look_alike():
    """A disk of radius α on two detectors (20 mrad at 0.8 mrad/px; 30 mrad at 1.1 mrad/px)
    maps to the same pattern on an α grid; on an mrad grid it does not."""
    a = _disk_dataset(20.0, 0.8)
    b = _disk_dataset(30.0, 1.1, centre=(65.1, 62.4))
    cfg = PreprocessConfig(angle_units="alpha", max_angle=2.2, output_shape=(48, 48),
                           output_pixel=0.1, standardise=False, snap_to_pixels=False)
    pa = Preprocessor.fit(a, cfg)
    pb = pa.adapt(b)
    assert pa.grid_units == "alpha" and pb.alpha_mrad == 30.0
    assert pb.grid_pixel_mrad == pytest.approx(3.0)
    ta = pa.transform(np.asarray(a.data[0, 0]))
    tb = pb.transform(np.asarray(b.data[0, 0]))
    # analytic: the disk covers the grid pixels within radius 1 α (10 px of 0.1 α), the ring
    # those from 1.5 to 2 α, at 1 % of the disk's intensity per area
    g = (np.arange(48) - 23.5) * 0.1
    r = np.hypot(g[:, None], g[None, :])
    disk, ring, edge = r < 0.9, (r > 1.6) & (r < 1.9), np.abs(r - 1.0) < 0.12
    for t in (ta, tb):
        assert t[disk].std() < 0.01 * t[disk].mean()
        assert t[ring].mean() == pytest.approx(0.01 * t[disk].mean(), rel=0.05)
    np.testing.assert_allclose(ta[~edge], tb[~edge], atol=0.01 * ta.max())
    np.testing.assert_allclose(ta.sum(), tb.sum(), rtol=0.01)
    mrad = PreprocessConfig(max_angle=48.0, output_shape=(48, 48), output_pixel=2.0, standardise=False)
    qa = Preprocessor.fit(a, mrad)
    assert np.abs(qa.transform(np.asarray(a.data[0, 0])) -
                  qa.adapt(b).transform(np.asarray(b.data[0, 0]))).max() > 0.3 * ta.max()


def test_alpha_grid_names_the_missing_convergence_angle():
    a = _disk_dataset(20.0, 1.0, det=64, centre=(31.5, 32.2))
    bare = Dataset4D(np.asarray(a.data), Calibration(scan_step=(0.25, 0.25), detector_pixel=(1.0, 1.0)))
    cfg = PreprocessConfig(angle_units="alpha", max_angle=1.6, output_shape=(16, 16), output_pixel=0.2)
    with pytest.raises(MissingCalibrationError, match="--convergence"):
        Preprocessor.fit(bare, cfg)
    pre = Preprocessor.fit(a, cfg)
    with pytest.raises(MissingCalibrationError, match="convergence semi-angle"):
        pre.adapt(bare)
    no_step = Dataset4D(np.asarray(a.data), Calibration(detector_pixel=(1.0, 1.0), convergence_mrad=20.0))
    with pytest.raises(MissingCalibrationError, match="--scan-step"):
        pre.adapt(no_step)


def _ramp_dataset(step: float, shape=(13, 11)) -> tuple[Dataset4D, callable]:
    """Patterns whose every pixel holds f(y, x) = 100 + 3 y_A + 5 x_A (y_A, x_A in Å)."""
    ny, nx = shape
    ys, xs = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    val = 100 + 3 * ys + 5 * xs
    data = np.broadcast_to(val[:, :, None, None], (ny, nx, 8, 8)).astype(np.float32).copy()
    cal = Calibration(scan_step=(step, step), detector_pixel=(2.0, 2.0), convergence_mrad=5.0)
    return Dataset4D(data, cal), (lambda y, x: 100 + 3 * y + 5 * x)


def test_scan_resampling_is_exact_for_a_linear_field():
    """A model trained at 0.3 Å reads data taken at 0.2 Å on its own 0.3 Å grid: bilinear
    interpolation of a field linear in position is exact."""
    train, _ = _ramp_dataset(0.3)
    data, f = _ramp_dataset(0.2)
    cfg = PreprocessConfig(normalise=False, standardise=False, output_shape=(8, 8),
                           scan_resample=True)
    pre = Preprocessor.fit(train, cfg).adapt(data)
    assert pre.scan_step_A == (0.3, 0.3) and pre.data_scan_step_A == (0.2, 0.2)
    # by default the model runs on the data's own grid (the domain check reports the step)
    native = Preprocessor.fit(train, replace(cfg, scan_resample=False)).adapt(data)
    assert native.scan_grid(data.scan_shape) is None
    assert PatternSource(data, native, cache_budget_bytes=0).scan_shape == data.scan_shape
    src = PatternSource(data, pre, cache_budget_bytes=0)
    assert src.grid is not None and src.grid.factor == pytest.approx((1.5, 1.5))
    assert src.scan_shape == (9, 7)  # floor(12 / 1.5) + 1, floor(10 / 1.5) + 1
    rows = src.rows(np.arange(9))
    yy, xx = np.meshgrid(np.arange(9) * 0.3, np.arange(7) * 0.3, indexing="ij")
    np.testing.assert_allclose(rows[..., 3, 3], f(yy, xx), rtol=1e-5)
    src.fill_cache()
    for _ in src.fill_cache():
        pass
    np.testing.assert_allclose(src.rows(np.array([4]))[0, :, 0, 0], f(1.2, np.arange(7) * 0.3), rtol=1e-5)


def test_scan_grid_round_trip_of_a_smooth_image():
    g = ScanGrid(data_shape=(40, 50), factor=(1.25, 1.25))
    yy, xx = np.mgrid[:40, :50].astype(float)
    img = np.sin(yy / 6.0) + np.cos(xx / 7.0)
    back = g.to_data(g.to_model(img))
    assert np.abs(back - img)[3:-3, 3:-3].max() < 0.02
    same = Preprocessor.fit(_ramp_dataset(0.2)[0], PreprocessConfig(output_shape=(8, 8)))
    assert same.scan_grid((13, 11)) is None  # equal steps: no resampling
