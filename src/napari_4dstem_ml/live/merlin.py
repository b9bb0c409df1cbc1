"""A Merlin (Quantum Detectors) TCP data stream as a row source, received with LiberTEM-live's
Merlin receiver (``libertem_qd_mpx``, the optional ``[live]`` extra), and MIB files for its
replay simulator (``libertem-live-mib-sim``, package ``libertem-live``).

:class:`MerlinSource` connects passively to the data port, waits for the detector to be armed
(the acquisition header gives the scan and detector shapes), then yields complete scan rows as
the frame stacks arrive, decoded by ``CamClient.decode_range_into_buffer`` (no frame parsing
here). :func:`write_mib` writes a 4D data set as a MIB file (16-bit frames, one 384-byte header
each, in the layout of Merlin's single-chip ``1x1`` files) plus the ``.hdr`` acquisition header.

Every wait has a deadline: the address is probed with a TCP connection first (nothing
listening → :class:`MerlinError` at once, never a receiver that retries for ever), the arm
and every frame are waited for at most ``timeout_s``; a server that does not speak Merlin's
protocol is a :class:`MerlinError` naming the address. The receiver's shared-memory folder
(``stemml-merlin-*`` in the temporary folder) is removed on close.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..dataset import Calibration, Dataset4D
from .rows import AcquisitionStalled

HEADER_BYTES = 384


def _frame_header(index: int, ky: int, kx: int) -> bytes:
    fields = [
        "MQ1", f"{index:06d}", f"{HEADER_BYTES:05d}", "01", f"{kx:04d}", f"{ky:04d}", "U16",
        "   1x1", "01", "2026-01-01 00:00:00.000000", "0.001000", "0", "0", "0",
        "1.200000E+2", "5.110000E+2", *(["0.000000E+0"] * 6), "3RX",
        *"175,511,000,000,000,000,000,000,125,255,125,125,100,100,082,100,087,030,128,004,255,129,"
         "128,176,168,511,511".split(","),
        "MQ1A", "2026-01-01T00:00:00.000000000Z", "1000000ns", "12",
    ]
    text = ",".join(fields) + ","
    return text.encode("ascii").ljust(HEADER_BYTES, b"\0")


def write_mib(dataset: Dataset4D, path: str | Path) -> Path:
    """Write ``dataset`` as ``path`` (``.mib``: big-endian uint16 frames, counts clipped to
    0..65535) and ``path.hdr`` (scan shape for the simulator). Returns the ``.hdr`` path."""
    path = Path(path)
    ny, nx, ky, kx = dataset.shape
    with open(path, "wb") as f:
        for y in range(ny):
            row = np.clip(np.rint(np.asarray(dataset.data[y], np.float64)), 0, 65535).astype(">u2")
            for x in range(nx):
                f.write(_frame_header(y * nx + x + 1, ky, kx))
                f.write(row[x].tobytes())
    hdr = path.with_suffix(".hdr")
    hdr.write_text(
        "HDR,\t\n"
        "Time and Date Stamp (day, mnth, yr, hr, min, s):\t01/01/2026 00:00:00\n"
        "Chip ID:\tW529_F5,-,-,-\n"
        "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX\n"
        "Assembly Size (NX1, 2X2):\t   1x1\n"
        "Chip Mode  (SPM, CSM, CM, CSCM):\tSPM\n"
        "Counter Depth (number):\t12\n"
        "Gain:\tSLGM\n"
        "Active Counters:\tAlternating\n"
        "Thresholds (keV):\t1.200000E+2,5.110000E+2,0.000000E+0,0.000000E+0,0.000000E+0,"
        "0.000000E+0,0.000000E+0,0.000000E+0\n"
        "DACs:\t175,511,000,000,000,000,000,000,125,255,125,125,100,100,082,100,087,030,128,004,"
        "255,129,128,176,168,511,511\n"
        "bpc File:\tc:\\MERLIN_Quad_Config\\W529_F5\\W529_F5_SPM.bpc,,,\n"
        "DAC File:\tc:\\MERLIN_Quad_Config\\W529_F5\\W529_F5_SPM.dacs,,,\n"
        "Gap Fill Mode:\tNone\n"
        "Flat Field:\tNone\n"
        "Dead Time File:\tDummy (C:\\<NUL>\\)\n"
        "Acquisition Type (Normal, Th_scan, Config):\tNormal\n"
        f"Frames in Acquisition (Number):\t{ny * nx}\n"
        "Frames per Trigger (Number):\t{}\n".format(nx)
        + "Trigger Start (Positive, Negative, Internal):\tRising Edge\n"
        "Trigger Stop (Positive, Negative, Internal):\tRising Edge\n"
        "Sensor Bias (V):\t120 V\n"
        "Sensor Polarity (Positive, Negative):\tPositive\n"
        "Temperature (C):\tBoard Temp 0.000000 Deg C\n"
        "Humidity (%):\tBoard Humidity 0.000000 \n"
        "Medipix Clock (MHz):\t120MHz\n"
        "Readout System:\tMerlin Quad\n"
        "Software Version:\t0.75.4.84\n"
        "End\t")
    return hdr


class MerlinError(ValueError):
    """The Merlin address cannot be used: nothing listens, or the server there does not speak
    Merlin's data protocol. The message names the address."""


