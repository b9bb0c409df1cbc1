"""What a reconstruction yields and returns: progress events, the result, the garbage error."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Message", "PredictEvent", "PredictionError", "Reconstruction", "finish"]


@dataclass(frozen=True)
class Message:
    """A line of text for the user (a job's notes and warnings, between its progress events);
    ``level``: ``"warning"`` (show it) or ``"info"`` (a quiet note: log it)."""

    text: str
    level: str = "warning"


class PredictionError(ValueError):
    """A prediction that is NaN/inf or zero everywhere: garbage, never returned."""


@dataclass(frozen=True)
class PredictEvent:
    """Progress: ``rows_done`` of ``rows_total`` scan rows are in ``image``.

    ``image`` is the ``(Ny, Nx)`` float32 result being filled in place (NaN where not yet
    predicted, label units); copy it to keep a snapshot. ``uncertainty``: for an ensemble,
    the members' standard deviation (label units), filled the same way.
    """

    rows_done: int
    rows_total: int
    image: np.ndarray
    elapsed_s: float
    uncertainty: np.ndarray | None = None
    #: the scan rows new in this event (``image[y0:y1]``; bands may finish out of order on a
    #: cluster): ``None`` when not known (rows ``0:rows_done`` are then done)
    rows: tuple[int, int] | None = None

    @property
    def fraction(self) -> float:
        return self.rows_done / max(1, self.rows_total)


@dataclass
class Reconstruction:
    """A model's image of a data set: ``image`` ``(Ny, Nx)`` float32 in label units and, for
    an ensemble, ``uncertainty`` (the members' per-pixel standard deviation, label units)."""

    image: np.ndarray
    uncertainty: np.ndarray | None = None


def finish(gen: Generator[Any, None, Any], on_event: Callable[[Any], None] | None = None) -> Any:
    """Run a job's generator to the end and return its value; ``on_event`` sees each event."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
