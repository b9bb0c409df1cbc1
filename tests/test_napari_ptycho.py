"""The training dock's "Reconstruct label…": the label made from the data set in a worker,
offered as the training label on the scan grid (no registration), with its form remembered."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]
pytest.importorskip("quantem")


def test_reconstruct_label_from_the_dock(make_napari_viewer, qtbot, tmp_path):
    import dataclasses

    from napari_4dstem_ml.ptycho import PtychoConfig
    from napari_4dstem_ml.samples import load_sample
    from napari_4dstem_ml.widgets.ptycho import config_from, label_form
    from napari_4dstem_ml.widgets.session import fingerprint
    from napari_4dstem_ml.widgets.training import TrainingWidget

    s = load_sample("mos2")
    crop = np.asarray(s.dataset.data[8:24, 8:24])  # a 16 x 16 crop: seconds, not minutes
    ds = dataclasses.replace(s.dataset, data=crop, source=None)
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    widget.session.add_dataset("mos2 crop", ds)
    widget.dataset_box.setCurrentText("mos2 crop")
    out = tmp_path / "label.h5"
    config = PtychoConfig(iterations=2, bin_factor=4, padded_size=64, batch_size=64,
                          half_data_frc=False)
    worker = widget.label_maker.start(config, str(out))
    assert worker is not None and widget.ptycho_button.text() == "Stop label"
    assert not widget.start_button.isEnabled()  # one job at a time in the dock
    qtbot.waitUntil(lambda: not widget.label_maker.running, timeout=300000)

    assert out.is_file()
    layer = viewer.layers[widget.label_box.currentText()]
    assert "ptychography" in layer.name and layer.metadata["label_method"] == "ptychography"
    assert layer.data.shape == ds.scan_shape and np.isfinite(layer.data).all()
    assert np.ptp(layer.data) > 0
    step = ds.calibration.scan_step_A
    key = (f"{fingerprint(np.asarray(layer.data, np.float32))}:{float(step[1]):.6g}", "mos2 crop")
    assert key in widget.session.registrations  # Start trains on it without registering
    # the dock's own label key for the chosen label is that one
    data, pixel, dock_key = widget.chosen_label(ds)
    assert (dock_key, "mos2 crop") == key
    assert widget.start_button.isEnabled() and widget.ptycho_button.text() == "Reconstruct label…"

    form = label_form()
    form["mode"].value = "multislice"
    form["slices"].value = 3
    form["thickness_nm"].value = 20.0
    cfg = config_from(form)
    assert (cfg.mode, cfg.slices, cfg.slice_thickness_A, cfg.sample_thickness_A) == (
        "multislice", 3, 10.0, 200.0)
