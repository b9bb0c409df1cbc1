"""The shipped sample files, checked against physics computed independently here."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_4dstem_ml.samples import ENV_VAR, SAMPLES, load_sample, sample_path

KEYS = ["mos2", "prsco3"]


@pytest.fixture(scope="module", params=KEYS)
def sample(request):
    with h5py.File(sample_path(request.param), "r") as f:
        d = f["datacube/data"]
        yield request.param, f, d


def _mean_pattern(d) -> np.ndarray:
    return np.stack([d[i].astype(np.float64).mean(0) for i in range(0, d.shape[0], 4)]).mean(0)


def test_registry_and_lookup(tmp_path, monkeypatch):
    assert SAMPLES["mos2"].display_name == "MoS2 monolayer (training, with ptychography label)"
    assert SAMPLES["prsco3"].display_name == "PrScO3 thick cross-section (test)"
    for key in KEYS:
        assert sample_path(key).is_file()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    (tmp_path / SAMPLES["mos2"].filename).write_bytes(b"x")
    assert sample_path("mos2") == tmp_path / SAMPLES["mos2"].filename
    with pytest.raises(KeyError, match="known samples"):
        sample_path("nope")


def test_missing_file_message(monkeypatch, tmp_path):
    import napari_4dstem_ml.samples as s

    monkeypatch.setattr(s, "_candidate_dirs", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match="python -m napari_4dstem_ml.simulate prsco3"):
        s.sample_path("prsco3")


def test_layout_and_calibration(sample):
    key, f, d = sample
    assert f.attrs["emd_group_type"] == "root"
    assert (f.attrs["version_major"], f.attrs["version_minor"]) == (1, 0)
    assert f["datacube"].attrs["emd_group_type"] == "array"
    assert d.ndim == 4 and d.dtype.kind == "u" and d.compression in ("gzip", "lzf")
    assert d.chunks[0] == 1 and d.chunks[1:] == d.shape[1:]
    units = [f[f"datacube/dim{i}"].attrs["units"] for i in range(1, 5)]
    assert [u.decode() if isinstance(u, bytes) else u for u in units] == ["A", "A", "mrad", "mrad"]
    step = f["datacube/dim1"][1] - f["datacube/dim1"][0]
    assert step == pytest.approx(d.attrs["scan_step_A"][0])
    assert f["ground_truth/potential"].shape == d.shape[:2] == f["adf/image"].shape
    la = f["label/image"].attrs
    assert la["pixel_size_A"] < d.attrs["scan_step_A"][0] and "label_method" in la
    for name in ("energy_ev", "convergence_mrad", "dose_e_per_pattern", "dose_e_per_A2",
                 "thickness_A", "seed", "abtem_version", "frozen_phonons", "source_size_fwhm_A",
                 "descan"):
        assert name in f.attrs
    expected_energy = {"mos2": 80e3, "prsco3": 300e3}[key]
    assert d.attrs["energy_ev"] == expected_energy


def test_bright_field_disk_radius(sample):
    _, f, d = sample
    m = _mean_pattern(d)
    bf = np.sort(m.ravel())[-20:].mean()  # plateau of the disk
    area = (m > 0.5 * bf).sum()
    radius_mrad = np.sqrt(area / np.pi) * d.attrs["detector_pixel_mrad"][0]
    assert radius_mrad == pytest.approx(21.4, rel=0.05)


def test_counts_match_dose(sample):
    _, f, d = sample
    tot = np.stack([d[i].astype(np.int64).sum((-1, -2)) for i in range(d.shape[0])])
    dose = float(f.attrs["dose_e_per_pattern"])
    collected = float(f.attrs["detected_fraction_mean"])
    # most of the beam lands on the detector; the rest went beyond its edge
    assert 0.8 < collected <= 1.01
    assert tot.mean() == pytest.approx(dose * collected, rel=0.01)
    assert tot.mean() == pytest.approx(dose, rel=0.2)
    # Poisson: the spread of the totals is at least the shot noise
    assert tot.var() >= 0.8 * tot.mean()


def _peak_spacing(img, step, q_expected):
    """Spacing (Å) at the largest |FFT| within ±10 % of the vector ``q_expected`` (Å⁻¹)."""
    img = np.asarray(img, np.float64)
    img = img - img.mean()
    wy, wx = np.hanning(img.shape[0]), np.hanning(img.shape[1])
    n = 1024
    F = np.abs(np.fft.fft2(img * wy[:, None] * wx[None, :], s=(n, n)))
    qy = np.fft.fftfreq(n, d=step[0])
    qx = np.fft.fftfreq(n, d=step[1])
    QY, QX = np.meshgrid(qy, qx, indexing="ij")
    near = np.hypot(QY - q_expected[0], QX - q_expected[1]) < 0.1 * np.hypot(*q_expected)
    i = np.argmax(np.where(near, F, -1))
    annulus = np.abs(np.hypot(QY, QX) - np.hypot(*q_expected)) < 0.15 * np.hypot(*q_expected)
    prominence = F.flat[i] / np.median(F[annulus])
    return 1.0 / np.hypot(QY.flat[i], QX.flat[i]), prominence


def test_mos2_adf_lattice_spacing():
    with h5py.File(sample_path("mos2"), "r") as f:
        adf = f["adf/image"][()]
        step = f["datacube/data"].attrs["scan_step_A"]
    # {100} of the hexagonal lattice (a = 3.16 A, a along scan x): d = a*sqrt(3)/2 = 2.737 A
    d100 = 3.16 * np.sqrt(3) / 2
    for ang in (30.0, 90.0, 150.0):
        q = np.array([np.sin(np.radians(ang)), np.cos(np.radians(ang))]) / d100
        d, prom = _peak_spacing(adf, step, q)
        assert d == pytest.approx(2.74, rel=0.02)
        assert prom > 5


@pytest.mark.parametrize("hk,d_expected", [((1, 1), 4.026), ((1, -1), 4.026), ((2, 0), 2.805),
                                           ((0, 2), 2.890)])
def test_prsco3_adf_lattice_spacings(hk, d_expected):
    a, b = 5.61, 5.78  # a along scan x, b along scan y
    with h5py.File(sample_path("prsco3"), "r") as f:
        adf = f["adf/image"][()]
        step = f["datacube/data"].attrs["scan_step_A"]
    q = np.array([hk[1] / b, hk[0] / a])
    assert 1 / np.hypot(*q) == pytest.approx(d_expected, rel=0.002)
    d, prom = _peak_spacing(adf, step, q)
    assert d == pytest.approx(d_expected, rel=0.02)
    assert prom > 5


def _local(img, pts, radius, how):
    """``how`` (np.max or np.mean) of the scan pixels within ``radius`` px of each point."""
    yy, xx = np.indices(img.shape)
    return np.array([how(img[np.hypot(yy - p[0], xx - p[1]) <= radius]) for p in pts])


def test_mos2_vacancy_site():
    with h5py.File(sample_path("mos2"), "r") as f:
        site = f["vacancy/sites"][0]
        gt = f["ground_truth/potential"][()]
        adf = f["adf/image"][()]
        step = f["datacube/data"].attrs["scan_step_A"][0]
    ny, nx = gt.shape
    assert site[0] > ny / 2  # lower half: the upper half is the training region
    # equivalent S sites: the vacancy site plus hexagonal lattice vectors (a along x)
    a = 3.16 / step
    v1, v2 = np.array([0.0, a]), np.array([a * np.sqrt(3) / 2, a / 2])
    pts = np.array([site + i * v1 + j * v2 for i in range(-6, 7) for j in range(-6, 7)
                    if (i, j) != (0, 0)])
    inside = (pts[:, 0] > 2) & (pts[:, 0] < ny - 3) & (pts[:, 1] > 2) & (pts[:, 1] < nx - 3)
    pts = pts[inside]
    assert len(pts) > 10
    # mean over the pixels within 1.5 px (0.36 A): robust to where the grid samples the peak
    for img in (gt, adf):
        others = _local(img, pts, 1.5, np.mean)
        at_site = _local(img, site[None], 1.5, np.mean)[0]
        assert at_site < 0.8 * np.median(others)
        assert at_site < others.min()
    assert _local(gt, site[None], 1.5, np.mean)[0] > 1.5 * np.median(gt)  # one S atom remains


def test_load_sample_headless():
    s = load_sample("mos2")
    ds = s.dataset
    assert ds.shape == (64, 64, 128, 128) or ds.detector_shape == (64, 64)
    assert ds.calibration.energy_ev == 80e3
    assert ds.calibration.scan_step_A[0] == pytest.approx(s.attrs["scan_step_A"][0])
    assert ds.calibration.detector_pixel_mrad is not None
    # py4DSTEM's object pixel is λ / (N · Δθ): N = 256 padded detector pixels of 2 × 0.84 mrad
    from napari_4dstem_ml.dataset import electron_wavelength_A

    expected_px = electron_wavelength_A(80e3) / (256 * 2 * 0.84e-3)
    assert s.label.ndim == 2 and s.label_pixel_size_A == pytest.approx(expected_px, rel=1e-3)
    assert s.vacancy_sites is not None and s.ground_truth.shape == ds.scan_shape
    # the label covers the scan with padding
    ext = np.array(s.label.shape) * s.label_pixel_size_A
    assert (np.array(s.label_origin_A) < 0).all()
    assert (ext + np.array(s.label_origin_A) > np.array(ds.scan_shape) * ds.calibration.scan_step_A[0]).all()
    p = load_sample("prsco3")
    assert p.vacancy_sites is None and p.dataset.calibration.energy_ev == 300e3


@pytest.mark.parametrize("key", KEYS)
def test_label_is_registered_to_the_scan(key):
    """The label, sampled at the scan positions through its origin and pixel size, follows the
    ground-truth potential (a wrong origin or pixel size breaks the correlation)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    s = load_sample(key)
    ny, nx = s.ground_truth.shape
    step = s.dataset.calibration.scan_step_A
    yy, xx = np.indices((ny, nx), dtype=float)
    coords = [(yy * step[0] - s.label_origin_A[0]) / s.label_pixel_size_A,
              (xx * step[1] - s.label_origin_A[1]) / s.label_pixel_size_A]
    assert (np.array(s.label.shape) - 1 >= [c.max() for c in coords]).all()
    on_scan = map_coordinates(s.label.astype(float), coords, order=1)
    gt = gaussian_filter(s.ground_truth.astype(float), 0.5)
    r = np.corrcoef(on_scan.ravel(), gt.ravel())[0, 1]
    shifted = np.corrcoef(np.roll(on_scan, 3, axis=1).ravel(), gt.ravel())[0, 1]
    assert r > 0.9 and r > shifted + 0.1


