"""Live reconstruction while the detector is still writing.

:mod:`.replay` writes an EMPAD acquisition in progress (XML first, then frames at a rate);
:mod:`.source` follows a growing EMPAD file (or a Merlin TCP stream, :mod:`.merlin`) and yields
whole scan rows as they complete (:mod:`.rows`: what every source is); :mod:`.pipeline` turns rows into growing images (navigation
image, virtual detectors, the model's reconstruction) with the same numerics as the offline
paths; :func:`run_live` drives them and writes the finished images.
"""

from .pipeline import LiveEvent, LivePipeline, LiveResult, iter_live, run_live
from .replay import replay
from .rows import AcquisitionRestarted, AcquisitionStalled, RowSource
from .source import EmpadFollower, open_source

__all__ = [
    "AcquisitionRestarted",
    "AcquisitionStalled",
    "EmpadFollower",
    "LiveEvent",
    "LivePipeline",
    "LiveResult",
    "RowSource",
    "replay",
    "iter_live",
    "open_source",
    "run_live",
]
