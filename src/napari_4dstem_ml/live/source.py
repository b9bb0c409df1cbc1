"""Sources of scan rows during an acquisition: a growing EMPAD file (and, in :mod:`.merlin`,
a Merlin TCP stream). A source yields ``(y0, y1, block)`` with ``block`` the patterns
``(y1 - y0, Nx, ky, kx)`` of the scan rows that became complete, in scan order."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from ..dataset import Calibration


class AcquisitionStalled(TimeoutError):
    """No new data for longer than the timeout; ``rows_done`` complete rows had arrived."""

    def __init__(self, message: str, rows_done: int) -> None:
        super().__init__(message)
        self.rows_done = rows_done


class RowSource(Protocol):
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    calibration: Calibration
    name: str

    def rows(self) -> Iterator[tuple[int, int, np.ndarray]]: ...


class EmpadFollower:
    """Follow ``path`` (an EMPAD ``.raw`` being written): scan shape and calibration from its
    XML (which the acquisition writes first; waited for), then complete scan rows as the file
    grows, read with ``pread`` at their byte offsets. No growth for ``timeout_s`` seconds →
    :class:`AcquisitionStalled`; the scan is complete when all ``Ny × Nx`` frames are in."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0, poll_s: float = 0.005,
                 scan_shape: tuple[int, int] | None = None, cancel=None) -> None:
        from ..io.empad import FRAME_BYTES, find_xml, parse_xml

        self.path = Path(path)
        self.name = str(self.path)
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        self.cancel = cancel  # a threading.Event: set → rows() returns
        self.frame_bytes = FRAME_BYTES
        self.detector_shape = (128, 128)
        t0 = time.monotonic()
        xml = None
        while scan_shape is None:
            if cancel is not None and cancel.is_set():
                raise AcquisitionStalled(f"{self.path}: cancelled while waiting for the XML", 0)
            xml = find_xml(self.path) if self.path.parent.is_dir() else None
            if xml is not None:
                info = parse_xml(xml)
                shapes = [s for _, s in info.scan_shapes]
                if shapes:
                    scan_shape = shapes[0]
                    break
            if time.monotonic() - t0 > self.timeout_s:
                raise AcquisitionStalled(
                    f"{self.path}: no EMPAD XML with a scan shape appeared within "
                    f"{self.timeout_s:g} s (the acquisition writes it first)", 0)
            time.sleep(0.05)
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.calibration = Calibration()
        if xml is not None:
            try:  # calibrations as the offline reader gives them (scan step, energy)
                self.calibration = _calibration_from_xml(xml, self.scan_shape)
            except (OSError, ValueError):
                pass

    def rows(self) -> Iterator[tuple[int, int, np.ndarray]]:
        ny, nx = self.scan_shape
        row_bytes = nx * self.frame_bytes
        total = ny * row_bytes
        done = 0
        last_change = time.monotonic()
        last_size = -1
        fd = None
        try:
            while done < ny:
                if self.cancel is not None and self.cancel.is_set():
                    return
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        fd = None
                size = os.fstat(fd).st_size if fd is not None else 0
                if size > total:
                    raise ValueError(f"{self.path}: the file grew past the {ny} x {nx} scan of "
                                     f"its XML ({size} > {total} bytes)")
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                ready = min(ny, size // row_bytes)
                if ready > done:
                    n = ready - done
                    buf = np.empty((n, nx, 130, 128), "<f4")
                    got = os.preadv(fd, [memoryview(buf).cast("B")], done * row_bytes)
                    if got != n * row_bytes:
                        raise OSError(f"{self.path}: short read at row {done}")
                    yield done, ready, buf[:, :, :128, :]
                    done = ready
                    continue
                if time.monotonic() - last_change > self.timeout_s:
                    raise AcquisitionStalled(
                        f"{self.path}: acquisition stalled: no new frame for {self.timeout_s:g} s "
                        f"after {done} of {ny} scan rows ({size // self.frame_bytes} of "
                        f"{ny * nx} frames)", done)
                time.sleep(self.poll_s)
        finally:
            if fd is not None:
                os.close(fd)


def _calibration_from_xml(xml: Path, scan_shape: tuple[int, int]) -> Calibration:
    """The calibration the EMPAD reader derives from ``xml`` (without needing the raw file)."""
    from ..io.empad import calibration_from_xml, parse_xml

    return calibration_from_xml(parse_xml(xml), scan_shape)


def open_source(text: str | Path, *, timeout_s: float = 10.0,
                scan_shape: tuple[int, int] | None = None, cancel=None) -> RowSource:
    """The row source named by ``text``: ``merlin://HOST:PORT`` (a Merlin data stream, see
    :mod:`.merlin`) or the path of an EMPAD ``.raw`` being written."""
    from .merlin import MerlinSource, parse_address

    address = parse_address(str(text))
    if address is None:
        return EmpadFollower(text, timeout_s=timeout_s, scan_shape=scan_shape, cancel=cancel)
    return MerlinSource(*address, scan_shape=scan_shape, timeout_s=timeout_s, cancel=cancel)
