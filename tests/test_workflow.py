"""The headless main job (``make run`` without a display, ``stemml demo``) on the samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_4dstem_ml.workflow import Message, run_headless


@pytest.mark.slow
def test_headless_workflow_beats_adf_on_mos2(tmp_path):
    events = []
    gen = run_headless(tmp_path, models=("linear",), time_limit_s=60)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            run = stop.value
            break
    assert run.parent == tmp_path and run.is_dir()
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("label registered" in t for t in texts)
    for name in ("linear.pt", "linear_detector_mask.npy", "mos2_linear.tif", "mos2_adf.tif",
                 "prsco3_linear.tif", "mos2_navigation.png", "summary.json"):
        assert (run / name).is_file(), name
    image = tifffile.imread(run / "mos2_linear.tif")
    assert image.shape == (64, 64) and np.isfinite(image).all()
    assert np.load(run / "linear_detector_mask.npy").ndim == 2
    summary = json.loads((run / "summary.json").read_text())
    ml = summary["models"]["linear"]["mos2"]
    adf = summary["samples"]["mos2"]["adf_vs_truth"]
    # the learned reconstruction is closer to the ground truth than the conventional ADF image
    assert ml["ssim"] > adf["ssim"] and ml["pearson_r"] > adf["pearson_r"]
    # a second run never reuses (or overwrites) the first run's folder
    gen2 = run_headless(tmp_path, models=(), time_limit_s=1)
    while True:
        try:
            next(gen2)
        except StopIteration as stop:
            assert stop.value != run
            break


@pytest.mark.parametrize("n", [1, 2])
def test_ensemble_option_holds_when_fine_tuning_the_base_model(n, synthetic):
    """``--ensemble N`` fine-tuning the 3-member base CNN keeps N of its members (1: one
    network, which the checkpoint then holds); more members than it has is a clear error."""
    from napari_4dstem_ml.models import EnsembleConfig
    from napari_4dstem_ml.workflow import TrainingJob

    job = TrainingJob(label="l.tif", output="o.pt", model="conv4d", ensemble=n)
    initial, (model_cfg, _, _) = job.prepare(synthetic.dataset)
    if n == 1:
        assert not isinstance(model_cfg, EnsembleConfig)
        assert not hasattr(initial.model, "members")
    else:
        assert model_cfg.size == n and len(initial.model.members) == n
    with pytest.raises(ValueError, match="--ensemble 4: .* has 3 member"):
        TrainingJob(label="l.tif", output="o.pt", model="conv4d", ensemble=4).prepare(
            synthetic.dataset)
