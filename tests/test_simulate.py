"""The sample-data generator: NumPy helpers always, abTEM runs only where abTEM is installed."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from napari_4dstem_ml.simulate.detector import (
    DetectorModel,
    fourier_interpolate_cell,
    gaussian_scan_blur,
    poisson_counts,
    resample_to_detector,
)

HAS_ABTEM = importlib.util.find_spec("abtem") is not None and importlib.util.find_spec("ase") is not None
needs_abtem = pytest.mark.skipif(
    not HAS_ABTEM, reason="abTEM/ASE not installed (optional extra: pip install 'napari-4dstem-ml[sim]')")


def test_fourier_interpolation_is_exact_for_band_limited_periodic_signal():
    b, a = 5.78, 5.61
    my, mx = 9, 7  # odd; frequencies up to 4/b and 3/a are represented

    def f(y, x):
        return (1.0 + 0.5 * np.cos(2 * np.pi * (3 * y / b + 1 * x / a) + 0.3)
                + 0.2 * np.sin(2 * np.pi * (-2 * y / b + 3 * x / a)))

    gy, gx = np.meshgrid(np.arange(my) * b / my, np.arange(mx) * a / mx, indexing="ij")
    vals = np.stack([f(gy, gx), 2 * f(gy, gx)], axis=-1)
    y = np.linspace(-3.0, 11.0, 13)
    x = np.linspace(0.17, 9.0, 11)
    got = fourier_interpolate_cell(vals, (b, a), y, x)
    want = f(y[:, None], x[None, :])
    np.testing.assert_allclose(got[..., 0], want, atol=1e-10)
    np.testing.assert_allclose(got[..., 1], 2 * want, atol=1e-10)
    # the Gaussian source blur multiplies each Fourier component by exp(-2 pi^2 s^2 q^2)
    fwhm = 0.4
    s = fwhm / (2 * np.sqrt(2 * np.log(2)))
    blurred = fourier_interpolate_cell(vals[..., :1], (b, a), y, x, blur_fwhm_A=fwhm)[..., 0]
    g1 = np.exp(-2 * np.pi**2 * s**2 * ((3 / b) ** 2 + (1 / a) ** 2))
    g2 = np.exp(-2 * np.pi**2 * s**2 * ((2 / b) ** 2 + (3 / a) ** 2))
    yy, xx = y[:, None], x[None, :]
    want_b = (1.0 + 0.5 * g1 * np.cos(2 * np.pi * (3 * yy / b + xx / a) + 0.3)
              + 0.2 * g2 * np.sin(2 * np.pi * (-2 * yy / b + 3 * xx / a)))
    np.testing.assert_allclose(blurred, want_b, atol=1e-10)


def test_resample_to_detector_conserves_flux_and_places_centre():
    # a uniform disk of radius 20 mrad on a 1.3 mrad simulation grid, total intensity 1
    n, dk = 81, 1.3
    k = (np.arange(n) - n // 2) * dk
    disk = (np.hypot(*np.meshgrid(k, k, indexing="ij")) < 20).astype(np.float64)
    disk /= disk.sum()
    model = DetectorModel(shape=(64, 64), pixel_mrad=0.9, centre_offset_px=(2.0, -3.0),
                          descan_y_px=(0.0, 0.0), descan_x_px=(0.0, 0.0))
    centres = model.centres_px((1, 1)).reshape(-1, 2)
    out = resample_to_detector(disk[None], (dk, dk), (n // 2, n // 2), centres, model)[0]
    assert out.sum() == pytest.approx(1.0, rel=0.02)
    yy, xx = np.indices(out.shape)
    cy, cx = (out * yy).sum() / out.sum(), (out * xx).sum() / out.sum()
    assert cy == pytest.approx(31.5 + 2.0, abs=0.05)
    assert cx == pytest.approx(31.5 - 3.0, abs=0.05)
    radius = np.sqrt((out > 0.5 * out.max()).sum() / np.pi) * model.pixel_mrad
    assert radius == pytest.approx(20.0, rel=0.03)


def test_descan_centres_are_linear_over_the_scan():
    m = DetectorModel(shape=(128, 128), centre_offset_px=(1.0, -1.0), descan_y_px=(0.8, 0.0),
                      descan_x_px=(0.0, 1.0))
    c = m.centres_px((5, 7))
    np.testing.assert_allclose(c[2, 3], [64.5, 62.5])
    np.testing.assert_allclose(c[-1, -1] - c[0, 0], [0.8, 1.0])
    assert m.max_angle_mrad > 64 * m.pixel_mrad


def test_scan_blur_keeps_mean_and_poisson_counts_are_integers():
    rng = np.random.default_rng(0)
    v = rng.random((20, 20, 3))
    b = gaussian_scan_blur(v, 0.4, (0.2, 0.2))
    assert b.shape == v.shape and b[5:15, 5:15].std() < v[5:15, 5:15].std()
    assert abs(b.mean() - v.mean()) < 0.01
    c = poisson_counts(rng, np.full((200, 200), 50.0))
    assert c.dtype == np.uint16 and abs(c.mean() - 50) < 0.2 and abs(c.var() / 50 - 1) < 0.05
    with pytest.raises(ValueError, match="overflow"):
        poisson_counts(rng, np.full(3, 1e6))


def test_package_imports_without_abtem():
    import napari_4dstem_ml.simulate.mos2 as m
    import napari_4dstem_ml.simulate.prsco3 as p

    assert m.MoS2Config().energy_ev == 80e3 and p.PrScO3Config().energy_ev == 300e3
    json.dumps(m.MoS2Config().to_dict())


@needs_abtem
@pytest.mark.slow
def test_prsco3_unit_cell_is_pbnm():
    from napari_4dstem_ml.simulate.prsco3 import unit_cell

    u = unit_cell()
    assert u.get_chemical_formula() == "O12Pr4Sc4"
    # every pair of atoms at least 1.8 A apart (periodic), i.e. no duplicated site
    d = u.get_all_distances(mic=True)
    assert d[np.triu_indices(len(u), 1)].min() > 1.8


def _check_file(path, model: DetectorModel, energy, vacancy: bool):
    import h5py

    with h5py.File(path, "r") as f:
        assert f.attrs["emd_group_type"] == "root" and f.attrs["version_major"] == 1
        g = f["datacube"]
        assert g.attrs["emd_group_type"] == "array"
        d = g["data"]
        assert d.dtype == np.uint16
        assert d.attrs["energy_ev"] == energy
        assert [g[f"dim{i}"].attrs["units"] for i in range(1, 5)] == ["A", "A", "mrad", "mrad"]
        data = d[()].astype(float)
        mean = data.mean((0, 1))
        yy, xx = np.indices(mean.shape)
        w = mean * (mean > 0.5 * mean.max())
        centre = ((w * yy).sum() / w.sum(), (w * xx).sum() / w.sum())
        want = model.centres_px(d.shape[:2]).mean((0, 1))
        np.testing.assert_allclose(centre, want, atol=0.6)
        for name in ("label/image", "ground_truth/potential", "adf/image"):
            assert np.isfinite(f[name][()]).all()
        assert f["ground_truth/potential"].shape == d.shape[:2]
        if vacancy:
            row, col = f["vacancy/sites"][0]
            assert row > d.shape[0] / 2 - 0.5  # lower half


@needs_abtem
@pytest.mark.slow
def test_generator_runs_tiny_mos2(tmp_path):
    from napari_4dstem_ml.simulate.__main__ import main
    from napari_4dstem_ml.simulate.mos2 import MoS2Config

    out = tmp_path / "mos2.h5"
    assert main(["mos2", "--tiny", "-o", str(out)]) == 0
    _check_file(out, MoS2Config.tiny().detector, 80e3, vacancy=True)
    _check_truth(out)


@needs_abtem
@pytest.mark.slow
def test_generator_runs_tiny_prsco3(tmp_path):
    from napari_4dstem_ml.simulate.__main__ import main
    from napari_4dstem_ml.simulate.prsco3 import PrScO3Config

    out = tmp_path / "prsco3.h5"
    assert main(["prsco3", "--tiny", "-o", str(out)]) == 0
    _check_file(out, PrScO3Config.tiny().detector, 300e3, vacancy=False)
    _check_truth(out)


def _check_truth(path):
    """simulate.truth rebuilds the sample's potential from its stored config: the same grid as
    /ground_truth/potential, and blurring before sampling lowers the peaks."""
    import h5py

    from napari_4dstem_ml.simulate.truth import ground_truth

    g = ground_truth(path)
    with h5py.File(path, "r") as f:
        stored = f["ground_truth/potential"][()]
    np.testing.assert_allclose(g.at(0.0), stored, atol=1e-4 * np.ptp(stored))
    assert np.ptp(g.at(0.2)) < 0.9 * np.ptp(stored)
