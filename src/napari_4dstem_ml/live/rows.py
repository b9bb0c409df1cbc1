"""What every live source is: scan rows in order, and how an acquisition can end early.

A source (:class:`RowSource`: the EMPAD follower of :mod:`.source`, the Merlin stream of
:mod:`.merlin`) yields ``(y0, y1, block)`` with ``block`` the patterns ``(y1 - y0, Nx, ky, kx)``
of the scan rows that became complete, in scan order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from ..dataset import Calibration

__all__ = ["AcquisitionRestarted", "AcquisitionStalled", "RowSource"]


class AcquisitionStalled(TimeoutError):
    """No new data for longer than the timeout; ``rows_done`` complete rows had arrived."""

    def __init__(self, message: str, rows_done: int) -> None:
        super().__init__(message)
        self.rows_done = rows_done


class AcquisitionRestarted(AcquisitionStalled):
    """The followed file shrank, was replaced, or its frames changed: a new acquisition into
    the same name. The rows read before belong to the first one (``rows_done``)."""


class RowSource(Protocol):
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    calibration: Calibration
    name: str

    def rows(self) -> Iterator[tuple[int, int, np.ndarray]]: ...
