"""The classical baselines shown beside every ML result: iCoM against the potential the
synthetic patterns encode (with and without a descan ramp), and the ADF annulus the detector
reaches, against radii worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift

from napari_4dstem_ml.baselines import adf_annulus, classical_baselines, icom_image
from napari_4dstem_ml.dataset import Dataset4D
from napari_4dstem_ml.training.synthetic import make_synthetic


def _r(a, b, crop=3):
    a = np.asarray(a, float)[crop:-crop, crop:-crop].ravel()
    b = np.asarray(b, float)[crop:-crop, crop:-crop].ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def syn():
    # noise-free: every pattern's disk is shifted by −gain·∇(probe-blurred potential)
    return make_synthetic((40, 40), (32, 32), noise=False, seed=0)


def test_icom_recovers_the_encoded_potential(syn):
    icom, gy, gx, info = icom_image(syn.dataset.data, (15.5 + 0.4, 15.5 - 0.6), (0.2, 0.2))
    assert icom.shape == (40, 40) and np.isfinite(icom).all()
    # CoM shift = −gain·∇V → iCoM ∝ −V
    assert _r(icom, syn.probe_potential) < -0.95
    assert info == {"icom_scan_rotation_deg": 0.0, "icom_transposed": False}


def test_icom_removes_a_descan_ramp(syn):
    """The whole pattern drifts linearly across the scan (descan, 0–3 px): the fitted plane is
    removed and the iCoM is the same as without the drift."""
    data = np.asarray(syn.dataset.data)
    ny, nx = data.shape[:2]
    drifted = np.empty_like(data)
    for y in range(ny):
        for x in range(nx):
            drifted[y, x] = nd_shift(data[y, x], (1.5 * y / ny, 3.0 * x / nx), order=1, mode="nearest")
    centre = (15.9, 14.9)
    plain = icom_image(data, centre, (0.2, 0.2))[0]
    ramp = icom_image(drifted, centre, (0.2, 0.2))[0]
    assert _r(ramp, plain) > 0.97
    assert _r(ramp, syn.probe_potential) < -0.93


def test_classical_baselines_on_a_data_set(syn):
    base = classical_baselines(syn.dataset)
    np.testing.assert_allclose(base.info["centre_px"], (15.9, 14.9), atol=0.3)
    assert base.info["bf_radius_px"] == pytest.approx(6.0, abs=0.6)
    # the 32-px detector reaches 15 px ≈ 2.5 α about the centre: ADF clipped there
    assert base.info["adf_alpha"][0] == pytest.approx(1.5)
    assert "clipped" in base.info["adf_note"]
    assert _r(base.icom, syn.probe_potential) < -0.95
    # the dark-field ring carries +0.15·V: the ADF image follows the potential
    assert _r(base.adf, syn.probe_potential) > 0.9
    assert set(base.images()) == {"iCoM", "ADF"}


def test_adf_annulus_radii():
    # a large detector: 1.5 α to 4 α, no note
    assert adf_annulus((128, 128), (63.5, 63.5), 10.0) == (15.0, 40.0, "")
    # the reach is the distance to the nearest detector edge (pixel centre + 0.5 px)
    # reach 20.5 px: outer clipped
    inner, outer, note = adf_annulus((41, 41), (20.0, 20.0), 10.0)
    assert (inner, outer) == (15.0, 20.5) and "2.05 α" in note
    # reach 14.5 px < 1.5 α: the outermost ring, 2 px wide (≥ 0.15 α)
    inner, outer, note = adf_annulus((29, 29), (14.0, 14.0), 10.0)
    assert outer == 14.5 and inner == pytest.approx(12.5) and "only 1.45 α" in note


def test_baselines_refuse_nothing_silently_on_a_uniform_data_set():
    """No structure at all: the images are finite (no NaN from the CoM normalisation) and
    flat, not noise amplified into contrast."""
    data = np.ones((12, 12, 16, 16), np.float32)
    ds = Dataset4D(data, make_synthetic((4, 4), (16, 16)).dataset.calibration)
    icom = icom_image(ds.data, (7.5, 7.5))[0]
    assert np.isfinite(icom).all() and float(np.ptp(icom)) < 1e-6


def test_no_dark_field_ring_on_the_detector_skips_adf_with_a_note():
    """A detector that ends inside the bright-field disk (a small simulated detector, e.g.
    Prismatic's 8 x 8 px to 0.8 α) holds no ADF annulus: iCoM is made, ADF is not, and the
    note says why (never an all-zero image or an error that loses the other results)."""
    from napari_4dstem_ml.baselines import NoDarkFieldError

    with pytest.raises(NoDarkFieldError, match="reaches only 0.83 α"):
        adf_annulus((8, 8), (3.5, 3.5), 4.8)
    # reach 4.5 px, disk 4.2 px: the ring 4.41-4.5 px is under half a pixel wide
    with pytest.raises(NoDarkFieldError):
        adf_annulus((9, 9), (4.0, 4.0), 4.2)
    syn = make_synthetic((12, 12), (8, 8), bf_radius_px=5.0, noise=False, seed=1)
    base = classical_baselines(syn.dataset)
    assert base.adf is None and set(base.images()) == {"iCoM"}
    assert base.info["adf_skipped"] and "no ADF baseline" in base.notes[0]
    assert np.isfinite(base.icom).all()


@pytest.mark.slow
def test_predict_baselines_on_a_prismatic_file_writes_the_model_image(tmp_path, capsys):
    """Issue 16: the Prismatic simulation's 8 x 8 detector reaches 0.83 α; predict
    --baselines writes the prediction and iCoM, and says why there is no ADF image."""
    from pathlib import Path

    from napari_4dstem_ml.cli import main

    emd = Path(__file__).resolve().parents[2] / "shared/real-data/rsciio/emd/Si100_4D.emd"
    if not emd.is_file():
        emd = Path("/work/shared/real-data/rsciio/emd/Si100_4D.emd")
    if not emd.is_file():
        pytest.skip("the real-data folder is not here")
    model = Path(__file__).resolve().parents[1] / "src/napari_4dstem_ml/base_model/base_conv4d.pt"
    out = tmp_path / "p.tif"
    rc = main(["predict", str(emd), "--dataset",
               "/4DSTEM_simulation/data/datacubes/CBED_array_depth0001/datacube",
               "--model", str(model), "-o", str(out), "--baselines"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif", "p_icom.tif"]
    assert "no ADF baseline" in err and "p_adf.tif is not written" in err
    import tifffile

    assert np.isfinite(tifffile.imread(out)).all()
