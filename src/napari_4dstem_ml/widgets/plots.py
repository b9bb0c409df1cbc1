"""Small pyqtgraph plots for the docks: training/validation loss per epoch, learned weights.

pyqtgraph draws with Qt's own raster painter (no OpenGL), so a plot update costs little even
with software rendering; the plots are updated once per epoch, never per step.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QWidget

BACKGROUND = "#262930"  # napari's dark theme
TRAIN_PEN = pg.mkPen("#4fc3f7", width=2)
VAL_PEN = pg.mkPen("#ffb74d", width=2)


def _small_axes(plot: pg.PlotWidget) -> None:
    """Tick labels and axis titles small enough not to overprint each other in a dock."""
    from qtpy.QtGui import QFont

    font = QFont()
    font.setPointSizeF(7.5)
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setStyle(tickFont=font, tickTextOffset=3)
        axis.label.setFont(font)
    plot.getAxis("left").setWidth(44)


class LossCurves(pg.PlotWidget):
    """Training and validation loss against epoch (one point per epoch, log scale); epochs
    are counted from 1, as in the progress bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background=BACKGROUND)
        self.setMinimumHeight(140)
        _small_axes(self)
        self.setLabel("bottom", "epoch")
        self.setLabel("left", "loss")
        self.setToolTip("training and validation loss per epoch (mean squared error of the "
                        "standardised label; log scale)")
        self.getAxis("left").enableAutoSIPrefix(False)
        self.setLogMode(y=True)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.addLegend(offset=(-5, 5))
        self.setMenuEnabled(False)
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self._train_curve = self.plot([], [], pen=TRAIN_PEN, symbol="o", symbolSize=5,
                                      symbolBrush="#4fc3f7", name="train")
        self._val_curve = self.plot([], [], pen=VAL_PEN, symbol="o", symbolSize=5,
                                    symbolBrush="#ffb74d", name="validation")

    def clear_points(self) -> None:
        self.epochs, self.train, self.val = [], [], []
        self._redraw()

    def add_epoch(self, epoch: int, train_loss: float, val_loss: float) -> None:
        """Append one epoch's losses (non-finite or non-positive values are not drawn on the
        log axis but are kept in the lists)."""
        self.epochs.append(int(epoch))
        self.train.append(float(train_loss))
        self.val.append(float(val_loss))
        self._redraw()

    def _redraw(self) -> None:
        for curve, values in ((self._train_curve, self.train), (self._val_curve, self.val)):
            x = np.asarray(self.epochs, float)
            y = np.asarray(values, float)
            ok = np.isfinite(y) & (y > 0)
            curve.setData(x[ok], y[ok])
        first = min(self.epochs, default=1)
        last = max(max(self.epochs, default=1), first + 1)
        self.setXRange(first - 0.5, last + 0.5, padding=0)
        # whole epochs only, at most about eight labels
        major = max(1, int(np.ceil((last - first + 1) / 8)))
        self.getAxis("bottom").setTickSpacing(major, major)


class WeightsPlot(pg.PlotWidget):
    """A linear model's cluster weights w(|r|) against the distance |r| from the centre."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background=BACKGROUND)
        self.setMinimumHeight(140)
        self.setMaximumWidth(200)
        _small_axes(self)
        self.setLabel("bottom", "|r| (scan steps)")
        self.setLabel("left", "w(|r|)")
        self.showGrid(x=True, y=True, alpha=0.2)
        self.setMenuEnabled(False)
        self._points = self.plot([], [], pen=None, symbol="o", symbolSize=6,
                                 symbolBrush="#81c784")

    def set_weights(self, weights: np.ndarray) -> None:
        """``weights`` ``(K, K)``: each entry drawn at its distance from the centre."""
        w = np.asarray(weights, float)
        k = w.shape[0]
        yy, xx = np.mgrid[:k, :k] - k // 2
        self._points.setData(np.hypot(yy, xx).ravel(), w.ravel())
