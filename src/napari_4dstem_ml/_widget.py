"""npe2 widget entry points (the widgets themselves live in :mod:`napari_4dstem_ml.widgets`)."""

from __future__ import annotations

from .widgets.browser import BrowserWidget
from .widgets.calibration import CalibrationWidget
from .widgets.compare import CompareWidget
from .widgets.detectors import DetectorsWidget
from .widgets.live import LiveWidget
from .widgets.simtrain import SimTrainWidget
from .widgets.training import TrainingWidget

__all__ = ["BrowserWidget", "CalibrationWidget", "CompareWidget", "DetectorsWidget",
           "LiveWidget", "SimTrainWidget", "TrainingWidget"]
