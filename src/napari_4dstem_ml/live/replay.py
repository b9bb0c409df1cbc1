"""Write an EMPAD acquisition in progress, as the acquisition software does: the XML first,
then the raw frames appended at a given rate (frames of 128 columns x 130 rows, float32, the
two metadata rows zero). For tests and demos of the live mode.

Both outputs are planned before anything is written (:class:`~napari_4dstem_ml.export.
OutputPlan`): neither may be an input (the same file, a hard link or a symlink of it) nor the
other one, and an existing file is replaced only with ``overwrite`` — and then *unlinked*
first, never truncated in place, so that other names of that file (and readers that have it
open or memory-mapped) keep their data. The XML appears complete (atomically); the ``.raw``
grows frame by frame, as an acquisition's does. A replay that fails or is interrupted removes
what it wrote (``stop_after`` — a deliberately stalled acquisition — keeps it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..dataset import Dataset4D

#: the fastest replay rate accepted (frames/s; 0 means as fast as possible)
MAX_RATE_HZ = 1e6

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


def check_rate(rate_hz: float) -> float:
    """A replay rate in frames/s: 0 (as fast as possible) or up to :data:`MAX_RATE_HZ`."""
    try:
        rate = float(rate_hz)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0 <= rate <= MAX_RATE_HZ:
        raise ValueError(f"--rate {rate_hz!r}: expected 0 (as fast as possible) or a rate up "
                         f"to {MAX_RATE_HZ:g} frames/s")
    return rate


def replay(source: Dataset4D, dst: str | Path, rate_hz: float, *, overwrite: bool = False,
           stop_after: int | None = None, progress: Callable[[int, int], None] | None = None,
           inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write ``source`` (a 128 × 128 detector) to ``dst`` (``.raw``) frame by frame at
    ``rate_hz`` frames per second (``0``: as fast as possible), the XML beside it first.

    ``stop_after``: stop after that many frames (a stalled acquisition, for tests).
    ``progress(frames_written, total)`` is called after each write. ``inputs``: more files
    that must not be written (the source's own files always count). Returns ``dst``."""
    from ..export import OutputPlan, output_file, writing
    from ..io.empad import FRAME_COLS, FRAME_ROWS_RAW

    dst = Path(dst)
    if dst.suffix.lower() != ".raw":
        raise ValueError(f"{dst}: the replayed acquisition must be an EMPAD .raw file")
    ny, nx, ky, kx = source.shape
    if (ky, kx) != (128, 128):
        raise ValueError(f"{source.source}: EMPAD frames are 128 x 128; this detector is {ky} x {kx}")
    rate_hz = check_rate(rate_hz)
    xml = dst.with_suffix(".xml")
    plan = OutputPlan(inputs=[*source.input_files, *inputs], overwrite=overwrite)
    plan.add(dst, "the replayed acquisition", suffixes=(".raw",))
    plan.add(xml, "its XML")
    total = ny * nx if stop_after is None else min(ny * nx, int(stop_after))
    frame = np.zeros((nx, FRAME_ROWS_RAW, FRAME_COLS), "<f4")
    created: list[Path] = []
    try:
        with output_file(xml, overwrite=overwrite, inputs=plan.inputs) as tmp, writing(xml):
            tmp.write_text(empad_xml(dst.name, (ny, nx), source.calibration.energy_ev,
                                     source.calibration.scan_step_A))
        created.append(xml)
        with writing(dst):
            if overwrite:  # another name of the old file keeps its data: unlink, never truncate
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)
            f = open(dst, "xb")
        created.append(dst)
        with f:
            t0 = time.perf_counter()
            written = 0
            row_cache: int | None = None
            while written < total:
                now = time.perf_counter() - t0
                due = total if rate_hz == 0 else min(total, int(now * rate_hz) + 1)
                if due <= written:
                    time.sleep(max(0.0, min(0.005, (written + 1) / rate_hz - now)))
                    continue
                chunks = []
                i = written
                while i < due:  # whole or partial scan rows
                    y, x = divmod(i, nx)
                    if row_cache != y:
                        frame[:, :128] = _read_row(source, y)
                        row_cache = y
                    n = min(due - i, nx - x)
                    chunks.append(frame[x : x + n].tobytes())
                    i += n
                with writing(dst):
                    f.write(b"".join(chunks))
                    f.flush()
                written = due
                if progress is not None:
                    progress(written, ny * nx)
            with writing(dst):
                os.fsync(f.fileno())
    except BaseException:
        for p in created:  # nothing partial is left under the final names
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise
    return dst


def _read_row(source: Dataset4D, y: int) -> np.ndarray:
    """Scan row ``y`` of ``source`` as float32; a failure names the source file and row."""
    try:
        row = np.asarray(source.data[y], np.float32)
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{source.source}: could not read scan row {y} ({text})") from exc
    return row
