"""Sources of scan rows during an acquisition: a growing EMPAD file (and, in :mod:`.merlin`,
a Merlin TCP stream). A source yields ``(y0, y1, block)`` with ``block`` the patterns
``(y1 - y0, Nx, ky, kx)`` of the scan rows that became complete, in scan order.

Every wait has a deadline (``timeout_s``): for the XML, for the file, for the next frame.
A growing file must only grow: a file that shrinks, is replaced by another one, or whose
frames already read change (a new acquisition written into the same name) ends the run with
:class:`AcquisitionRestarted`, keeping the rows of the first acquisition. Only regular files
are followed (a FIFO or a device is refused at once, never opened for a blocking read).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..dataset import Calibration
from .rows import AcquisitionRestarted, AcquisitionStalled, RowSource


class EmpadFollower:
    """Follow ``path`` (an EMPAD ``.raw`` being written): scan shape and calibration from its
    XML (which the acquisition writes first; waited for, also while it is incomplete), then
    complete scan rows as the file grows, read with ``pread`` at their byte offsets. No
    growth for ``timeout_s`` seconds → :class:`AcquisitionStalled`; a file that shrinks or
    changes what was read → :class:`AcquisitionRestarted`; the scan is complete when all
    ``Ny × Nx`` frames are in. A path that is not a regular file is a ``ValueError``."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0, poll_s: float = 0.005,
                 scan_shape: tuple[int, int] | None = None, cancel=None) -> None:
        from ..io import ReaderError
        from ..io.empad import FRAME_BYTES, find_xml, parse_xml

        self.path = Path(path)
        self.name = str(self.path)
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        if not (self.timeout_s > 0 and self.poll_s > 0):
            raise ValueError(f"timeout {timeout_s!r} s and poll {poll_s!r} s must be > 0")
        self.cancel = cancel  # a threading.Event: set → rows() returns
        self.frame_bytes = FRAME_BYTES
        self.detector_shape = (128, 128)
        check_followable(self.path)
        t0 = time.monotonic()
        xml = None
        problem = None
        while scan_shape is None:
            if cancel is not None and cancel.is_set():
                raise AcquisitionStalled(f"{self.path}: cancelled while waiting for the XML", 0)
            xml = find_xml(self.path) if self.path.parent.is_dir() else None
            if xml is not None:
                try:  # the acquisition may still be writing it: wait within the timeout
                    info = parse_xml(xml)
                except ReaderError as exc:
                    problem = exc
                else:
                    shapes = [s for _, s in info.scan_shapes]
                    if shapes:
                        scan_shape = shapes[0]
                        break
                    problem = None
            if time.monotonic() - t0 > self.timeout_s:
                if problem is not None:
                    raise ReaderError(f"{problem} (still so after waiting {self.timeout_s:g} s "
                                      "for the acquisition to finish writing it)", xml)
                raise AcquisitionStalled(
                    f"{self.path}: no EMPAD XML with a scan shape appeared within "
                    f"{self.timeout_s:g} s (the acquisition writes it first)", 0)
            time.sleep(0.05)
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.calibration = Calibration()
        self.xml = xml  # the acquisition's XML (an input: no output may replace it)
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
        ident = None  # (st_dev, st_ino) of the file being followed
        last_frame = b""  # the last frame read: it must read the same at the next block
        try:
            while done < ny:
                if self.cancel is not None and self.cancel.is_set():
                    return
                if fd is None:
                    fd = _open_regular(self.path)
                    if fd is not None:
                        st = os.fstat(fd)
                        ident = (st.st_dev, st.st_ino)
                size = os.fstat(fd).st_size if fd is not None else 0
                if fd is not None:
                    self._check_same_file(ident, size, last_size, done)
                if size > total:
                    raise ValueError(f"{self.path}: the file grew past the {ny} x {nx} scan of "
                                     f"its XML ({size} > {total} bytes)")
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                ready = min(ny, size // row_bytes)
                if ready > done:
                    if last_frame and os.pread(fd, self.frame_bytes,
                                               done * row_bytes - self.frame_bytes) != last_frame:
                        raise AcquisitionRestarted(
                            f"{self.path}: frames already read changed (a new acquisition "
                            f"written into the same file?) after {done} of {ny} scan rows; "
                            "stopped, keeping the rows of the first acquisition", done)
                    n = ready - done
                    buf = np.empty((n, nx, 130, 128), "<f4")
                    got = os.preadv(fd, [memoryview(buf).cast("B")], done * row_bytes)
                    if got != n * row_bytes:
                        raise AcquisitionRestarted(
                            f"{self.path}: the file shrank while scan row {done} was read (a "
                            f"new acquisition into the same name?) after {done} of {ny} scan "
                            "rows; stopped, keeping the rows read before", done)
                    last_frame = memoryview(buf).cast("B")[-self.frame_bytes:].tobytes()
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

    def close(self) -> None:
        """Nothing to release (the file is opened and closed by :meth:`rows`)."""

    def _check_same_file(self, ident, size: int, last_size: int, done: int) -> None:
        """The path still names the file being followed, and it did not shrink."""
        ny = self.scan_shape[0]
        if last_size >= 0 and size < last_size:
            raise AcquisitionRestarted(
                f"{self.path}: the file shrank from {last_size} to {size} bytes (a new "
                f"acquisition into the same name?) after {done} of {ny} scan rows; stopped, "
                "keeping the rows of the first acquisition", done)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != ident:
            what = "was removed" if st is None else "was replaced by another file"
            raise AcquisitionRestarted(
                f"{self.path}: the file {what} after {done} of {ny} scan rows; stopped, "
                "keeping the rows read before", done)


def check_followable(path: Path) -> None:
    """A live source must be a regular file (or not exist yet): a FIFO, socket or device
    would block or never end; refused before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValueError(f"{path}: cannot follow it ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path} is a folder; live follows a growing EMPAD .raw file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device); live "
                         "follows a growing EMPAD .raw file")


def _open_regular(path: Path) -> int | None:
    """A read-only descriptor of ``path`` if it exists (``None`` if not yet), opened without
    blocking and checked to be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file (a FIFO, socket or device); live "
                             "follows a growing EMPAD .raw file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
