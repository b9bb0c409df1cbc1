"""The window on a real screen (issue 19): at 1366 × 768 and 1920 × 1080 every control of the
plugin's docks can be reached without floating or resizing a dock, napari's canvas keeps at least
45 % of the width and half the height, and the window's minimum size fits the screen.

Each screen size is a fresh X server (``xvfb-run``) running this file as a script: ``make run``'s
window (:func:`napari_4dstem_ml.widgets.launcher.open_gui` with the MoS2 sample), plus the Live
and Train-from-simulation docks opened the way the Plugins menu opens them. Every dock is raised
in turn and every visible, enabled control in it is checked: it lies on the screen and is not
clipped, or it lies in a scroll area whose viewport is on the screen (so it can be scrolled to).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

#: the smallest scroll-area viewport that counts as usable (px)
MIN_VIEWPORT = 40
#: napari's canvas: at least this fraction of the window's width and height
MIN_CANVAS_WIDTH, MIN_CANVAS_HEIGHT = 0.45, 0.5
CONTROL_TYPES = ("QAbstractButton", "QAbstractSpinBox", "QComboBox", "QLineEdit",
                 "QAbstractSlider", "QAbstractItemView", "QPlainTextEdit")


def unreachable_controls(dock, screen_rect) -> list[str]:
    """The visible, enabled controls of ``dock`` that the user cannot reach on a screen of
    ``screen_rect`` (global coordinates): off the screen or clipped, and not in a scroll area
    whose viewport is on the screen. A description per control."""
    from qtpy import QtWidgets
    from qtpy.QtCore import QPoint, QRect

    types = tuple(getattr(QtWidgets, t) for t in CONTROL_TYPES)

    def global_rect(w) -> QRect:
        return QRect(w.mapToGlobal(QPoint(0, 0)), w.size())

    def scroll_parent(w):
        p = w.parentWidget()
        while p is not None and p is not dock:
            # only what scrolls in it: a table's header is not in its viewport
            if isinstance(p, QtWidgets.QAbstractScrollArea) and p.viewport().isAncestorOf(w):
                return p
            p = p.parentWidget()
        return None

    def unclipped(w) -> QRect:
        """The part of ``w`` inside all its parents (global coordinates)."""
        r, p = global_rect(w), w.parentWidget()
        while p is not None:
            r = r.intersected(global_rect(p))
            p = p.parentWidget()
        return r

    def reachable(w) -> bool:
        area = scroll_parent(w)
        if area is None:
            r, seen = global_rect(w), unclipped(w)
            return (screen_rect.contains(r) and seen.height() >= 0.9 * w.height()
                    and seen.width() >= 0.9 * w.width())
        vp = area.viewport()
        return (screen_rect.contains(global_rect(vp)) and vp.height() >= MIN_VIEWPORT
                and vp.width() >= MIN_VIEWPORT and reachable(area))

    bad = []
    for w in dock.findChildren(QtWidgets.QWidget):
        if isinstance(w, QtWidgets.QScrollBar):  # part of its scroll area, checked with it
            continue
        if isinstance(w, types) and w.isVisible() and w.isEnabled() and not reachable(w):
            text = w.text() if hasattr(w, "text") and callable(w.text) else ""
            bad.append(f"{dock.windowTitle()}: {type(w).__name__} {text!r} at "
                       f"{global_rect(w).getRect()}")
    return bad


def probe(width: int, height: int) -> dict:
    """Open ``make run``'s window on this (``width`` × ``height``) screen, walk every dock."""
    os.environ.setdefault("NAPARI_4DSTEM_ML_SETTINGS", "off")
    import time

    from qtpy.QtWidgets import QApplication, QDockWidget, QTabBar

    from napari_4dstem_ml.widgets.launcher import open_gui
    from napari_4dstem_ml.widgets.layout import plugin_docks
    from napari_4dstem_ml.widgets.session import MEAN_LAYER, session_for

    viewer = open_gui()
    app = QApplication.instance()

    def settle(cond=lambda: True, timeout=120.0):
        t0 = time.time()
        while not cond() and time.time() - t0 < timeout:
            app.processEvents()
            time.sleep(0.02)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)

    s = session_for(viewer)
    settle(lambda: s.current is not None and MEAN_LAYER in s.diffraction.layers)
    # the other docks as the Plugins menu opens them
    for name in ("Live reconstruction", "Train from simulation"):
        viewer.window.add_plugin_dock_widget("napari-4dstem-ml", name)
    settle()
    win = viewer.window._qt_window
    screen = app.primaryScreen().availableGeometry()
    canvas = viewer.window._qt_viewer.canvas.native
    out = {
        "screen": [screen.width(), screen.height()],
        "window": list(win.geometry().getRect()),
        "window_min": [win.minimumSizeHint().width(), win.minimumSizeHint().height()],
        "canvas": [canvas.width(), canvas.height()],
        "floating": [d.windowTitle() for d in win.findChildren(QDockWidget) if d.isFloating()],
        "unreachable": [],
        "sideways": [],  # docks whose form is wider than the dock (scrolls sideways)
        "docks": [],
    }
    browser = next(d for d in plugin_docks(win) if getattr(d.widget(), "ON_TOP", False))
    browser.widget().layer_panel.expand(animate=False)  # the diffraction layers shown too
    for dock in plugin_docks(win):  # and the folded training settings
        panel = getattr(dock.widget(), "settings_panel", None)
        if panel is not None:
            panel.expand(animate=False)
    for dock in plugin_docks(win):
        dock.raise_()
        settle()
        out["docks"].append(dock.windowTitle())
        out["unreachable"] += unreachable_controls(dock, screen)
        area = getattr(dock.widget(), "scroll_area", None)
        if area is not None and area.horizontalScrollBar().isVisible():
            out["sideways"].append(dock.windowTitle())
    for bar in win.findChildren(QTabBar):
        if bar.isVisible() and not screen.contains(bar.geometry().translated(
                bar.mapToGlobal(bar.rect().topLeft()) - bar.geometry().topLeft())):
            out["unreachable"].append(f"tab bar {[bar.tabText(i) for i in range(bar.count())]}")
    viewer.close()
    return out


