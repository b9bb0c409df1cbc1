"""Write an EMPAD acquisition in progress, as the acquisition software does: the XML first,
then the raw frames appended at a given rate (frames of 128 columns x 130 rows, float32, the
two metadata rows zero). For tests and demos of the live mode."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..dataset import Dataset4D

XML = """<?xml version="1.0" encoding="UTF-8"?>
<root>
  <software_version>stemml replay</software_version>
  <raw_file filename="{raw}"/>
  <scan_parameters mode="acquire">
    <scan_resolution_x>{nx}</scan_resolution_x>
    <scan_resolution_y>{ny}</scan_resolution_y>
  </scan_parameters>
  <iom_measurements>
{iom}  </iom_measurements>
</root>
"""


def empad_xml(raw_name: str, scan_shape: tuple[int, int], energy_ev: float | None = None,
              scan_step_A: tuple[float, float] | None = None) -> str:
    """The EMPAD acquisition XML for ``raw_name``: scan shape, and the beam energy and field of
    view (scan step × positions) when known."""
    ny, nx = scan_shape
    lines = []
    if energy_ev:
        lines.append(f"    <high_voltage>{energy_ev:.6g}</high_voltage>\n")
    if scan_step_A:
        lines.append(f"    <full_scan_field_of_view><x>{nx * scan_step_A[1] * 1e-10:.6e}</x>"
                     f"<y>{ny * scan_step_A[0] * 1e-10:.6e}</y></full_scan_field_of_view>\n")
    return XML.format(raw=raw_name, nx=nx, ny=ny, iom="".join(lines))


def replay(source: Dataset4D, dst: str | Path, rate_hz: float, *, overwrite: bool = False,
           stop_after: int | None = None, progress: Callable[[int, int], None] | None = None
           ) -> Path:
    """Write ``source`` (a 128 × 128 detector) to ``dst`` (``.raw``) frame by frame at
    ``rate_hz`` frames per second (``0``: as fast as possible), the XML beside it first.

    ``stop_after``: stop after that many frames (a stalled acquisition, for tests).
    ``progress(frames_written, total)`` is called after each write. Returns ``dst``."""
    from ..io.empad import FRAME_COLS, FRAME_ROWS_RAW

    dst = Path(dst)
    if dst.suffix.lower() != ".raw":
        raise ValueError(f"{dst}: the replayed acquisition must be an EMPAD .raw file")
    ny, nx, ky, kx = source.shape
    if (ky, kx) != (128, 128):
        raise ValueError(f"{source.source}: EMPAD frames are 128 x 128; this detector is {ky} x {kx}")
    if not rate_hz >= 0:
        raise ValueError(f"rate must be >= 0 frames/s, got {rate_hz!r}")
    xml = dst.with_suffix(".xml")
    for p in (dst, xml):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; choose another name or pass --overwrite")
    xml.write_text(empad_xml(dst.name, (ny, nx), source.calibration.energy_ev,
                             source.calibration.scan_step_A))
    total = ny * nx if stop_after is None else min(ny * nx, int(stop_after))
    frame = np.zeros((nx, FRAME_ROWS_RAW, FRAME_COLS), "<f4")
    t0 = time.perf_counter()
    written = 0
    with open(dst, "wb") as f:
        row_cache: tuple[int, np.ndarray] | None = None
        while written < total:
            due = total if rate_hz == 0 else min(total, int((time.perf_counter() - t0) * rate_hz) + 1)
            if due <= written:
                time.sleep(min(0.005, (written + 1) / rate_hz - (time.perf_counter() - t0)))
                continue
            chunks = []
            i = written
            while i < due:  # whole or partial scan rows
                y, x = divmod(i, nx)
                if row_cache is None or row_cache[0] != y:
                    frame[:, :128] = np.asarray(source.data[y], np.float32)
                    row_cache = (y, frame)
                n = min(due - i, nx - x)
                chunks.append(frame[x : x + n].tobytes())
                i += n
            f.write(b"".join(chunks))
            f.flush()
            written = due
            if progress is not None:
                progress(written, ny * nx)
        os.fsync(f.fileno())
    return dst
