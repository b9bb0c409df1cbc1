"""Regenerate the README's screenshots of the real window (needs a display; use xvfb-run).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/screenshots.py
    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python docs/images/screenshots.py

The window fills the screen, as ``make run`` opens it; the shots of a 1366 × 768 screen get the
suffix ``_1366`` (``browser_1366.png``, …), those of larger screens none. Walks through the main
job on the shipped samples as a new user would, without floating or resizing a dock: the
browser, the calibration, virtual detectors, the regions, training the linear model and the 4D
CNN (loss curves, learned views), Compare (grid and table, exported as a figure), a saved
checkpoint opened onto napari and applied to PrScO3, and the Live dock following a replayed
acquisition with that model. Settings are off (``NAPARI_4DSTEM_ML_SETTINGS=off``); the
checkpoint, the exported figure and the replayed acquisition go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NAPARI_4DSTEM_ML_SETTINGS", "off")

HERE = Path(__file__).parent


def wait(qapp, cond, timeout_s=1800.0):
    t0 = time.time()
    while not cond():
        qapp.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("condition not met")
    for _ in range(20):
        qapp.processEvents()
        time.sleep(0.01)


def main():
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_ml.widgets.calibration import CalibrationWidget
    from napari_4dstem_ml.widgets.compare import CompareWidget
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget
    from napari_4dstem_ml.widgets.launcher import open_gui
    from napari_4dstem_ml.widgets.live import LiveWidget
    from napari_4dstem_ml.widgets.session import MEAN_LAYER, session_for
    from napari_4dstem_ml.widgets.training import TrainingWidget

    viewer = open_gui()
    qapp = QApplication.instance()
    win = viewer.window._qt_window
    screen = qapp.primaryScreen().geometry()
    suffix = "_1366" if screen.width() <= 1366 else ""
    print(f"window {win.width()} x {win.height()} on a {screen.width()} x {screen.height()} "
          "screen", flush=True)
    viewer.window.add_plugin_dock_widget("napari-4dstem-ml", "Live reconstruction")
    s = session_for(viewer)
    wait(qapp, lambda: s.current is not None and MEAN_LAYER in s.diffraction.layers)
    mos2 = s.current
    docks = viewer.window.dock_widgets

    def widget(cls):
        return next(w for w in docks.values() if isinstance(w, cls))

    def raise_dock(w):
        w.parent().raise_()
        qapp.processEvents()

    def shot(name):
        """The whole window, as a 256-colour PNG (small, still exact for the UI's colours)."""
        s.flush_deferred()
        for _ in range(30):
            qapp.processEvents()
            time.sleep(0.01)
        path = HERE / f"{name}{suffix}.png"
        img = Image.fromarray(viewer.screenshot(canvas_only=False)).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                     dither=Image.Dither.NONE).save(path, optimize=True)
        print(path, path.stat().st_size // 1024, "kB", flush=True)

    cal, det = widget(CalibrationWidget), widget(DetectorsWidget)
    tr, cmp_, live = widget(TrainingWidget), widget(CompareWidget), widget(LiveWidget)

    # 1. browser: navigation image, the pattern at the cross-hair; the calibration beside it
    s.set_position(*(np.array(s.dataset.scan_shape) // 3))
    raise_dock(cal)
    shot("browser")

    # 2. detectors: presets (HAADF reported: beyond this detector's edge), ADF image, iCoM
    raise_dock(det)
    det.auto_centre()
    wait(qapp, lambda: det.centre_button.isEnabled())
    det.com_box.setChecked(True)
    det.add_presets()
    wait(qapp, lambda: f"iCoM: {mos2}" in viewer.layers and det.worker is None
         and not det._timer.isActive())
    viewer.layers.selection.active = viewer.layers[f"virtual ADF: {mos2}"]
    for layer in s.group_layers(mos2):
        layer.visible = layer.name in (f"virtual ADF: {mos2}", "scan position")
    viewer.layers["scan position"].visible = True
    shot("detectors")

    # 3. training: the regions, the linear model (solved by least squares), then the 4D CNN
    raise_dock(tr)
    tr.kind_box.setCurrentText("linear")
    regions = tr.show_regions()
    tr.start()
    wait(qapp, lambda: tr.worker is None)
    lin = tr.run_name
    for layer in s.group_layers(mos2):
        layer.visible = layer.name in (lin, *(r.name for r in regions.values()))
    shot("training_linear")
    tr.kind_box.setCurrentText("conv4d")
    tr.epochs.setValue(10)
    tr.start()
    wait(qapp, lambda: len(tr.history) >= 5)  # mid-run: progress bar, curves streaming
    s.flush_deferred()
    for layer in s.group_layers(mos2):
        layer.visible = layer.name in (tr.run_name, "scan position")
    shot("training_cnn")
    wait(qapp, lambda: tr.worker is None)
    cnn = tr.run_name

    # 4. compare on MoS2: ADF, iCoM, linear, CNN, label, ground truth, the metrics table
    raise_dock(cmp_)
    cmp_.dataset_box.setCurrentText(mos2)
    cmp_.compare()
    wait(qapp, lambda: cmp_.worker is None)
    viewer.layers.selection.active = viewer.layers[cnn]
    shot("compare")
    print(cmp_.table_result.csv_text(), flush=True)
    tmp = Path(tempfile.mkdtemp())
    figure = cmp_.save_figure(tmp / "comparison.png")
    shutil.copy(figure, HERE / f"comparison_figure{suffix}.png")
    cmp_.exit_grid()

    # 5. models: the CNN saved, opened onto napari like a dropped file, applied to PrScO3
    raise_dock(tr)
    path = tr.save(tmp / "mos2_cnn.pt", cnn)
    viewer.open_sample("napari-4dstem-ml", "prsco3")
    wait(qapp, lambda: s.current != mos2 and MEAN_LAYER in s.diffraction.layers)
    prsco3 = s.current
    viewer.open(str(path), plugin="napari-4dstem-ml")  # the same model: selected, not added
    tr.apply_box.setCurrentText(prsco3)
    tr.apply(prsco3, tr.selected_model().name)
    wait(qapp, lambda: tr.apply_worker is None)
    recon = f"{tr.selected_model().name} → {prsco3}"
    for layer in viewer.layers:
        layer.visible = layer.name in (recon, f"uncertainty: {recon}")
    viewer.canvas.grid.enabled = True
    s.fit_view(prsco3)
    shot("models")
    viewer.canvas.grid.enabled = False

    # 6. live: a MoS2 acquisition replayed into a file, followed with the CNN
    from napari_4dstem_ml.live import replay
    from napari_4dstem_ml.samples import load_sample

    raise_dock(live)
    acq = tmp / "acquisition.raw"
    writer = threading.Thread(target=replay, args=(load_sample("mos2").dataset, acq, 600.0),
                              daemon=True)
    writer.start()
    wait(qapp, lambda: acq.with_suffix(".xml").exists())
    live.path.setText(str(acq))
    live.read_header()
    s.set_current(mos2)
    live.copy_from_dataset()  # the detector calibration the EMPAD XML does not state
    live.model_box.setCurrentText(tr.selected_model().name)
    live.start()
    wait(qapp, lambda: live.worker is None and not writer.is_alive())
    shot("live")
    viewer.close()


if __name__ == "__main__":
    main()
