"""Regenerate the GUI screenshots in docs/images (needs a display; use xvfb-run).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/screenshots.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).parent


def wait(qapp, cond, timeout_s=120.0):
    import time

    t0 = time.time()
    while not cond():
        qapp.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("condition not met")
    for _ in range(20):
        qapp.processEvents()


def shot(viewer, qapp, name):
    for _ in range(20):
        qapp.processEvents()
    path = HERE / name
    img = viewer.screenshot(canvas_only=False)
    from PIL import Image

    Image.fromarray(img).convert("RGB").save(path, optimize=True)
    print(path, path.stat().st_size // 1024, "KB")


def main():
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
    s.set_position(*(np.array(s.dataset.scan_shape) // 3))
    viewer.reset_view()
    s.diffraction.reset_view()
    docks = viewer.window.dock_widgets
    # browser alone first
    for name, dock in docks.items():
        if "Virtual detectors" in name or "Train" in name:
            dock.parent().hide() if hasattr(dock, "parent") else None
    shot(viewer, qapp, "browser.png")

    det = next(w for w in docks.values() if isinstance(w, DetectorsWidget))
    det.parent().show()
    det.auto_centre()
    det.add_presets()
    wait(qapp, lambda: "virtual ADF" in viewer.layers and det.worker is None)
    for layer in viewer.layers:
        layer.visible = layer.name in ("virtual ADF", "scan position")
    viewer.reset_view()
    shot(viewer, qapp, "detectors.png")

    tr = next(w for w in docks.values() if isinstance(w, TrainingWidget))
    tr.parent().show()
    det.parent().hide()
    label = next(layer.name for layer in viewer.layers if "label (" in layer.name)
    tr.label_box.setCurrentText(label)
    tr.epochs.setValue(15)
    tr.start()
    wait(qapp, lambda: tr.worker is None, timeout_s=600)
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("reconstruction") or layer.name == "scan position"
    viewer.reset_view()
    shot(viewer, qapp, "training.png")
    viewer.close()


if __name__ == "__main__":
    main()