def parse_address(text: str) -> tuple[str, int] | None:
    """``merlin://HOST:PORT`` → ``(host, port)``; ``None`` for anything else (a file)."""
    if not str(text).lower().startswith("merlin://"):
        return None
    rest = str(text)[len("merlin://"):]
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535 or any(c in host for c in "/?#@ "):
        raise MerlinError(f"{text}: expected merlin://HOST:PORT (the Merlin data port, "
                          "usually 6342)")
    return host or "127.0.0.1", number


def probe(host: str, port: int, timeout_s: float, cancel=None) -> None:
    """Wait until something accepts TCP connections at ``host:port``, at most ``timeout_s``
    (the detector software may be starting); else a :class:`MerlinError` naming the address.
    (LiberTEM-live's receiver would retry for ever.)"""
    name = f"merlin://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(left, 5.0))):
                return
        except OSError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()) or isinstance(
                    exc, socket.gaierror):
                reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                raise MerlinError(
                    f"{name}: nothing answered there within {timeout_s:g} s ({reason}); is the "
                    "Merlin software running, and is that its data port (usually 6342)?") from exc
            time.sleep(min(0.1, left))


def _short(exc: BaseException) -> str:
    """The receiver's error as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(" (maybe")[0].replace("a general fatal error occurred: ", "")[:160]


def _protocol_error(name: str, exc: BaseException) -> MerlinError:
    return MerlinError(f"{name}: the server there does not speak Merlin's data protocol "
                       f"({_short(exc)})")


class MerlinSource:
    """Rows of a Merlin acquisition received over TCP from ``host:port`` (the data port).

    ``scan_shape``: needed when the acquisition header does not give it (Merlin sends the
    number of frames; ``ScanX``/``ScanY`` only in newer software). ``timeout_s``: how long to
    wait for the detector to be armed, and for the next frames once it is."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6342, *,
                 scan_shape: tuple[int, int] | None = None, timeout_s: float = 10.0,
                 cancel=None) -> None:
        os.environ.setdefault("LIBERTEM_QD_LOG_LEVEL", "off")  # its log lines: not for our users
        try:
            import libertem_qd_mpx
        except ImportError as exc:
            raise ImportError("the Merlin stream needs LiberTEM-live's receiver: "
                              "pip install 'napari-4dstem-ml[live]'") from exc
        self._q = libertem_qd_mpx
        self.name = f"merlin://{host}:{port}"
        self.timeout_s, self.cancel = float(timeout_s), cancel
        if not self.timeout_s > 0:
            raise ValueError(f"timeout {timeout_s!r} s must be > 0")
        self.calibration = Calibration()
        probe(host, int(port), self.timeout_s, cancel)
        self._shm_dir = tempfile.mkdtemp(prefix="stemml-merlin-")
        try:
            self._connect(host, int(port), scan_shape)
        except BaseException:
            self.close()
            raise

    def _connect(self, host: str, port: int, scan_shape: tuple[int, int] | None) -> None:
        q = self._q
        self.conn = q.QdConnection(
            data_host=host, data_port=port, frame_stack_size=16,
            shm_handle_path=os.path.join(self._shm_dir, "socket"), drain=False,
            recovery_strategy="immediate_reconnect", huge=False)
        self.conn.start_passive()
        t0 = time.monotonic()
        header = None
        while header is None:
            if self.cancel is not None and self.cancel.is_set():
                raise AcquisitionStalled(f"{self.name}: cancelled while waiting for the arm", 0)
            try:
                header = self.conn.wait_for_arm(timeout=min(1.0, self.timeout_s))
            except Exception as exc:  # noqa: BLE001 - the receiver's own error types
                raise _protocol_error(self.name, exc) from exc
            if header is None and time.monotonic() - t0 > self.timeout_s:
                raise AcquisitionStalled(
                    f"{self.name}: the detector was not armed within {self.timeout_s:g} s", 0)
        n = int(header.frames_in_acquisition())
        nav = header.nav_shape()
        if scan_shape is None and nav is not None and len(nav) == 2:
            scan_shape = tuple(int(v) for v in nav)
        if scan_shape is None:
            raise ValueError(f"{self.name}: {n} frames; the header gives no scan shape: give it "
                             "with --scan-shape NY NX")
        if scan_shape[0] * scan_shape[1] != n:
            raise ValueError(f"{self.name}: {n} frames do not fill a {scan_shape[0]} x "
                             f"{scan_shape[1]} scan (--scan-shape)")
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.detector_shape = tuple(int(v) for v in header.detector_shape())
        self.cam = q.CamClient(self.conn.get_socket_path())

    def rows(self) -> Iterator[tuple[int, int, np.ndarray]]:
        ny, nx = self.scan_shape
        ky, kx = self.detector_shape
        buf = np.empty((ny if ny * nx * ky * kx * 4 < 2**28 else 4, nx, ky, kx), np.float32)
        frames = np.empty((nx, ky, kx), np.float32)
        done_frames = 0
        rows_out = 0
        pending = 0  # frames of the row being filled
        last = time.monotonic()
        try:
            while rows_out < ny:
                if self.cancel is not None and self.cancel.is_set():
                    return
                try:
                    stack = self.conn.get_next_stack(max_size=nx - pending)
                except Exception as exc:  # noqa: BLE001 - the receiver's own error types
                    raise AcquisitionStalled(
                        f"{self.name}: the stream broke after {rows_out} of {ny} scan rows "
                        f"({_short(exc)})", rows_out) from exc
                if stack is None or len(stack) == 0:
                    if time.monotonic() - last > self.timeout_s:
                        raise AcquisitionStalled(
                            f"{self.name}: acquisition stalled: no frame for {self.timeout_s:g} s "
                            f"after {rows_out} of {ny} scan rows", rows_out)
                    if stack is None:
                        raise AcquisitionStalled(
                            f"{self.name}: the stream ended after {rows_out} of {ny} scan rows",
                            rows_out)
                    continue
                last = time.monotonic()
                m = len(stack)
                self.cam.decode_range_into_buffer(stack, frames[pending : pending + m], 0, m)
                self.cam.done(stack)
                pending += m
                done_frames += m
                if pending == nx:
                    row = buf[rows_out % len(buf)]
                    row[...] = frames
                    yield rows_out, rows_out + 1, row[None]
                    rows_out += 1
                    pending = 0
        finally:
            self.close()

    def close(self) -> None:
        """Close the receiver and remove its shared-memory folder."""
        for obj in (getattr(self, "cam", None), getattr(self, "conn", None)):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing twice
                    pass
        folder = getattr(self, "_shm_dir", None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
