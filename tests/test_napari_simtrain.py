"""The 'Train from simulation' dock: the form becomes the CLI's job, Estimate plans without
running, Run feeds the session's models."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("abtem")
pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer):
    from napari_4dstem_ml.widgets.simtrain import SimTrainWidget

    viewer = make_napari_viewer()
    return SimTrainWidget(viewer)


def test_form_becomes_the_job_and_estimate_plans(widget, tmp_path):
    from napari_4dstem_ml.dataset import Calibration, Dataset4D

    ds = Dataset4D(np.zeros((6, 6, 40, 40), np.float32),
                   Calibration(scan_step=(0.3, 0.3), detector_pixel=(1.5, 1.5), energy_ev=200e3,
                               convergence_mrad=24.0))
    widget.session.add_dataset("data", ds)
    widget.fill_from_dataset()
    widget.structure.value = "SrTiO3"
    widget.items.value = 3
    widget.output.value = str(tmp_path / "m.pt")
    job = widget.job()
    assert job.structure == "SrTiO3" and job.energy_kev == (200.0,)
    assert job.convergence_mrad == (24.0, 24.0) and job.detector_pixel_mrad == 1.5
    assert job.detector_size == 40 and job.scan_step_A == (0.3, 0.3)
    assert job.thickness_nm == (5.0, 20.0) and job.init == "base"
    widget.structure.value = "graphene"
    assert widget.job().thickness_nm is None  # a monolayer has no thickness range
    widget.estimate()
    assert "3 simulations" in widget.status.text() and "min of simulation" in widget.status.text()
    assert not list(tmp_path.iterdir())  # nothing ran
    widget.zone.value = "1 1"
    with pytest.raises(ValueError, match="zone axis"):
        widget.job()


def test_run_adds_the_model_to_the_session(widget, tmp_path, qtbot, monkeypatch):
    """Run wiring with the simulation replaced by a stand-in generator that saves a real
    (tiny) checkpoint: the progress bar fills and the model joins the session."""
    from napari_4dstem_ml import simtrain
    from napari_4dstem_ml.models import LinearConfig, build_model
    from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_ml.training.checkpoint import save_checkpoint
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.workflow import JobResult

    syn = make_synthetic(scan_shape=(12, 12), detector_shape=(16, 16))
    pre = Preprocessor.fit(syn.dataset, PreprocessConfig())
    path = tmp_path / "m.pt"

    def fake(job, cancel=None):
        yield simtrain.SimTrainPlan(("a",), ({},), (False,), 1.0)
        cfg = LinearConfig(cluster_size=3)
        save_checkpoint(path, build_model(cfg, pre.output_shape), cfg, pre)
        res = JobResult(path, {}, {"pearson_r": 0.9}, "completed", 1, 0.1)
        yield res
        return res

    monkeypatch.setattr(simtrain, "simulate_train", fake)
    widget.output.value = str(path)
    widget.structure.value = "graphene"
    widget.run()
    qtbot.waitUntil(lambda: widget.run_btn.isEnabled(), timeout=30000)
    assert widget.result_path == path and widget.progress.value() == 1000
    assert any(str(path) in (m.path or "") for m in widget.session.models.values())


def test_form_is_remembered_and_stale_values_reset_quietly(make_napari_viewer, monkeypatch,
                                                          tmp_path):
    """The magicgui form keeps its values between launches (settings file); a stored value
    that cannot apply any more (a material that is gone) is reset to the default, quietly."""
    import json

    from napari_4dstem_ml.widgets import settings
    from napari_4dstem_ml.widgets.simtrain import SimTrainWidget

    path = tmp_path / "settings.json"
    monkeypatch.setenv(settings.ENV_VAR, str(path))
    w1 = SimTrainWidget(make_napari_viewer())
    w1.items.value = 4
    w1.structure.value = "SrTiO3"
    w1.thickness.thickness_max.value = 30.0
    w1.energy.value = "200 300"
    stored = json.loads(path.read_text())["simulate"]
    assert stored["items"] == 4 and stored["thickness_max"] == 30.0
    w2 = SimTrainWidget(make_napari_viewer())
    assert (w2.items.value, w2.structure.value, w2.energy.value) == (4, "SrTiO3", "200 300")
    assert w2.job().thickness_nm == (5.0, 30.0) and w2.job().energy_kev == (200.0, 300.0)
    stored["structure"] = "unobtainium"
    path.write_text(json.dumps({"simulate": stored}))
    w3 = SimTrainWidget(make_napari_viewer())
    assert w3.structure.value != "unobtainium" and w3.reset_settings == ["structure"]
    assert w3.items.value == 4