@pytest.mark.parametrize("key", KEYS)
def test_stored_references_are_the_potential_blurred_before_sampling(key):
    """The ground truth at the label's resolution and low-passed, as stored for the Compare
    dock, is the potential rebuilt from the file's configuration and blurred on its fine grid
    (simulate.truth, checked against the stored grid); on PrScO3's 0.41 Å step the sampled
    truth blurred afterwards is another image."""
    pytest.importorskip("abtem")
    from napari_4dstem_ml.metrics import LABEL_SIGMA_A, label_resolution, pearson_r
    from napari_4dstem_ml.simulate.groundtruth import lowpass_sigma_A
    from napari_4dstem_ml.simulate.truth import ground_truth

    s = load_sample(key)
    refs = s.ground_truth_references
    assert set(refs) == {"label", "lowpass"}
    truth = ground_truth(s.path)
    for name, sigma in (("label", LABEL_SIGMA_A), ("lowpass", lowpass_sigma_A(0.4))):
        exact = truth.at(sigma)
        np.testing.assert_allclose(refs[name], exact, atol=1e-5 * np.ptp(exact))
    step = s.dataset.calibration.scan_step_A[0]
    after = label_resolution(s.ground_truth, step)
    sl = (slice(4, -4), slice(4, -4))
    r = pearson_r(after[sl], refs["label"][sl])
    assert (r < 0.97) if key == "prsco3" else (r > 0.99), r
