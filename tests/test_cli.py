"""End-to-end tests of the ``stemml`` command line on tiny files written here."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import tifffile

from napari_4dstem_ml.cli import main
from napari_4dstem_ml.training.synthetic import make_synthetic


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    s = make_synthetic((36, 40), (24, 24), bf_radius_px=5.0, detector_pixel_mrad=2.0, seed=3)
    with h5py.File(d / "data.h5", "w") as f:
        ds = f.create_dataset("scan/data", data=s.dataset.data, chunks=(4, 40, 24, 24))
        ds.attrs["scan_step_A"] = [0.2, 0.2]
        ds.attrs["detector_pixel_mrad"] = [2.0, 2.0]
        ds.attrs["energy_ev"] = 80e3
        ds.attrs["convergence_mrad"] = 10.0
    np.save(d / "label.npy", s.label.astype(np.float32))
    np.save(d / "plain.npy", np.asarray(s.dataset.data))
    return d, s


def test_info_prints_shape_and_calibration(files, capsys):
    d, _ = files
    assert main(["info", str(d / "data.h5")]) == 0
    out = capsys.readouterr().out
    assert "36 x 40 x 24 x 24" in out
    assert "0.2 x 0.2 Å" in out
    assert "80 keV" in out


def test_adf_matches_brute_force(files):
    d, s = files
    out = d / "adf.tif"
    assert main(["adf", str(d / "data.h5"), "--inner", "12", "--outer", "22", "--centre", "11.5,11.25",
                 "-o", str(out)]) == 0
    img = tifffile.imread(out)
    data = np.asarray(s.dataset.data, np.float64)
    yy, xx = np.mgrid[:24, :24]
    r = np.hypot(yy - 11.5, xx - 11.25) * 2.0  # mrad
    ref = data[..., (r >= 12) & (r < 22)].sum(-1)
    np.testing.assert_allclose(img, ref, rtol=1e-5)


def test_existing_output_is_never_overwritten(files, capsys):
    d, _ = files
    target = d / "keep.tif"
    target.write_bytes(b"user data")
    rc = main(["adf", str(d / "data.h5"), "--inner", "12", "--outer", "22", "-o", str(target)])
    assert rc == 2
    assert target.read_bytes() == b"user data"
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "missing.h5"], "no such file"),
        (["adf", "{d}/plain.npy", "--inner", "5", "--outer", "9", "-o", "{d}/x.tif"], "detector pixel size"),
        (["adf", "{d}/data.h5", "--inner", "9", "--outer", "5", "-o", "{d}/y.tif"], "must be larger"),
        (["adf", "{d}/data.h5", "--inner", "5", "--outer", "9", "-o", "{d}/y.bmp"], "unsupported file type"),
        (["predict", "{d}/data.h5", "--model", "{d}/label.npy", "-o", "{d}/z.tif"], "label.npy"),
        (["train", "{d}/data.h5", "--label", "{d}/label.npy", "--cluster", "4", "-o", "{d}/m.pt"], "cluster"),
    ],
)
def test_user_errors_exit_2_without_traceback(files, capsys, argv, message):
    d, _ = files
    argv = [a.format(d=d) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_train_predict_evaluate_end_to_end(files, capsys):
    d, s = files
    model = d / "model.pt"
    rc = main(["train", str(d / "data.h5"), "--label", str(d / "label.npy"), "--no-register",
               "--model", "linear", "--init", "scratch", "--cluster", "3", "--epochs", "8",
               "--detector-size", "24",
               "-o", str(model)])
    assert rc == 0 and model.exists()
    # the counts are named for what they count, and how training ended is said in words that
    # agree with what the checkpoint records
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.training.loop import how_it_ended

    out = capsys.readouterr().out
    ts = load_checkpoint(model).info["train_summary"]
    assert "least-squares fit of the linear model (1 member) ..." in out
    # epochs counted from 1, as every front end shows them (EpochEvent.number)
    assert re.search(r"\nepoch 1/\d+: train loss", out) and "epoch 0" not in out
    ended = how_it_ended(ts["stopped"], ts["epochs_run"], ts["best_epoch"])
    assert f"saved {model}: {ended} (" in out
    assert ts["stopped"] == "least_squares" and ended == "fitted by least squares"  # MSE: the fit is the answer
    pred = d / "pred.npy"
    assert main(["predict", str(d / "data.h5"), "--model", str(model), "-o", str(pred)]) == 0
    image = np.load(pred)
    assert image.shape == (36, 40)
    r = np.corrcoef(image.ravel(), s.truth.ravel())[0, 1]
    assert r > 0.8
    capsys.readouterr()
    assert main(["evaluate", str(pred), "--reference", str(d / "label.npy")]) == 0
    assert "PSNR" in capsys.readouterr().out


@pytest.mark.parametrize("what,expect", [("constant", "constant"), ("nan", "NaN/inf")])
def test_evaluate_refuses_images_without_defined_metrics(tmp_path, capsys, what, expect):
    """A flat image has no correlation, SSIM or contrast; NaN pixels make every metric NaN:
    both are refused naming the file, instead of numbers that mean nothing."""
    rng = np.random.default_rng(0)
    ref = rng.random((20, 20)).astype(np.float32)
    img = np.full_like(ref, 0.5) if what == "constant" else ref.copy()
    if what == "nan":
        img[10, 10] = np.nan
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "ref.npy", ref)
    assert main(["evaluate", str(tmp_path / "img.npy"), "--reference", str(tmp_path / "ref.npy")]) == 2
    err = capsys.readouterr().err
    assert "img.npy" in err and expect in err
