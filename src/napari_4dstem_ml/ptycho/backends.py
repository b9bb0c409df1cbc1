"""Ptychography back ends behind one small interface, and the data they are given.

A back end turns :class:`PtychoData` (binned patterns on the scan grid with their
calibrations) and a :class:`~.config.PtychoConfig` into a :class:`Session` that runs one
iteration at a time (:meth:`Session.step`), gives the current object phase with the geometry
that places it on the scan, and saves/restores its whole state (resuming). The library is
imported only when a session starts: ``napari_4dstem_ml.ptycho`` imports without it.

Today's back end: ``"quantem"`` (:mod:`.quantem_backend`, the Ophus group's PyTorch package,
extra ``[ptycho]``). Why this one is in ``README.md`` (*Making the label*). The back ends are
found by name in :mod:`.registry` (``get_backend``); this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .config import PtychoConfig


class BackendUnavailableError(ImportError):
    """The back end's library is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class PtychoData:
    """What a back end reconstructs: ``patterns`` (scan_y, scan_x, ky, kx) float32 counts,
    already binned; ``scan_step_A``; ``detector_pixel_mrad`` of the binned patterns;
    ``energy_ev``; ``convergence_mrad`` (probe-forming aperture semi-angle α)."""

    patterns: np.ndarray
    scan_step_A: float
    detector_pixel_mrad: float
    energy_ev: float
    convergence_mrad: float

    @property
    def scan_shape(self) -> tuple[int, int]:
        return int(self.patterns.shape[0]), int(self.patterns.shape[1])


@dataclass(frozen=True)
class ObjectGeometry:
    """Where the object grid lies on the scan: object pixel ``pixel_size_A`` (Å, square);
    ``scan_to_pixel`` (2 × 3): object pixel (row, col) of scan position (iy, ix) is
    ``scan_to_pixel @ (iy, ix, 1)``; ``origin_A`` (y, x): position in Å of object pixel (0, 0)
    relative to scan position (0, 0) (exact when the scan is not rotated on the object)."""

    pixel_size_A: float
    scan_to_pixel: tuple[tuple[float, float, float], tuple[float, float, float]]
    origin_A: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_size_A": self.pixel_size_A,
                "scan_to_pixel": [list(r) for r in self.scan_to_pixel],
                "origin_A": list(self.origin_A)}


def geometry_from_positions(positions_px: np.ndarray, mask: np.ndarray,
                            pixel_size_A: float) -> ObjectGeometry:
    """Fit the affine map scan index → object pixel from a back end's probe positions
    (``positions_px`` (n, 2), probe centres in object pixels, for the scan positions where
    ``mask`` (scan_y, scan_x) is true, in row-major order)."""
    iy, ix = np.nonzero(mask)
    a = np.stack([iy, ix, np.ones_like(iy)], 1).astype(np.float64)
    sol, *_ = np.linalg.lstsq(a, np.asarray(positions_px, np.float64), rcond=None)
    m = sol.T  # (2, 3)
    resid = np.abs(a @ sol - positions_px).max()
    if resid > 1e-2:
        raise ValueError(f"the back end's probe positions are not a plain raster (off by up to "
                         f"{resid:.3f} px)")
    # origin: position (Å) of object pixel (0, 0) relative to scan position (0, 0), for an
    # unrotated scan (diagonal map): pixel 0 sits at -offset pixels from scan position 0
    origin = (-m[0, 2] * pixel_size_A, -m[1, 2] * pixel_size_A)
    rows = tuple(tuple(float(v) for v in r) for r in m)
    return ObjectGeometry(float(pixel_size_A), rows, (float(origin[0]), float(origin[1])))  # type: ignore[arg-type]


class Session(Protocol):
    """One running reconstruction."""

    iterations_done: int

    def step(self) -> float:
        """Run one iteration over all patterns; returns its data loss."""

    def phase(self) -> np.ndarray:
        """The object phase (rad), ``(y, x)``, summed over slices."""

    def geometry(self) -> ObjectGeometry:
        """Where the object grid lies on the scan."""

    def state(self) -> dict[str, Any]:
        """Everything needed to continue later (tensors and plain Python values)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`'s result."""


class Backend(Protocol):
    name: str
    version: str

    def start(self, data: PtychoData, config: PtychoConfig,
              positions_mask: np.ndarray | None = None) -> Session:
        """A new session on ``data`` (only the positions where ``positions_mask`` is true)."""

