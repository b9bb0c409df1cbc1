"""Regenerate the README's screenshots of the real window (needs a display; use xvfb-run).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/screenshots.py

Walks through the workflow on the shipped samples, as a user would: the browser, virtual
detectors, training the linear model and the 4D CNN (loss curves, learned views), a saved
checkpoint opened onto napari and applied to PrScO3, and the comparison grid with its table.
Settings are off (``NAPARI_4DSTEM_ML_SETTINGS=off``); the checkpoint goes to a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NAPARI_4DSTEM_ML_SETTINGS", "off")

HERE = Path(__file__).parent


def wait(qapp, cond, timeout_s=600.0):
    t0 = time.time()
    while not cond():
        qapp.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("condition not met")
    for _ in range(20):
        qapp.processEvents()
        time.sleep(0.01)


def shot(viewer, qapp, name):
    """Save the whole window, as a 256-colour PNG (small, and still exact for UI colours)."""
    from PIL import Image

    for _ in range(30):
        qapp.processEvents()
        time.sleep(0.01)
    path = HERE / name
    img = Image.fromarray(viewer.screenshot(canvas_only=False)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    print(path, path.stat().st_size // 1024, "kB", flush=True)


def main():
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_ml.widgets.compare import CompareWidget
    from napari_4dstem_ml.widgets.detectors import DetectorsWidget
    from napari_4dstem_ml.widgets.launcher import open_gui
    from napari_4dstem_ml.widgets.session import MEAN_LAYER, session_for
    from napari_4dstem_ml.widgets.training import TrainingWidget

    viewer = open_gui()
    qapp = QApplication.instance()
    win = viewer.window._qt_window
    win.show()
    win.resize(1560, 960)
    s = session_for(viewer)
    wait(qapp, lambda: s.current is not None and MEAN_LAYER in s.diffraction.layers)
    mos2 = s.current
    docks = viewer.window.dock_widgets

    def widget(cls):
        return next(w for w in docks.values() if isinstance(w, cls))

    def raise_dock(w):
        w.parent().raise_()
        qapp.processEvents()

    det, tr, cmp_ = widget(DetectorsWidget), widget(TrainingWidget), widget(CompareWidget)

    def show_only(*names):
        """Only these layers, fitted to the view (the label's larger grid left out)."""
        from napari_4dstem_ml.widgets.session import camera

        for layer in viewer.layers:
            layer.visible = layer.name in names
        shown = [layer for layer in viewer.layers if layer.visible and layer.ndim == 2
                 and layer.__class__.__name__ == "Image"]
        lo = np.min([layer.extent.world[0][-2:] for layer in shown], axis=0)
        hi = np.max([layer.extent.world[1][-2:] for layer in shown], axis=0)
        cam = camera(viewer)
        cam.center = tuple((lo + hi) / 2)
        cam.zoom = 0.9 * float(np.min(np.asarray(viewer.canvas.size) / (hi - lo)))

    # 1. browser: navigation image, diffraction pattern at the cross-hair, whole detector
    s.set_position(*(np.array(s.dataset.scan_shape) // 3))
    show_only(f"navigation: {mos2}", "scan position")
    raise_dock(det)
    shot(viewer, qapp, "browser.png")

    # 2. detectors: presets (HAADF reported: beyond this detector's edge), ADF image, iCoM
    det.auto_centre()
    det.com_box.setChecked(True)
    det.add_presets()
    wait(qapp, lambda: f"iCoM: {mos2}" in viewer.layers and det.worker is None
         and not det._timer.isActive())
    show_only(f"virtual ADF: {mos2}", "scan position")
    shot(viewer, qapp, "detectors.png")

    # 3. training: the linear model (solved by least squares), then the 4D CNN
    raise_dock(tr)
    tr.kind_box.setCurrentText("linear")
    tr.show_regions()
    tr.start()
    wait(qapp, lambda: tr.worker is None)
    show_only(tr.run_name, "training regions", "scan position")
    lin = tr.run_name
    shot(viewer, qapp, "training_linear.png")
    tr.kind_box.setCurrentText("conv4d")
    tr.epochs.setValue(10)
    tr.start()
    wait(qapp, lambda: len(tr.history) >= 5)  # mid-run: progress bar, curves streaming
    show_only(tr.run_name, "scan position")
    shot(viewer, qapp, "training_cnn.png")
    wait(qapp, lambda: tr.worker is None)
    cnn = tr.run_name

    # 4. models: the CNN saved, then opened onto napari like a dropped file, applied to PrScO3
    tmp = Path(tempfile.mkdtemp())
    path = tr.save(tmp / "mos2_cnn.pt", cnn)
    viewer.open_sample("napari-4dstem-ml", "prsco3")
    wait(qapp, lambda: s.current != mos2)
    prsco3 = s.current
    viewer.open(str(path), plugin="napari-4dstem-ml")
    tr.apply_box.setCurrentText(prsco3)
    tr.apply(prsco3, "mos2_cnn.pt")
    wait(qapp, lambda: tr.apply_worker is None)
    # the reconstruction beside its uncertainty (the ensemble's spread), the domain check's
    # notification (PrScO3 lies outside MoS2's training domain) still on screen
    recon = f"mos2_cnn.pt → {prsco3}"
    show_only(recon, f"uncertainty: {recon}")
    viewer.layers[f"uncertainty: {recon}"].visible = True
    viewer.grid.enabled = True
    shot(viewer, qapp, "models.png")
    viewer.grid.enabled = False

    # 5. compare on MoS2: ADF, iCoM, linear, CNN, label, ground truth with the metrics table
    s.set_current(mos2)
    wait(qapp, lambda: det.worker is None and not det._timer.isActive())
    raise_dock(cmp_)
    cmp_.dataset_box.setCurrentText(mos2)
    cmp_.compare()
    wait(qapp, lambda: cmp_.worker is None)
    viewer.layers.selection.active = viewer.layers[cnn]
    shot(viewer, qapp, "compare.png")
    print(cmp_.table_result.csv_text(), flush=True)
    cmp_.save_figure(tmp / "comparison.png")
    print("linear:", lin, "cnn:", cnn, flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
