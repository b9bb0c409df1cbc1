"""stemml simulate-train: a tiny run end to end (simulate with abTEM, train, save), resume
and cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("abtem")
pytest.importorskip("torch")

from napari_4dstem_ml.cli import main  # noqa: E402

TINY = ["graphene", "--items", "2", "--scan-shape", "10", "10", "--detector-size", "32",
        "--detector-pixel", "2.0", "--scan-step", "0.3", "--dose", "1e4", "1e5", "--init", "scratch",
        "--epochs", "1"]


@pytest.mark.slow
def test_simulate_train_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["simulate-train", *TINY, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 simulations (2 to run, 0 already done)" in text and f"saved {out}" in text
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.training.checkpoint import load_checkpoint

    m = load_checkpoint(out)
    prov = m.info["provenance"]
    assert len(prov["simulations"]) == 2
    assert prov["simulate_train"]["structure"] == "graphene"
    assert {s["structure"]["name"] for s in prov["simulations"]} == {"graphene"}
    doses = sorted(s["dose_e_per_pattern"] for s in prov["simulations"])
    assert 1e4 <= doses[0] < doses[1] <= 1e5  # one per stratum of the log range
    sim = sorted((tmp_path / "m.simulations").glob("*.h5"))
    assert len(sim) == 2
    img = predict(m.model, m.preprocessor, load(sim[0], dataset="datacube/data"))
    assert img.shape == (10, 10) and np.isfinite(img).all() and img.std() > 0
    # a rerun finds both simulations done (resumable)
    assert main(["simulate-train", *TINY, "-o", str(tmp_path / "m2.pt"), "--work-dir",
                 str(tmp_path / "m.simulations"), "--plan-only"]) == 0
    assert "2 simulations (0 to run, 2 already done)" in capsys.readouterr().out


@pytest.mark.slow
def test_simulate_train_cancels_between_items(tmp_path):
    from napari_4dstem_ml.simtrain import SimTrainJob, simulate_train
    from napari_4dstem_ml.simulate.series import SeriesEvent

    job = SimTrainJob("graphene", str(tmp_path / "c.pt"), items=2, scan_shape=(10, 10),
                      detector_size=32, detector_pixel_mrad=2.0, scan_step_A=(0.3, 0.3),
                      init="scratch", epochs=1)
    cancel = threading.Event()
    gen = simulate_train(job, cancel=cancel)
    result = "not returned"
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(ev, SeriesEvent) and ev.event.stage == "done":
            cancel.set()  # stop after the first simulation
    assert result is None
    assert not (tmp_path / "c.pt").exists()
    assert len(list((tmp_path / "c.simulations").glob("*.h5"))) == 1


def test_plan_only_answers_fast_and_leaves_nothing(tmp_path, capsys):
    """The plan comes before any folder is made; the largest series allowed is planned in
    seconds, a larger one refused naming --items."""
    import time

    t0 = time.monotonic()
    assert main(["simulate-train", *TINY, "-o", str(tmp_path / "m.pt"), "--plan-only"]) == 0
    assert "2 simulations (2 to run" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert main(["simulate-train", "graphene", "--items", "1000000", "--plan-only", "-o",
                 str(tmp_path / "m.pt")]) == 2
    assert "--items" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value, option", [
    ("thickness_nm", (0.0, 5.0), "--thickness"), ("dose", (1e4, float("nan")), "--dose"),
    ("tilt_mrad", 1e9, "--tilt"), ("energy_kev", (80.0, -1.0), "--energy"),
    ("scan_shape", (1, 1), "--scan-shape"), ("scan_shape", (10.5, 10), "--scan-shape"),
    ("items", 0, "--items"), ("convergence_mrad", (30.0, 20.0), "--convergence"),
    ("detector_size", 10**6, "--detector-size"), ("epochs", 0, "--epochs"),
])
def test_job_bounds_name_the_option(tmp_path, field, value, option):
    from napari_4dstem_ml.simtrain import SimTrainJob

    with pytest.raises(ValueError, match=option):
        SimTrainJob("graphene", str(tmp_path / "m.pt"), **{field: value})
