"""The napari workflow (issue 10): regions, progress and loss curves, one layer set per run,
Compare with its metrics table, checkpoints opened onto the viewer, consistency between data
sets, and settings. Run under pytest-xvfb with napari's viewer fixture."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from napari_4dstem_ml import Calibration, Dataset4D

pytestmark = pytest.mark.gui


def _synthetic(scan=(16, 16), seed=0):
    from napari_4dstem_ml.training.synthetic import make_synthetic

    return make_synthetic(scan, (12, 12), bf_radius_px=3.0, seed=seed)


def _training_widget(viewer, syn, name="train"):
    from napari_4dstem_ml.widgets.training import TrainingWidget

    widget = TrainingWidget(viewer)
    widget.session.add_dataset(name, syn.dataset)
    viewer.add_image(
        syn.label,
        name="label",
        scale=syn.dataset.scale()[:2],
        metadata={"role": "label", "dataset": name},
    )
    widget.dataset_box.setCurrentText(name)
    widget.label_box.setCurrentText("label")
    return widget


def _brute_force_positions(rect, scan_shape, k, coverage):
    """Positions whose whole K×K cluster (np.pad reflect at the scan edges) lies in ``rect``."""
    y0, y1, x0, x1 = rect
    ny, nx = scan_shape
    h = k // 2

    def reflect(i, n):
        if i < 0:
            return -i
        if i >= n:
            return 2 * (n - 1) - i
        return i

    out = np.zeros(scan_shape, bool)
    for y in range(ny):
        for x in range(nx):
            ok = coverage[y, x]
            for dy in range(-h, h + 1):
                for dx in range(-h, h + 1):
                    yy, xx = reflect(y + dy, ny), reflect(x + dx, nx)
                    ok = ok and (y0 <= yy < y1) and (x0 <= xx < x1)
            out[y, x] = ok
    return out


def test_region_drawn_as_rectangle_is_trained_on(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.regions import corners_of

    syn = _synthetic((18, 16))
    viewer = make_napari_viewer()
    widget = _training_widget(viewer, syn)
    widget.kind_box.setCurrentText("linear")
    widget.start_box.setCurrentText("scratch")  # a tiny model of its own
    widget.cluster.setValue(3)
    layers = widget.show_regions()
    assert [layer.name for layer in layers.values()] == ["training region: train",
                                                         "validation region: train"]
    # the user drags the training rectangle to rows 3..11, columns 2..13 and the
    # validation one to rows 12..17 (boxes drawn with a little slack inside pixel edges)
    layers["train"].data = [corners_of((3, 12, 2, 14)) + np.array([0.3, 0.2])]
    layers["validation"].data = [corners_of((12, 18, 0, 16))]
    worker = widget.start()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    r = widget.result
    assert r is not None
    assert r.train_summary["split"]["train"] == [3, 12, 2, 14]
    assert r.train_summary["split"]["val"] == [12, 18, 0, 16]
    cov = np.isfinite(syn.label)
    expected = _brute_force_positions((3, 12, 2, 14), syn.dataset.scan_shape, 3, cov)
    assert r.train_summary["n_train"] == int(expected.sum())
    assert "train 54," in widget.regions_label.text() or widget.regions_label.text()


def test_loss_curve_gets_one_point_per_epoch_and_progress_is_determinate(
    make_napari_viewer, qtbot
):
    syn = _synthetic((12, 12))
    viewer = make_napari_viewer()
    widget = _training_widget(viewer, syn)
    widget.kind_box.setCurrentText("conv4d")
    widget.start_box.setCurrentText("scratch")  # a tiny model of its own
    widget.cluster.setValue(5)
    widget.epochs.setValue(3)
    widget.batch.setValue(16)
    steps = []
    widget.start().yielded.connect(
        lambda ev: steps.append(ev) if type(ev).__name__ == "StepEvent" else None
    )
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert widget.curves.epochs == [1, 2, 3]  # counted from 1, as the progress bar does
    np.testing.assert_allclose(widget.curves.train, [e.train_loss for e in widget.history])
    np.testing.assert_allclose(widget.curves.val, [e.val_loss for e in widget.history])
    # a total is known from the first step on: the bar is determinate
    assert steps and all(s.total_steps >= s.step for s in steps)
    assert steps[0].total_steps == steps[-1].total_steps
    assert widget.progress.maximum() > widget.progress.minimum()
    assert widget.progress.value() == widget.progress.maximum()
    # the CNN's first-layer filters stream into their own layer in the diffraction view
    name = widget.run_name
    assert f"filters: {name}" in widget.session.diffraction.layers
    rec = viewer.layers[name]
    assert rec.metadata["role"] == "cnn" and rec.metadata["dataset"] == "train"


def test_two_trainings_leave_two_reconstructions(make_napari_viewer, qtbot):
    syn = _synthetic((16, 16))
    viewer = make_napari_viewer()
    widget = _training_widget(viewer, syn)
    widget.kind_box.setCurrentText("linear")
    widget.start_box.setCurrentText("scratch")  # a tiny model of its own
    widget.cluster.setValue(3)
    names = []
    for k in (3, 1):
        widget.cluster.setValue(k)
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
        names.append(widget.run_name)
    assert names == ["linear #1 on train", "linear #2 on train"]
    first, second = (viewer.layers[n] for n in names)
    assert first is not second
    assert not np.allclose(first.data, second.data)  # K=3 and K=1 differ: nothing overwritten
    masks = [n for n in widget.session.diffraction.layers if n.name.startswith("m(|k|)")]
    assert [m.name for m in masks] == [f"m(|k|): {n}" for n in names]
    assert not masks[0].visible and masks[1].visible  # the older run's mask left the view
    assert masks[1].colorbar.visible
    # the colorbar and the diffraction view's scale bar in opposite corners (they overlapped
    # on a 1366 × 768 screen, where the view is short)
    assert masks[1].colorbar.position == "top_left"
    assert widget.session.diffraction.canvas.overlays.scale_bar.position.startswith("bottom")
    assert list(widget.session.models) == names


def test_label_registered_once_per_label_and_dataset(make_napari_viewer, qtbot, monkeypatch):
    from napari_4dstem_ml.widgets import training as tw

    syn = _synthetic((16, 16))
    viewer = make_napari_viewer()
    widget = _training_widget(viewer, syn)
    # a label on a finer grid than the scan: it must be registered
    fine = np.kron(syn.label, np.ones((2, 2), np.float32))
    step = syn.dataset.scale()[0]
    viewer.add_image(fine, name="fine label", scale=(step / 2, step / 2),
                     translate=(-step / 4, -step / 4), metadata={"role": "label"})
    widget.label_box.setCurrentText("fine label")
    widget.kind_box.setCurrentText("linear")
    widget.start_box.setCurrentText("scratch")  # a tiny model of its own
    widget.cluster.setValue(3)
    calls = []
    real = tw.register
    monkeypatch.setattr(tw, "register", lambda *a: calls.append(1) or real(*a))
    for _ in range(2):
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=90000)
        assert widget.result is not None
    assert len(calls) == 1
    assert "(cached)" in widget.registration_report


def test_compare_builds_grid_and_table_equal_to_core(make_napari_viewer, qtbot, tmp_path):
    from napari_4dstem_ml import metrics
    from napari_4dstem_ml.comparison import MethodImage, compare_methods
    from napari_4dstem_ml.widgets.compare import CompareWidget
    from napari_4dstem_ml.widgets.session import session_for

    syn = _synthetic((48, 48))
    viewer = make_napari_viewer()
    s = session_for(viewer)
    s.add_dataset("d", syn.dataset)
    rng = np.random.default_rng(3)
    truth = syn.label
    images = {
        "ADF": ("adf", truth + rng.normal(0, 0.3, truth.shape)),
        "linear": ("linear", truth + rng.normal(0, 0.1, truth.shape)),
        "ground truth": ("ground_truth", truth),
    }
    for name, (role, img) in images.items():
        s.show_scan_image(name, np.asarray(img, np.float32), dataset="d", role=role)
    viewer.add_image(np.zeros((5, 5)), name="unrelated")
    widget = CompareWidget(viewer)
    widget.dataset_box.setCurrentText("d")
    order_before = [layer.name for layer in viewer.layers]
    assert widget.region_box.currentText() == "validation region"
    widget.compare()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    table = widget.table_result
    assert table.region == (24, 48, 0, 48)  # the default validation region: lower half
    assert table.reference == "ground truth"
    # the widget's table shows the core's numbers ...
    # no iCoM layer was loaded: Compare computes the classical baseline beside the others
    from napari_4dstem_ml.baselines import classical_baselines

    icom = classical_baselines(syn.dataset).icom
    expected = dict(images, **{"iCoM (baseline)": ("icom", icom)})
    ref = compare_methods(
        [MethodImage(n, r, np.asarray(i, np.float32)) for n, (r, i) in expected.items()],
        region=(24, 48, 0, 48),
        pixel_size=syn.dataset.scale()[0],
        unit="Å",
    )
    assert [r.name for r in table.rows] == ["ADF", "linear", "iCoM (baseline)"]
    for i, row in enumerate(ref.formatted()):
        shown = tuple(widget.table.item(i, j).text() for j in range(widget.table.columnCount()))
        assert shown == row
    # ... and those are metrics.compare on the region, independently called
    for row in table.rows:
        crop = np.asarray(expected[row.name][1], np.float32)[24:48, :]
        direct = metrics.compare(crop.astype(np.float64), truth[24:48, :].astype(np.float64),
                                 pixel_size=syn.dataset.scale()[0])
        assert row.pearson_r == pytest.approx(direct.pearson_r, rel=1e-12)
        assert row.ssim == pytest.approx(direct.ssim, rel=1e-12)
        assert row.psnr == pytest.approx(direct.psnr, rel=1e-12)
        assert math.isfinite(row.ssim) and math.isfinite(row.pearson_r)
    assert table.row("linear").pearson_r > table.row("ADF").pearson_r  # less noise, closer
    # the grid: on, only the compared layers visible, each labelled
    assert viewer.canvas.grid.enabled
    shown = {layer.name for layer in viewer.layers if layer.visible}
    assert shown == set(images) | {"iCoM (baseline): d"}
    assert all(viewer.layers[n].name_overlay.visible for n in shown)
    np.testing.assert_allclose(viewer.layers["iCoM (baseline): d"].data, icom, rtol=1e-6)
    assert viewer.canvas.grid.position(viewer.layers.index("ADF"), viewer.layers) == (0, 0)
    # exports: CSV with the full-precision numbers, PNG figure
    out = widget.save_csv(tmp_path / "table.csv")
    rows = list(csv.reader(line for line in out.read_text().splitlines() if not line.startswith("#")))
    assert rows[0][:3] == ["method", "role", "pearson_r"]
    assert float(rows[2][2]) == table.row("linear").pearson_r
    png = widget.save_figure(tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.read_bytes()
    assert widget.save_figure(tmp_path / "figure.png") is None  # never over a file unasked
    assert png.read_bytes() == before
    from napari_4dstem_ml.figure import scale_bar_length

    width = 48 * syn.dataset.scale()[1]  # the scale bar: a round length near a quarter
    assert scale_bar_length(width) in (0.5, 1, 2, 5, 10, 20)
    assert 0.1 * width < scale_bar_length(width) <= 0.25 * width
    order_in_grid = [layer.name for layer in viewer.layers]
    widget.exit_grid()
    assert not viewer.canvas.grid.enabled
    assert viewer.layers["unrelated"].visible
    # the layers' order as it was before Compare (the baseline made since sits above them;
    # the cross-hair stays on top, as always)
    after = [layer.name for layer in viewer.layers if layer.name != "scan position"]
    before = [n for n in order_before if n != "scan position"]
    assert [n for n in after if n in before] == before
    assert order_in_grid[:len(before)] != before


def test_checkpoint_opened_on_viewer_can_be_applied(make_napari_viewer, qtbot, tmp_path):
    from napari_4dstem_ml.models import LinearConfig
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.training.checkpoint import save_checkpoint
    from napari_4dstem_ml.training.loop import TrainConfig, run_training
    from napari_4dstem_ml.widgets.training import TrainingWidget, applied_name

    syn = _synthetic((16, 16))
    other = _synthetic((12, 12), seed=1)
    res = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3),
                       train_config=TrainConfig(epochs=1))
    path = save_checkpoint(tmp_path / "model.pt", res.model, res.model_config, res.preprocessor,
                           train_summary=res.train_summary, metrics=res.metrics)
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    widget.session.add_dataset("other", other.dataset)
    # dropped onto the window: napari picks the reader itself (the only one for .pt)
    from qtpy.QtCore import QUrl

    viewer.window._qt_viewer._open_from_list_of_urls_data(
        [QUrl.fromLocalFile(str(path))], stack=False, choose_plugin=False
    )
    assert "model.pt" in widget.session.models
    assert [layer.name for layer in viewer.layers] == ["scan position"]  # a model is no layer
    # the same file opened again is the same model: listed once
    assert viewer.open(str(path), plugin="napari-4dstem-ml") == []
    assert list(widget.session.models) == ["model.pt"]
    assert widget.model_list.count() == 1
    widget.select_model("model.pt")
    assert widget.model_list.currentItem().text() == "model.pt"
    assert "linear model, cluster K = 3" in widget.model_info.toPlainText()
    assert "validation: pearson_r" in widget.model_info.toPlainText()
    assert widget.apply("other", "model.pt") is not None
    qtbot.waitUntil(lambda: widget.apply_worker is None, timeout=60000)
    expected = predict(res.model, res.preprocessor, other.dataset)
    got = viewer.layers[applied_name("model.pt", "other")]
    np.testing.assert_allclose(got.data, expected, rtol=1e-5, atol=1e-6)
    assert got.metadata["role"] == "linear" and got.metadata["dataset"] == "other"


def test_broken_checkpoint_is_reported_not_loaded(make_napari_viewer, tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.pt"):
        viewer.open(str(path), plugin="napari-4dstem-ml")


def _detectors(viewer, k=32, px_mrad=1.0, alpha=5.0):
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget

    widget = DetectorsWidget(viewer)
    rng = np.random.default_rng(1)
    data = rng.random((5, 4, k, k), dtype=np.float32)
    cal = Calibration(scan_step=(0.4, 0.4), detector_pixel=(px_mrad, px_mrad),
                      convergence_mrad=alpha)
    widget.session.add_dataset("tiny", Dataset4D(data, cal))
    return widget, data


def test_resize_about_centre_keeps_annulus_centred(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.detectors import SHAPES_LAYER, ellipse_circle, ellipse_corners

    viewer = make_napari_viewer()
    widget, data = _detectors(viewer)
    widget.add_presets()
    c = widget.centre()
    adf = widget.specs["ADF"].detector
    shapes = widget.session.diffraction.layers[SHAPES_LAYER]
    assert shapes.mode == "select"  # a drag edits a ring instead of panning the view
    edges = list(zip(shapes.features["detector"], shapes.features["edge"]))
    i = edges.index(("ADF", "outer"))
    # napari resizes the box about its opposite corner: top-left fixed, bottom-right + 2 px
    new = [np.asarray(d) for d in shapes.data]
    box = ellipse_corners(c, adf.outer)
    lo = box.min(axis=0)
    hi = box.max(axis=0) + 2.0
    new[i] = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], [hi[0], lo[1]]])
    shapes.data = new
    spec = widget.specs["ADF"]
    assert spec.centre == pytest.approx(c)
    assert spec.detector.outer == pytest.approx(adf.outer + 2.0)
    assert spec.detector.inner == pytest.approx(adf.inner)
    # the circles are redrawn centred on the detector's centre
    qtbot.waitUntil(lambda: widget.worker is None and not widget._timer.isActive(), timeout=60000)
    qtbot.wait(50)
    feats = list(zip(shapes.features["detector"], shapes.features["edge"]))
    for (name, _edge), corners in zip(feats, shapes.data):
        if name == "ADF":
            centre, r = ellipse_circle(corners)
            assert centre == pytest.approx(c)
    # the table shows the new radius in mrad
    row = [widget.table.item(r, 0).text() for r in range(widget.table.rowCount())].index("ADF")
    assert float(widget.table.item(row, 2).text()) == pytest.approx(adf.outer + 2.0, abs=0.01)


def test_dragging_a_ring_moves_both_edges(make_napari_viewer):
    from napari_4dstem_ml.widgets.detectors import SHAPES_LAYER, ellipse_corners

    viewer = make_napari_viewer()
    widget, _ = _detectors(viewer)
    widget.add_presets()
    c = widget.centre()
    abf = widget.specs["ABF"].detector
    shapes = widget.session.diffraction.layers[SHAPES_LAYER]
    edges = list(zip(shapes.features["detector"], shapes.features["edge"]))
    new = [np.asarray(d) for d in shapes.data]
    new[edges.index(("ABF", "outer"))] = ellipse_corners((c[0] + 1.5, c[1] - 1.0), abf.outer)
    shapes.data = new
    spec = widget.specs["ABF"]
    assert spec.centre == pytest.approx((c[0] + 1.5, c[1] - 1.0))
    assert (spec.detector.inner, spec.detector.outer) == pytest.approx((abf.inner, abf.outer))


def test_typed_radii_and_reported_presets(make_napari_viewer, qtbot):
    from napari_4dstem_ml.widgets.detectors import image_layer_name

    viewer = make_napari_viewer()
    # 32 px of 1 mrad, α = 5 mrad: the edge is at 16 mrad: ADF (7.5-20) is clipped there,
    # HAADF (from 15 mrad to the edge) fits
    widget, data = _detectors(viewer, k=32, px_mrad=1.0, alpha=5.0)
    widget.add_presets()
    assert "ADF clipped at the detector's edge: outer 16.0 mrad instead of 20.0" in widget.status.text()
    assert "HAADF" not in widget.status.text() and "HAADF" in widget.specs
    widget2_viewer = make_napari_viewer()
    w2, _ = _detectors(widget2_viewer, k=32, px_mrad=1.0, alpha=8.0)
    w2.add_presets()  # HAADF from 24 mrad: beyond the 16 mrad edge
    assert "HAADF left out" in w2.status.text() and "HAADF" not in w2.specs
    # type the ADF radii (mrad) into the table
    row = [widget.table.item(r, 0).text() for r in range(widget.table.rowCount())].index("ADF")
    widget.table.item(row, 1).setText("6")
    widget.table.item(row, 2).setText("12")
    det = widget.specs["ADF"].detector
    assert (det.inner, det.outer) == pytest.approx((6.0, 12.0))
    c = widget.centre()
    ky, kx = np.mgrid[:32, :32]
    r = np.hypot(ky - c[0], kx - c[1])
    expected = data.astype(np.float64)[:, :, (r >= 6) & (r < 12)].sum(-1)
    layer_name = image_layer_name("ADF", "tiny")
    qtbot.waitUntil(
        lambda: layer_name in viewer.layers
        and np.allclose(viewer.layers[layer_name].data, expected, rtol=1e-5),
        timeout=60000,
    )
    assert viewer.layers[layer_name].metadata["role"] == "adf"


def test_learned_mask_as_custom_detector(make_napari_viewer, qtbot):
    from napari_4dstem_ml.models import LinearConfig
    from napari_4dstem_ml.training.loop import TrainConfig, run_training
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget, image_layer_name
    from napari_4dstem_ml.widgets.session import SessionModel

    syn = _synthetic((16, 16))
    res = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3),
                       train_config=TrainConfig(epochs=1))
    viewer = make_napari_viewer()
    widget = DetectorsWidget(viewer)
    s = widget.session
    s.add_dataset("d", syn.dataset)
    s.add_model(SessionModel("lin", "linear", res.model, res.model_config, res.preprocessor))
    widget._refresh_custom_choices()
    items = [widget.custom_box.itemText(i) for i in range(widget.custom_box.count())]
    assert "learned mask: lin" in items
    name, mask = widget.custom_mask("learned mask: lin")
    assert mask.shape == syn.dataset.detector_shape  # on the raw detector, not the model grid
    widget.add_custom(name, mask)
    layer_name = image_layer_name(name, "d")
    expected = np.einsum("yxij,ij->yx", syn.dataset.data.astype(np.float64), mask)
    qtbot.waitUntil(lambda: layer_name in viewer.layers, timeout=60000)
    np.testing.assert_allclose(viewer.layers[layer_name].data, expected, rtol=1e-4, atol=1e-3)
    # with the offset and the cluster weights it is the model's own reconstruction
    pre = res.preprocessor.adapt(syn.dataset)
    _, offset = pre.raw_readout(res.model.detector_mask())
    from scipy.ndimage import correlate

    v = np.pad(expected + offset, 1, mode="reflect")
    out = correlate(v, res.model.cluster_weights().astype(np.float64), mode="constant")[1:-1, 1:-1]
    out = pre.model_to_label(out + float(res.model.bias.detach()))
    from napari_4dstem_ml.predict import predict

    np.testing.assert_allclose(out, predict(res.model, res.preprocessor, syn.dataset),
                               rtol=1e-3, atol=1e-3 * float(np.ptp(out)))


def _fake_samples(monkeypatch):
    from pathlib import Path

    from napari_4dstem_ml import samples

    def fake(key):
        rng = np.random.default_rng(0 if key == "mos2" else 1)
        step, det, k = (0.24, 0.84, 24) if key == "mos2" else (0.41, 0.82, 16)
        data = rng.random((8, 8, k, k), dtype=np.float32)
        cal = Calibration(scan_step=(step, step), detector_pixel=(det, det),
                          energy_ev=80e3, convergence_mrad=3.0 if key == "mos2" else 2.5)
        return samples.SampleData(
            key=key, path=Path(f"{key}.h5"), dataset=Dataset4D(data, cal, reader="fake"),
            label=rng.random((12, 12), dtype=np.float32), label_pixel_size_A=0.1,
            label_origin_A=(0.0, 0.0), label_method="ptychography",
            ground_truth=rng.random((8, 8), dtype=np.float32),
            adf=rng.random((8, 8), dtype=np.float32), adf_inner_mrad=30.0, adf_outer_mrad=80.0,
        )

    monkeypatch.setattr(samples, "load_sample", fake)


def test_opening_prsco3_after_mos2_rescales_everything(make_napari_viewer, qtbot, monkeypatch):
    from napari_4dstem_ml.widgets.detectors import SHAPES_LAYER, DetectorsWidget
    from napari_4dstem_ml.widgets.session import MEAN_LAYER, PATTERN_LAYER, session_for
    from napari_4dstem_ml.widgets.training import TrainingWidget

    _fake_samples(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-4dstem-ml", "mos2")
    s = session_for(viewer)
    qtbot.waitUntil(lambda: s.current is not None, timeout=30000)
    det = DetectorsWidget(viewer)
    training = TrainingWidget(viewer)
    det.com_box.setChecked(True)
    det.add_presets()
    mos2 = s.current
    qtbot.waitUntil(lambda: f"iCoM: {mos2}" in viewer.layers, timeout=60000)
    adf_mrad = det.specs["ADF"].detector.outer * 0.84
    viewer.open_sample("napari-4dstem-ml", "prsco3")
    qtbot.waitUntil(lambda: s.current != mos2, timeout=30000)
    prsco3 = s.current
    qtbot.waitUntil(
        lambda: f"iCoM: {prsco3}" in viewer.layers and f"navigation: {prsco3}" in viewer.layers
        and MEAN_LAYER in s.diffraction.layers
        and s.diffraction.layers[MEAN_LAYER].metadata.get("dataset") == prsco3,
        timeout=60000,
    )
    derived = [layer for layer in viewer.layers if layer.metadata.get("dataset") == prsco3
               and not layer.metadata.get("own_grid")]
    assert len(derived) >= 6  # ground truth, ADF, navigation, virtual images, CoM, iCoM
    for layer in derived:
        np.testing.assert_allclose(layer.scale, (0.41, 0.41), err_msg=layer.name)
    for layer in viewer.layers:
        if layer.metadata.get("dataset") == mos2 and not layer.metadata.get("own_grid"):
            np.testing.assert_allclose(layer.scale, (0.24, 0.24), err_msg=layer.name)
    np.testing.assert_allclose(viewer.layers["scan position"].scale, (0.41, 0.41))
    for name in (PATTERN_LAYER, MEAN_LAYER, SHAPES_LAYER):
        np.testing.assert_allclose(s.diffraction.layers[name].scale, (0.82, 0.82), err_msg=name)
    # the convergence angle follows the data set; detectors keep their size in mrad
    assert det.alpha.value() == pytest.approx(2.5)
    assert det.specs["ADF"].detector.outer * 0.82 == pytest.approx(min(adf_mrad, 8.0 * 0.82))
    assert det.centre() == (7.5, 7.5)
    # the training widget offers the PrScO3 label (never its ground truth) for PrScO3
    training.dataset_box.setCurrentText(prsco3)
    assert training.label_box.currentText().startswith("PrScO3 thick cross-section label")


def test_label_defaults_to_ptychographic_label(make_napari_viewer, qtbot, monkeypatch):
    from napari_4dstem_ml.widgets.session import session_for
    from napari_4dstem_ml.widgets.training import TrainingWidget

    _fake_samples(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-4dstem-ml", "mos2")
    s = session_for(viewer)
    qtbot.waitUntil(lambda: s.current is not None, timeout=30000)
    widget = TrainingWidget(viewer)
    # the ground truth is the first 2D layer, but the label box picks the label
    images = [layer.name for layer in viewer.layers if layer.__class__.__name__ == "Image"]
    assert images[0].endswith("ground truth")
    assert widget.label_box.currentText().endswith("label (ptychography)")


def test_settings_round_trip(make_napari_viewer, monkeypatch, tmp_path):
    from napari_4dstem_ml.widgets import settings
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.training import TrainingWidget

    assert settings.Settings().path is None  # off under pytest unless a file is named
    path = tmp_path / "settings.json"
    monkeypatch.setenv(settings.ENV_VAR, str(path))
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    browser = BrowserWidget(viewer)
    widget.kind_box.setCurrentText("conv4d")
    widget.epochs.setValue(7)
    widget.lr.setValue(0.004)
    widget.cluster.setValue(7)
    browser.mode_box.setCurrentText("power")
    browser.exponent.setValue(0.4)
    assert path.is_file()
    viewer.close()

    viewer2 = make_napari_viewer()
    w2 = TrainingWidget(viewer2)
    b2 = BrowserWidget(viewer2)
    assert w2.kind_box.currentText() == "conv4d"
    assert (w2.epochs.value(), w2.lr.value(), w2.cluster.value()) == (7, 0.004, 7)
    assert b2.mode_box.currentText() == "power" and b2.exponent.value() == pytest.approx(0.4)
    # the linear model keeps its own defaults
    from napari_4dstem_ml.widgets.training import DEFAULTS

    w2.kind_box.setCurrentText("linear")
    assert w2.epochs.value() == DEFAULTS[w2._start_key()][0]
    w2.kind_box.setCurrentText("conv4d")
    assert w2.epochs.value() == 7
    assert not math.isnan(w2.lr.value())


def test_a_new_rectangle_replaces_only_its_own_region(make_napari_viewer, qtbot):
    """A rectangle drawn in the validation region's layer replaces the old validation region
    (and the dock says so); one drawn in any other layer never becomes a region."""
    from napari_4dstem_ml.widgets.regions import corners_of, split_for

    syn = _synthetic((16, 16))
    viewer = make_napari_viewer()
    widget = _training_widget(viewer, syn)
    layers = widget.show_regions()
    default = split_for(widget.session, "train")
    assert (default.train, default.val) == ((0, 8, 0, 16), (8, 16, 0, 16))
    other = viewer.add_shapes(name="my drawing")
    other.add_rectangles([corners_of((0, 4, 0, 4))])
    qtbot.wait(50)
    split = split_for(widget.session, "train")
    assert (split.train, split.val) == (default.train, default.val)
    layers["validation"].add_rectangles([corners_of((10, 16, 4, 12))])
    qtbot.waitUntil(lambda: len(layers["validation"].data) == 1, timeout=5000)
    split = split_for(widget.session, "train")
    assert split.val == (10, 16, 4, 12) and split.train == (0, 8, 0, 16)
    assert "validation region" in widget.readout.text()
    assert "validate 48 positions" in widget.regions_label.text()


def test_compare_says_what_the_reference_is(make_napari_viewer, qtbot):
    """A label that is a low-passed simulated potential (PrScO3's) is called that in the
    table and the status line, not 'ptychography'; the sample's layer name says it too."""
    from napari_4dstem_ml.widgets.compare import CompareWidget
    from napari_4dstem_ml.widgets.naming import label_kind, label_title
    from napari_4dstem_ml.widgets.session import session_for

    prsco3 = ("exact object phase sigma * projected potential of the static lattice, Gaussian "
              "low-pass with 10% transfer at 0.4 A, on its own 0.1 A grid")
    assert label_kind(prsco3) == "low-passed potential"
    assert label_kind("py4DSTEM 0.14.18 ptychography: single-slice") == "ptychography"
    assert label_title(None) == "label"
    syn = _synthetic((32, 32))
    viewer = make_napari_viewer()
    s = session_for(viewer)
    s.add_dataset("d", syn.dataset)
    rng = np.random.default_rng(0)
    s.show_scan_image("ADF", np.asarray(syn.label + rng.normal(0, 0.3, syn.label.shape),
                                        np.float32), dataset="d", role="adf")
    s.show_scan_image("the label", np.asarray(syn.label, np.float32), dataset="d",
                      role="label", metadata={"label_method": prsco3})
    widget = CompareWidget(viewer)
    widget.dataset_box.setCurrentText("d")
    widget.compare()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert widget.table_result.reference == "the label"
    assert "(label (low-passed potential))" in widget.status.text()
    assert "ptychography" not in widget.status.text()
