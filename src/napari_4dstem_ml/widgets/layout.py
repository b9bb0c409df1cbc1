"""Where the plugin's docks sit in napari's window, so that a 1366 × 768 laptop screen holds them.

- Every dock's form lives in a scroll area (:func:`scrolling_layout`): a dock can be as short
  as the screen makes it and every control stays reachable.
- The 4D-STEM browser (the diffraction view) sits on top of the right dock area; every other
  dock of the plugin joins one tab group below it (:func:`settle`, also for docks opened later
  from the Plugins menu), with a short tab title (no ``&``: Qt would read it as a mnemonic).
- :func:`fit_window` gives the window the screen's available area and splits it: napari's
  layer list and controls on the left, the plugin's docks on the right, and napari's canvas at
  least :data:`MIN_CANVAS_FRACTION` of the width in between.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

#: napari's canvas keeps at least this fraction of the window's width (the layout aims a
#: little higher, :data:`CANVAS_FRACTION`)
MIN_CANVAS_FRACTION = 0.45
CANVAS_FRACTION = 0.46
#: the plugin's docks (right) and napari's layer list/controls (left) as fractions of the
#: width, within these limits (px)
RIGHT_FRACTION, RIGHT_PX = 0.30, (380, 620)
LEFT_FRACTION, LEFT_PX = 0.17, (220, 320)
#: the browser (top of the right area) gets this fraction of the docks' height
BROWSER_FRACTION = 0.46
#: room taken by a dock separator and the canvas frame (px)
SEPARATOR_PX = 14
#: object name of every plugin dock's scroll area
SCROLL_NAME = "napari_4dstem_ml_scroll"


def scrolling_layout(owner: QWidget) -> QVBoxLayout:
    """A vertical layout inside a frameless scroll area that fills ``owner`` (returned to be
    filled with the form). The area scrolls vertically, and horizontally only when the dock is
    narrower than the form's minimum width."""
    area = QScrollArea(owner)
    area.setObjectName(SCROLL_NAME)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    body = QWidget()
    area.setWidget(body)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    owner.scroll_area = area
    return QVBoxLayout(body)


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget`` (``None`` when it is not docked)."""
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def plugin_docks(window: QMainWindow) -> list[QDockWidget]:
    """The main window's docks that hold one of this plugin's widgets (``TAB_TITLE`` set)."""
    out = []
    for dock in window.findChildren(QDockWidget):
        inner = dock.widget()
        if inner is not None and getattr(inner, "TAB_TITLE", None):
            out.append(dock)
    return out


def settle(widget: QWidget) -> None:
    """Once docked (next event-loop turn): a short tab title, and — unless it is the browser
    or already in a tab group — a tab beside the plugin's other docks in the same area."""
    QTimer.singleShot(0, lambda: _settle(widget))


def _settle(widget: QWidget) -> None:
    try:
        dock = dock_of(widget)
    except RuntimeError:  # deleted before the timer fired
        return
    if dock is None:
        return
    dock.setWindowTitle(widget.TAB_TITLE)
    window = dock.parentWidget()
    if not isinstance(window, QMainWindow) or dock.isFloating() or getattr(widget, "ON_TOP", False):
        return
    if window.tabifiedDockWidgets(dock):
        return
    area = window.dockWidgetArea(dock)
    others = [d for d in plugin_docks(window)
              if d is not dock and not getattr(d.widget(), "ON_TOP", False)
              and not d.isFloating() and window.dockWidgetArea(d) == area and d.isVisible()]
    if others:
        window.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()


def fit_window(viewer, screen=None) -> None:
    """Give the main window the screen's available area (as maximised) and split it: napari's
    layer list/controls left, the plugin's docks right, the browser on top of them."""
    window = viewer.window._qt_window
    app = QApplication.instance()
    screen = screen or window.screen() or app.primaryScreen()
    geo = screen.availableGeometry()
    window.setGeometry(geo)
    window.showMaximized()  # with a window manager; under a bare X server the geometry stays
    app.processEvents()
    split_docks(window)
    size = window.size()

    def again():  # a window manager maximises asynchronously: split again once it has
        try:
            if window.isVisible() and window.size() != size:
                split_docks(window)
        except RuntimeError:  # the window has gone meanwhile
            pass

    QTimer.singleShot(400, again)


def split_docks(window: QMainWindow) -> None:
    """Widths of the dock columns and the browser's height for the window's present size."""
    app = QApplication.instance()
    width = window.width()
    left = int(min(max(LEFT_FRACTION * width, LEFT_PX[0]), LEFT_PX[1]))
    docks = [d for d in plugin_docks(window) if not d.isFloating()]
    napari_docks = [d for d in window.findChildren(QDockWidget)
                    if d not in docks and d.isVisible() and not d.isFloating()
                    and window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea]
    if napari_docks:
        window.resizeDocks(napari_docks, [left] * len(napari_docks), Qt.Orientation.Horizontal)
        app.processEvents()
        left = max(d.width() for d in napari_docks)  # napari's controls have a minimum
    right = int(min(max(RIGHT_FRACTION * width, RIGHT_PX[0]), RIGHT_PX[1]))
    right = min(right, int((1 - CANVAS_FRACTION) * width) - left - 2 * SEPARATOR_PX)
    if docks:
        window.resizeDocks(docks, [right] * len(docks), Qt.Orientation.Horizontal)
        top = [d for d in docks if getattr(d.widget(), "ON_TOP", False)]
        below = [d for d in docks if d not in top and d.isVisible()]
        if top and below:
            height = window.centralWidget().height()
            h_top = int(BROWSER_FRACTION * height)
            window.resizeDocks([top[0], below[0]], [h_top, height - h_top],
                               Qt.Orientation.Vertical)
    app.processEvents()


def tab_group(window: QMainWindow, docks: list[QDockWidget]) -> None:
    """Stack ``docks`` (all in one dock area) as one tab group, tabs in this order. (Qt puts
    the second dock of a new group first, and a later one right after the dock named.)"""
    if len(docks) < 2:
        return
    window.tabifyDockWidget(docks[-1], docks[0])
    for before, dock in zip(docks[:-2], docks[1:-1]):
        window.tabifyDockWidget(before, dock)
