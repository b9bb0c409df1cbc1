"""Preprocessing: crop/bin paths, resampling across calibrations, compression, fitting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.preprocess import (
    PreprocessConfig,
    PreprocessError,
    Preprocessor,
    bf_centre,
    resampling_matrix,
    sample_patterns,
)

MRAD1 = Calibration(detector_pixel=(1.0, 1.0), detector_units="mrad")


def _random_ds(shape=(4, 5, 20, 20), cal=MRAD1, seed=0, negatives=False):
    rng = np.random.default_rng(seed)
    data = rng.poisson(50, size=shape).astype(np.float32)
    if negatives:
        data -= 5.0
    return Dataset4D(data, cal)


def _plain(**kw):
    return PreprocessConfig(normalise=False, standardise=False, **kw)


def test_same_pixel_is_a_plain_crop_even_with_a_fractional_centre():
    ds = _random_ds()
    # the grid snaps to detector pixel edges: centre (9.7, 10.2) → crop rows 4:16, cols 5:17
    for cfg in (
        _plain(output_shape=(12, 12), centre=(9.7, 10.2)),
        _plain(output_shape=(12, 12), centre=(9.7, 10.2), output_pixel=1.0),
    ):
        pre = Preprocessor.fit(ds, cfg)
        out = pre.transform(ds.data)
        np.testing.assert_array_equal(out, ds.data[:, :, 4:16, 5:17])
        assert out.dtype == np.float32


def test_bin_factor_is_crop_then_block_sum():
    ds = _random_ds()
    pre = Preprocessor.fit(ds, _plain(output_shape=(6, 6), bin_factor=2, centre=(9.5, 10.5)))
    assert pre.output_pixel == pytest.approx(2.0)
    ref = ds.data[:, :, 4:16, 5:17].reshape(4, 5, 6, 2, 6, 2).astype(np.float64).sum(axis=(3, 5))
    np.testing.assert_allclose(pre.transform(ds.data), ref, rtol=1e-6)


def test_default_grid_is_the_whole_detector_and_negatives_are_clipped():
    ds = _random_ds(negatives=True)
    pre = Preprocessor.fit(ds, _plain(centre=(9.5, 9.5)))
    assert pre.output_shape == (20, 20)
    before = ds.data.copy()
    np.testing.assert_array_equal(pre.transform(ds.data), np.clip(before, 0, None))
    np.testing.assert_array_equal(ds.data, before)  # the input is left alone


def _render(density, px_mrad, n, centre_px):
    """Counts per pixel of an analytic angular density (per mrad²) on an n×n detector."""
    i = (np.arange(n) - centre_px[0]) * px_mrad
    j = (np.arange(n) - centre_px[1]) * px_mrad
    return density(i[:, None], j[None, :]) * px_mrad**2


def _blob(ty, tx):
    return 100.0 * np.exp(-((ty - 3.0) ** 2 + (tx + 2.0) ** 2) / (2 * 7.0**2)) + 5.0 * np.exp(
        -(ty**2 + tx**2) / (2 * 20.0**2)
    )


@pytest.mark.parametrize(("px", "n", "centre"), [(1.0, 64, (31.0, 32.3)), (0.7, 96, (47.6, 46.2)), (0.35, 180, (90.0, 88.5))])
def test_resampling_onto_a_common_angular_grid(px, n, centre):
    # scale 1.4 (bilinear), 2.0 (area binning), 4.0 (area binning) onto a 1.4 mrad grid
    pattern = _render(_blob, px, n, centre)
    ds = Dataset4D(pattern[None, None].astype(np.float32), Calibration(detector_pixel=(px, px)))
    cfg = _plain(output_shape=(32, 32), output_pixel=1.4, snap_to_pixels=False)
    pre = dataclasses.replace(Preprocessor.fit(ds, cfg), centre=centre)
    out = pre.transform(ds.data)[0, 0]
    g = (np.arange(32) - 15.5) * 1.4
    ref = _blob(g[:, None], g[None, :]) * 1.4**2  # counts per output pixel
    np.testing.assert_allclose(out, ref, rtol=0.03, atol=0.02 * ref.max())


def test_model_grid_transfers_between_calibrations_with_auto_centre():
    a = _render(_blob, 0.84, 96, (47.3, 48.6))
    b = _render(_blob, 0.6, 128, (60.2, 66.7))
    ds_a = Dataset4D(np.broadcast_to(a, (3, 3, 96, 96)).astype(np.float32), Calibration(detector_pixel=(0.84, 0.84)))
    ds_b = Dataset4D(np.broadcast_to(b, (2, 2, 128, 128)).astype(np.float32), Calibration(detector_pixel=(0.6, 0.6)))
    pre_a = Preprocessor.fit(ds_a, PreprocessConfig(output_pixel=1.2, max_angle=24.0, standardise=False))
    assert pre_a.output_shape == (40, 40)
    pre_b = pre_a.adapt(ds_b)
    assert pre_b.detector_pixel == (0.6, 0.6) and pre_b.output_shape == pre_a.output_shape
    # the blob peak sits at (3, -2) mrad: the centre finder sees the blob, both share the offset
    oa, ob = pre_a.transform(ds_a.data[0, 0]), pre_b.transform(ds_b.data[0, 0])
    assert abs(oa.sum() - ob.sum()) < 0.02 * oa.sum()
    np.testing.assert_allclose(oa, ob, atol=0.04 * oa.max())
    # pixels beyond max_angle are zero
    g = (np.arange(40) - 19.5) * 1.2
    outside = g[:, None] ** 2 + g[None, :] ** 2 > 24.0**2
    assert np.all(oa[outside] == 0) and np.all(oa[~outside] > 0)


def test_missing_calibration_is_named():
    ds_cal = _random_ds(shape=(2, 2, 20, 20))
    pre = Preprocessor.fit(ds_cal, PreprocessConfig(output_pixel=1.5))
    bare_other = Dataset4D(np.ones((2, 2, 24, 24), np.float32))
    with pytest.raises(ValueError, match="detector pixel size"):
        pre.adapt(bare_other)
    with pytest.raises(ValueError, match="detector pixel size"):
        Preprocessor.fit(bare_other, PreprocessConfig(output_pixel=1.5))
    # the same detector without calibration: named too, never the training data's value
    bare_same = Dataset4D(ds_cal.data.copy() + 1)
    with pytest.raises(ValueError, match="detector pixel size"):
        pre.adapt(bare_same)
    # energy missing for an Å⁻¹ calibration
    inv = Dataset4D(np.ones((2, 2, 24, 24), np.float32), Calibration(detector_pixel=(0.01, 0.01), detector_units="A^-1"))
    with pytest.raises(ValueError, match="beam energy"):
        pre.adapt(inv)


def _ref_pipeline(data, pre, compression, power):
    x = np.clip(data.astype(np.float64), 0, None)
    x = x / (pre.mean_counts / (x.shape[-1] * x.shape[-2]))
    if compression == "power":
        x = x**power
    elif compression == "log":
        x = np.log1p(x)
    return x


@pytest.mark.parametrize("compression", ["none", "power", "log"])
def test_normalise_compress_standardise_match_a_float64_reference(compression):
    ds = _random_ds(shape=(6, 5, 16, 16), negatives=True, seed=3)
    cfg = PreprocessConfig(compression=compression, power=0.1, centre=(7.5, 7.5))
    pre = Preprocessor.fit(ds, cfg)
    clipped = np.clip(ds.data.astype(np.float64), 0, None)
    assert pre.mean_counts == pytest.approx(clipped.sum(axis=(2, 3)).mean(), rel=1e-9)
    x = _ref_pipeline(ds.data, pre, compression, 0.1)
    assert pre.input_mean == pytest.approx(x.mean(), rel=1e-6)
    assert pre.input_std == pytest.approx(x.std(), rel=1e-6)
    np.testing.assert_allclose(pre.transform(ds.data), (x - x.mean()) / x.std(), rtol=1e-4, atol=1e-4)


def test_fit_reads_a_subsample_only_and_lazy_equals_eager():
    da = pytest.importorskip("dask.array")
    ds = _random_ds(shape=(40, 30, 12, 12), seed=5)

    class Spy:
        """Array-like recording how many patterns were read."""

        def __init__(self, a):
            self.a, self.shape, self.ndim, self.dtype, self.read = a, a.shape, a.ndim, a.dtype, 0

        def __getitem__(self, key):
            out = self.a[key]
            self.read += out.size // (12 * 12)
            return out

    spy = Spy(ds.data)
    cfg = PreprocessConfig(compression="power", fit_max_patterns=100)
    pre_spy = Preprocessor.fit(Dataset4D(spy, MRAD1), cfg)
    assert 0 < spy.read <= 2 * 100 + 2  # the subsample plus the two patterns of the data-set key
    lazy = Dataset4D(da.from_array(ds.data, chunks=(7, -1, -1, -1)), MRAD1)
    pre_lazy = Preprocessor.fit(lazy, cfg)
    pre_eager = Preprocessor.fit(ds, cfg)
    for name in ("centre", "mean_counts", "input_mean", "input_std"):
        assert getattr(pre_lazy, name) == pytest.approx(getattr(pre_eager, name))
        assert getattr(pre_spy, name) == pytest.approx(getattr(pre_eager, name))
    assert len(sample_patterns(ds, 100)) <= 150


def test_serialisation_round_trip_and_bad_config():
    ds = _random_ds()
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="log", max_angle=6.0, bin_factor=2))
    pre = pre.with_label_stats(2.5, 0.5)
    again = Preprocessor.from_json(pre.to_json())
    assert again == pre
    np.testing.assert_array_equal(again.transform(ds.data), pre.transform(ds.data))
    assert PreprocessConfig.from_json(pre.config.to_json()) == pre.config
    np.testing.assert_allclose(pre.model_to_label(pre.label_to_model(np.array([1.0, 3.0]))), [1.0, 3.0])
    for bad in ({"compression": "sqrt"}, {"bin_factor": 0}, {"max_angle": -1}, {"output_shape": (0, 4)}):
        with pytest.raises(PreprocessError):
            PreprocessConfig(**bad)
    with pytest.raises(PreprocessError, match="unknown"):
        PreprocessConfig.from_dict({"bogus": 1})
    with pytest.raises(PreprocessError, match="must be"):
        pre.transform(np.zeros((3, 7, 7)))


def test_bf_centre_finds_a_disk():
    yy, xx = np.mgrid[0:64, 0:64]
    disk = ((yy - 30.3) ** 2 + (xx - 35.8) ** 2 < 12**2).astype(float) * 100 + 1
    cy, cx = bf_centre(disk)
    assert abs(cy - 30.3) < 0.3 and abs(cx - 35.8) < 0.3


def test_resampling_matrix_conserves_counts_inside_the_detector():
    inner = slice(int(24.6 - 8), int(24.6 + 8))
    for scale in (0.5, 1.0, 2.0, 3.3):
        m = resampling_matrix(50, 24.6, scale, int(20 / scale), snap=False)
        # every detector pixel well inside the grid's footprint hands on all its counts
        np.testing.assert_allclose(m.sum(axis=0)[inner], 1.0, atol=1e-9)
    # bilinear between 1 and 2 conserves counts on average only
    m = resampling_matrix(50, 24.6, 1.37, 14, snap=False)
    assert m.sum(axis=0)[inner].mean() == pytest.approx(1.0, abs=0.05)


def _disk_dataset(alpha_mrad: float, px_mrad: float = 2.0, n: int = 48) -> Dataset4D:
    """4×4 scan of identical bright-field disks of radius α, hand-drawn on an n×n detector."""
    yy, xx = np.mgrid[:n, :n]
    disk = (np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * px_mrad <= alpha_mrad).astype(np.float32)
    data = np.broadcast_to(1000.0 * disk + 1.0, (4, 4, n, n)).copy()
    cal = Calibration(scan_step=(0.25, 0.25), detector_pixel=(px_mrad, px_mrad),
                      energy_ev=80e3, convergence_mrad=alpha_mrad)
    return Dataset4D(data, cal)


def test_restating_an_mrad_grid_in_alpha_is_exact_at_that_alpha_and_scales_with_another():
    a20, a30 = _disk_dataset(20.0), _disk_dataset(30.0)
    pre = Preprocessor.fit(a20, PreprocessConfig(max_angle=44.0, output_shape=(22, 22),
                                                  output_pixel=4.0, standardise=False))
    assert pre.grid_units == "mrad"
    pa = pre.in_alpha_units(20.0)
    assert pa.grid_units == "alpha" and pa.config.angle_units == "alpha"
    assert pa.output_pixel == pytest.approx(0.2) and pa.config.max_angle == pytest.approx(2.2)
    p20 = a20.data[:1, :1]
    np.testing.assert_allclose(pa.transform(p20), pre.transform(p20), rtol=1e-5, atol=1e-5)
    # at 30 mrad the α grid sees the same disk (radius 5 output pixels), the mrad grid a larger one
    on_alpha = pa.adapt(a30).transform(a30.data[:1, :1])[0, 0]
    on_mrad = pre.adapt(a30).transform(a30.data[:1, :1])[0, 0]
    ref = pa.transform(p20)[0, 0]
    lit = lambda img: int((img > 0.5 * img.max()).sum())  # noqa: E731
    assert abs(lit(on_alpha) - lit(ref)) <= 0.1 * lit(ref)
    assert lit(on_mrad) > 1.8 * lit(ref)  # (30/20)² = 2.25 times the area
    assert pre.in_alpha_units(float("nan")) is pre and pa.in_alpha_units(20.0) is pa