def _run_probe(width: int, height: int) -> dict:
    if shutil.which("xvfb-run") is None:
        pytest.skip("needs xvfb-run (the xvfb package) to start a screen of a given size")
    env = {**os.environ, "NAPARI_4DSTEM_ML_SETTINGS": "off"}
    env.pop("DISPLAY", None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {width}x{height}x24", sys.executable,
           __file__, "--probe", str(width), str(height)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads(lines[-1])


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_every_control_reachable_and_canvas_large(size):
    r = _run_probe(*size)
    sw, sh = r["screen"]
    assert (sw, sh) == size
    assert r["unreachable"] == [], "\n".join(r["unreachable"])
    assert not r["floating"]
    assert r["sideways"] == []  # every form fits the dock's width
    x, y, w, h = r["window"]
    assert (w, h) == (sw, sh), r["window"]  # fills the screen, as maximised
    assert r["window_min"][0] <= sw and r["window_min"][1] <= sh, r["window_min"]
    cw, ch = r["canvas"]
    assert cw >= MIN_CANVAS_WIDTH * w, (cw, w)
    assert ch >= MIN_CANVAS_HEIGHT * h, (ch, h)
    # all the plugin's docks are there, none floating: the Plugins menu's two joined the tabs
    assert {"4D-STEM browser", "Calibration", "Detectors", "Train", "Compare", "Live",
            "Simulate"} <= set(r["docks"])


def test_walker_finds_a_control_off_the_screen(qtbot):
    """The check itself: a button below the screen's edge is reported; the same button in a
    scroll area on the screen is not."""
    from qtpy.QtCore import QRect, Qt
    from qtpy.QtWidgets import QDockWidget, QMainWindow, QPushButton, QVBoxLayout, QWidget

    from napari_4dstem_ml.widgets.layout import scrolling_layout

    def window(scroll: bool):
        win = QMainWindow()
        inner = QWidget()
        layout = scrolling_layout(inner) if scroll else QVBoxLayout(inner)
        spacer = QWidget()
        spacer.setFixedHeight(900)
        layout.addWidget(spacer)
        button = QPushButton("far down")
        layout.addWidget(button)
        dock = QDockWidget("test dock")
        dock.setWidget(inner)
        win.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        win.setCentralWidget(QWidget())
        qtbot.addWidget(win)
        win.setGeometry(0, 0, 500, 1100 if not scroll else 400)
        win.show()
        qtbot.waitExposed(win)
        return win, dock

    screen = QRect(0, 0, 1366, 768)
    win, dock = window(scroll=False)
    bad = unreachable_controls(dock, screen)
    assert len(bad) == 1 and "far down" in bad[0]
    win2, dock2 = window(scroll=True)
    assert unreachable_controls(dock2, screen) == []


if __name__ == "__main__" and "--probe" in sys.argv:
    i = sys.argv.index("--probe")
    print(json.dumps(probe(int(sys.argv[i + 1]), int(sys.argv[i + 2]))), flush=True)
