"""GUI tests of issue 16's napari parts: the calibration panel (every calibration with its source,
edits recorded as the user's and read by every dock), the browser's scan-shape field for frame
stacks, the detector dock's iCoM in Å, and the Live dock's calibration."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml import Calibration, Dataset4D

pytestmark = pytest.mark.gui


def _dataset(scan=(6, 5), k=16, seed=0, **cal) -> Dataset4D:
    rng = np.random.default_rng(seed)
    data = rng.random((*scan, k, k), dtype=np.float32)
    return Dataset4D(data, Calibration(**cal))


def test_panel_shows_sources_and_edits_are_the_users(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.calibration import CalibrationWidget
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget

    viewer = make_napari_viewer()
    panel = CalibrationWidget(viewer)
    det = DetectorsWidget(viewer)
    s = panel.session
    ds = _dataset(scan_step=(0.4, 0.4), detector_pixel=(0.8, 0.8),
                  sources={"scan_step": "XML optics.scan_size", "detector_pixel": "hdr px"})
    s.add_dataset("d", ds)
    s.show_scan_image("img", np.ones(ds.scan_shape, np.float32), dataset="d")
    form = panel.form
    assert form.edits["scan_step"].text() == "0.4"
    assert form.sources["scan_step"].text() == "XML optics.scan_size"
    assert form.sources["detector_pixel"].text() == "hdr px"
    assert form.edits["energy_ev"].text() == ""  # unknown: said so, not guessed
    assert "unknown" in form.sources["energy_ev"].text()
    assert "beam energy" in panel.status.text()
    # typed values become the data set's, recorded as the user's
    form.set_field("energy_ev", "300")
    form.set_field("convergence_mrad", "21.4")
    cal = s.datasets["d"].calibration
    assert cal.energy_ev == pytest.approx(300e3)
    assert cal.source_of("energy_ev") == "user" and cal.source_of("convergence_mrad") == "user"
    assert cal.source_of("scan_step") == "XML optics.scan_size"  # the others keep theirs
    assert form.sources["energy_ev"].text() == "user"
    # the detector dock shows the same α; an α typed there is the same edit
    assert det.alpha.value() == pytest.approx(21.4)
    det.alpha.setValue(25.0)
    assert s.datasets["d"].calibration.convergence_mrad == pytest.approx(25.0)
    assert form.edits["convergence_mrad"].text() == "25"
    # a new scan step rescales the data set's layers; nm are understood
    form.set_field("scan_step", "0.05", unit="nm")
    assert s.datasets["d"].calibration.scan_step_A == pytest.approx((0.5, 0.5))
    np.testing.assert_allclose(viewer.layers["img"].scale, (0.05, 0.05))
    np.testing.assert_allclose(viewer.layers["scan position"].scale, (0.05, 0.05))
    # a value that cannot be is refused with the field named; nothing changes
    before = s.datasets["d"].calibration
    form.set_field("energy_ev", "-3")
    assert s.datasets["d"].calibration == before
    assert "beam energy" in form.sources["energy_ev"].text()
    # revert: the file's calibration, with its sources
    panel.revert()
    back = s.datasets["d"].calibration
    assert back == ds.calibration and back.source_of("scan_step") == "XML optics.scan_size"
    assert back.energy_ev is None
    np.testing.assert_allclose(viewer.layers["img"].scale, (0.4, 0.4))


def test_scan_shape_field_reshapes_data_set_and_layers(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.session import PATTERN_LAYER, nav_layer_name

    viewer = make_napari_viewer()
    browser = BrowserWidget(viewer)
    s = browser.session
    rng = np.random.default_rng(2)
    frames = rng.random((12, 16, 16), dtype=np.float32)
    # a stack of 12 frames whose scan shape the file does not say: one row of 12
    ds = Dataset4D(frames[None], Calibration(scan_step=(0.5, 0.5)),
                   metadata={"scan_shape_unknown": True, "n_frames": 12})
    s.add_dataset("stack", ds)
    qtbot.waitUntil(lambda: nav_layer_name("stack") in viewer.layers, timeout=20000)
    qtbot.waitUntil(lambda: browser.worker is None, timeout=20000)
    items = [browser.shape_box.itemText(i) for i in range(browser.shape_box.count())]
    assert set(items) == {"3 × 4", "4 × 3", "2 × 6", "6 × 2", "1 × 12", "12 × 1"}
    assert "without a scan shape" in browser.position_label.text()
    derived = np.arange(12, dtype=np.float32)[None]  # a scan-plane image of the old shape
    s.show_scan_image("per frame", derived, dataset="stack")
    browser.set_scan_shape("3 x 4")
    new = s.datasets["stack"]
    assert new.scan_shape == (3, 4) and new.scan_shape_known
    np.testing.assert_array_equal(viewer.layers["per frame"].data,
                                  np.arange(12).reshape(3, 4))  # frame i = iy * nx + ix
    s.set_position(1, 2)
    np.testing.assert_array_equal(s.raw_pattern(), frames[6])
    nav = viewer.layers[nav_layer_name("stack")]
    qtbot.waitUntil(lambda: browser.worker is None and nav.data.shape == (3, 4), timeout=20000)
    assert s.diffraction.layers[PATTERN_LAYER].data.shape == (16, 16)
    # a shape that does not fit: the frame count and the shapes that fit are named
    browser.set_scan_shape("5 x 3")
    assert s.datasets["stack"].scan_shape == (3, 4)
    assert "12 frames" in browser.position_label.text()
    assert "3 x 4" in browser.position_label.text()


def test_detector_icom_uses_the_scan_step_in_angstrom(make_napari_viewer, qtbot):
    """The dock's iCoM is the CLI's and Compare's (baselines.icom_image) whatever unit the file
    gives the scan step in: 0.04 nm and 0.4 Å give the same image."""
    from napari_4dstem_ml.baselines import icom_image
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget, image_layer_name

    syn = make_synthetic((12, 12), (24, 24), bf_radius_px=5.0, seed=3)
    data = np.asarray(syn.dataset.data, np.float32)
    images = {}
    for units, step in (("nm", 0.04), ("A", 0.4)):
        viewer = make_napari_viewer()
        det = DetectorsWidget(viewer)
        cal = Calibration(scan_step=(step, step), scan_units=units, detector_pixel=(1.0, 1.0),
                          convergence_mrad=5.0)
        det.session.add_dataset(units, Dataset4D(data, cal))
        det.com_box.setChecked(True)
        name = image_layer_name("iCoM", units)
        qtbot.waitUntil(lambda name=name, v=viewer, d=det: name in v.layers
                        and d.worker is None, timeout=60000)
        images[units] = np.asarray(viewer.layers[name].data)
        centre = det.centre()
    expected, *_ = icom_image(data, centre, (0.4, 0.4))
    np.testing.assert_allclose(images["nm"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(images["A"], expected, rtol=1e-5, atol=1e-6)


def test_descan_left_ticked_is_turned_off_with_a_note(make_napari_viewer, qtbot, monkeypatch,
                                                      tmp_path):
    """Settings from the last session that cannot apply yet (descan correction, no detector
    to follow) are reset quietly: no error, a note in the dock."""
    import json

    from napari_4dstem_ml.widgets import session as session_module
    from napari_4dstem_ml.widgets import settings
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget, image_layer_name

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"detectors": {"descan": True, "com": True}}))
    monkeypatch.setenv(settings.ENV_VAR, str(path))
    errors = []
    monkeypatch.setattr(session_module, "show_error", errors.append)
    viewer = make_napari_viewer()
    det = DetectorsWidget(viewer)
    assert det.descan.isChecked()
    det.session.add_dataset("d", _dataset(scan=(6, 6), scan_step=(0.4, 0.4)))
    qtbot.waitUntil(lambda: image_layer_name("iCoM", "d") in viewer.layers
                    and det.worker is None, timeout=60000)
    assert not det.descan.isChecked()
    assert "turned off" in det.status.text() or "updated" in det.status.text()
    assert errors == []


def test_live_dock_names_the_missing_calibration(make_napari_viewer, qtbot, tmp_path):
    """An EMPAD XML states energy and scan step but no detector angle per pixel: a model on a
    physical grid cannot run until it is given — the dock says so at Start; typed in the
    dock's calibration form, the check passes (the core's own check, Preprocessor.adapt)."""
    from napari_4dstem_ml.live.replay import empad_xml
    from napari_4dstem_ml.models import LinearConfig
    from napari_4dstem_ml.training.loop import TrainConfig, run_training
    from napari_4dstem_ml.training.synthetic import make_synthetic
    from napari_4dstem_ml.widgets.live import LiveWidget, missing_calibration
    from napari_4dstem_ml.widgets.session import SessionModel

    syn = make_synthetic((12, 12), (24, 24), bf_radius_px=5.0, seed=0)
    res = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3),
                       train_config=TrainConfig(epochs=1))
    pre = res.preprocessor
    assert syn.dataset.calibration.detector_pixel_mrad is not None
    err = missing_calibration(pre, Calibration(scan_step=(0.25, 0.25), energy_ev=80e3),
                              (128, 128))
    assert err is not None and err.field == "detector_pixel"
    full = syn.dataset.calibration
    assert missing_calibration(pre, full, (128, 128)) is None

    acq = tmp_path / "scan_x12_y12.raw"
    acq.with_suffix(".xml").write_text(empad_xml(acq.name, (12, 12), 80e3, (0.25, 0.25)))
    viewer = make_napari_viewer()
    live = LiveWidget(viewer)
    live.session.add_model(SessionModel("lin", "linear", res.model, res.model_config, pre))
    live.model_box.setCurrentText("lin")
    live.path.setText(str(acq))
    live.read_header()
    form = live.calibration
    assert form.edits["energy_ev"].text() == "80"
    assert "xml" in form.sources["energy_ev"].text().lower() or form.sources["energy_ev"].text()
    assert form.edits["detector_pixel"].text() == ""
    assert live.start() is None  # refused before following the file
    assert "detector pixel" in live.readout.text()
    for name in ("detector_pixel", "convergence_mrad"):
        value = getattr(full, name)
        form.set_field(name, f"{value[0] if isinstance(value, tuple) else value:g}")
    cal = live.effective_calibration()
    assert cal.source_of("detector_pixel") == "user" and cal.energy_ev == pytest.approx(80e3)
    assert missing_calibration(pre, cal, (128, 128)) is None


def test_alpha_is_offered_from_the_bright_field_disk(make_napari_viewer, qtbot):
    """α offered from the mean pattern's bright-field disk (radius × mrad/px), set only when
    the user takes it, with its source saying how it was measured."""
    from napari_4dstem_ml.detectors.centre import measure_bf_disk
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.calibration import CalibrationWidget
    from napari_4dstem_ml.widgets.session import MEAN_LAYER

    viewer = make_napari_viewer()
    browser = BrowserWidget(viewer)
    panel = CalibrationWidget(viewer)
    yy, xx = np.mgrid[:48, :48]
    disk = (np.hypot(yy - 23.0, xx - 24.5) < 9.0).astype(np.float32) * 50 + 1
    data = np.random.default_rng(0).poisson(np.broadcast_to(disk, (6, 6, 48, 48))).astype(
        np.float32)
    cal = Calibration(scan_step=(0.3, 0.3), detector_pixel=(0.8, 0.8))
    s = panel.session
    s.add_dataset("d", Dataset4D(data, cal))
    qtbot.waitUntil(lambda: MEAN_LAYER in s.diffraction.layers
                    and s.diffraction.layers[MEAN_LAYER].metadata.get("dataset") == "d"
                    and browser.worker is None, timeout=20000)
    alpha = panel.measure_alpha()
    expected = measure_bf_disk(data.mean(axis=(0, 1)), cal).convergence_mrad
    assert alpha == pytest.approx(expected, rel=1e-4)
    assert alpha == pytest.approx(9.0 * 0.8, rel=0.05)  # the disk drawn: 9 px of 0.8 mrad
    assert s.datasets["d"].calibration.convergence_mrad is None  # offered, not set
    panel.use_button.click()
    cal = s.datasets["d"].calibration
    assert cal.convergence_mrad == pytest.approx(alpha)
    assert cal.source_of("convergence_mrad").startswith("measured: bright-field disk radius")
