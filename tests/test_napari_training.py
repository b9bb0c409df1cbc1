"""GUI test of the training widget on a tiny synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.mark.slow
def test_train_save_apply(make_napari_viewer, qtbot, tmp_path):
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets.training import TrainingWidget, applied_name

    syn = make_synthetic((16, 16), (12, 12), bf_radius_px=3.0, seed=0)
    other = make_synthetic((12, 12), (12, 12), bf_radius_px=3.0, seed=1)
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    widget.session.add_dataset("train", syn.dataset)
    widget.session.add_dataset("other", other.dataset, make_current=False)
    viewer.add_image(syn.label, name="label", scale=syn.dataset.scale()[:2], units="angstrom")
    widget.dataset_box.setCurrentText("train")
    widget.label_box.setCurrentText("label")
    widget.kind_box.setCurrentText("linear")
    widget.start_box.setCurrentText("scratch")  # a tiny model of its own
    widget.cluster.setValue(3)
    widget.epochs.setValue(2)
    widget.batch.setValue(32)

    worker = widget.start()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240000)
    # the linear model with the MSE loss is solved directly (least squares): no optimiser steps
    assert widget.result is not None
    assert widget.result.steps > 0 or widget.result.stopped == "least_squares"
    assert len(widget.history) >= 1
    rec = viewer.layers[widget.run_name]
    assert rec.data.shape == syn.label.shape
    # the last preview is the best model's reconstruction of the field
    assert widget.save_button.isEnabled() and widget.apply_button.isEnabled()

    path = widget.save(tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    assert loaded.model_config == widget.result.model_config

    assert widget.apply("other") is not None
    qtbot.waitUntil(lambda: widget.apply_worker is None, timeout=240000)
    expected = predict(widget.result.model, widget.result.preprocessor, other.dataset)
    got = viewer.layers[applied_name(widget.run_name, "other")].data
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_training_error_is_notified(make_napari_viewer, qtbot, monkeypatch):
    """A label of the wrong shape and no registration: an error notification, no crash."""
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets import training as tw

    syn = make_synthetic((8, 8), (8, 8), bf_radius_px=2.0, seed=0)
    viewer = make_napari_viewer()
    widget = tw.TrainingWidget(viewer)
    widget.session.add_dataset("d", syn.dataset)
    from napari_4dstem_ml.widgets import session

    messages = []
    monkeypatch.setattr(session, "show_error", messages.append)

    def boom(*args, **kwargs):
        raise RuntimeError("model exploded")
        yield  # pragma: no cover

    monkeypatch.setattr(tw, "train_job", boom)
    viewer.add_image(syn.label, name="label", scale=syn.dataset.scale()[:2], units="angstrom")
    widget.label_box.setCurrentText("label")
    worker = widget.start()
    assert worker is not None, messages
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20000)
    assert any("model exploded" in m for m in messages)
    assert widget.start_button.isEnabled()
    assert "model exploded" in widget.readout.text()


def test_fine_tunes_the_base_model_by_default(make_napari_viewer, qtbot):
    """With the base model installed, Start fine-tunes it: K and the ensemble are the base's
    (their boxes disabled), the checkpoint's training domain includes the base's library."""
    from napari_4dstem_ml.base_model import load_base_model
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets.training import START_BASE, TrainingWidget

    base = load_base_model("linear")
    syn = make_synthetic((20, 20), (32, 32), bf_radius_px=6.0, seed=0)
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    widget.session.add_dataset("train", syn.dataset)
    viewer.add_image(syn.label, name="label", scale=syn.dataset.scale()[:2],
                     metadata={"role": "label", "dataset": "train"})
    widget.dataset_box.setCurrentText("train")
    widget.label_box.setCurrentText("label")
    widget.kind_box.setCurrentText("linear")
    assert widget.start_box.currentText() == START_BASE
    assert not widget.cluster.isEnabled() and not widget.ensemble.isEnabled()
    widget.cluster.setValue(3)  # ignored: fine-tuning keeps the base's K
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240000)
    res = widget.result
    assert res is not None
    assert res.model_config.cluster_size == base.model_config.cluster_size
    # what the validation region showed is said where the user looks: the readout and the
    # model's description
    from napari_4dstem_ml.widgets.models import describe
    from napari_4dstem_ml.workflow import trust_line

    trust = trust_line(res.train_summary)
    assert trust.startswith("on the validation region the model")
    assert trust in widget.readout.text()
    assert trust in describe(widget.session.models[widget.run_name])
    dom = res.train_summary["domain"]
    # refitted whole on this one data set: its domain is that data set's, the base's kept apart
    assert dom["n_datasets"] == 1
    from napari_4dstem_ml.domain import TrainingDomain

    # the base's ranges, with the scan step in λ/α derived from its items' calibrations
    bs = base.info["train_summary"]
    want = TrainingDomain.from_dict(bs["domain"]).with_probe_steps(
        [it["calibration"] for it in bs["items"]])
    assert "scan_step_probe" in want.ranges and "scan_step_probe" not in bs["domain"]["ranges"]
    assert res.train_summary["init_domain"] == want.to_dict()
    assert res.preprocessor.grid_units == "alpha"  # its masks scale with the data's α


@pytest.mark.parametrize("init", ["scratch", "base"])
def test_dock_trains_with_the_clis_configs(monkeypatch, init):
    """The dock's worker hands the core exactly the configs ``stemml train`` prepares (it used
    to force every training to run all its epochs, where the CLI stops a scratch training after
    5 epochs without improvement)."""
    import napari_4dstem_ml.training.loop as loop
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets.training import train_job
    from napari_4dstem_ml.workflow import TrainingJob

    syn = make_synthetic((20, 20), (32, 32), bf_radius_px=6.0, seed=0)
    seen = {}

    def fake_train(dataset, label, model_cfg, pre_cfg, **kw):
        seen.update(kw, model_config=model_cfg, preprocess_config=pre_cfg)
        yield "trained"

    monkeypatch.setattr(loop, "train", fake_train)
    events = list(train_job(syn.dataset, syn.label, "conv4d", 5, 7, 1e-3, 16, None,
                            init=init, ensemble=None))
    assert events[-1] == "trained"
    _, (m, p, t) = TrainingJob(label="", output="", model="conv4d", cluster_size=5, epochs=7,
                               lr=1e-3, batch_size=16, init=init,
                               ensemble=None).prepare(syn.dataset)
    assert (seen["model_config"], seen["preprocess_config"], seen["train_config"]) == (m, p, t)
    assert t.epochs == 7
    assert t.patience == (5 if init == "scratch" else None)
