"""Write a large EMPAD acquisition by tiling the MoS2 sample: ``scan_x{NX}_y{NY}.raw`` + XML.

Frames are the sample's patterns (uint16 counts as float32) at scan position
``(y % 64, x % 64)``, written as EMPAD frames of 128 columns x 130 rows (two metadata rows of
zeros), one scan row at a time, with the acquisition XML beside them (80 kV, field of view from
the sample's 0.24 Å step). Files go to ``benchmarks/_data/`` (git-ignored). ``--gb`` picks a
square scan of about that many gigabytes (1e9 bytes).

    python benchmarks/make_empad_tiles.py --gb 40      # 776 x 776 scan, 40.1 GB
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from napari_4dstem_ml.live.replay import empad_xml

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "_data"
FRAME_BYTES = 128 * 130 * 4



def sample_patterns() -> tuple[np.ndarray, float]:
    """The MoS2 sample's 4D counts ``(64, 64, 128, 128)`` float32 and its scan step (Å)."""
    from napari_4dstem_ml.samples import load_sample

    ds = load_sample("mos2").dataset
    step = ds.calibration.scan_step_A or (0.24, 0.24)
    return np.asarray(ds.data, np.float32), float(step[0])


def scan_for_gb(gb: float) -> int:
    """Side of the smallest square scan whose EMPAD file holds at least ``gb`` × 1e9 bytes."""
    return max(8, int(math.ceil(math.sqrt(gb * 1e9 / FRAME_BYTES))))


def write_tiles(path: Path, ny: int, nx: int, patterns: np.ndarray, step_A: float,
                log=print) -> Path:
    """Write ``path`` (``.raw``) and its ``.xml``; returns the raw path. Skips an existing file of
    the right size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = ny * nx * FRAME_BYTES
    xml = path.with_suffix(".xml")
    xml.write_text(empad_xml(path.name, (ny, nx), 80e3, (step_A, step_A)))
    if path.exists() and path.stat().st_size == size:
        log(f"{path.name}: exists ({size / 1e9:.1f} GB)")
        return path
    sy, sx = patterns.shape[:2]
    frames = np.zeros((sy, sx, 130, 128), np.float32)
    frames[:, :, :128] = patterns
    cols = np.arange(nx) % sx
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        for y in range(ny):
            frames[y % sy][cols].tofile(f)
            if y % 64 == 63:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    os.replace(tmp, path)
    dt = time.perf_counter() - t0
    log(f"{path.name}: wrote {size / 1e9:.1f} GB in {dt:.0f} s ({size / 1e9 / dt:.2f} GB/s)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0, help="approximate size in GB")
    ap.add_argument("--scan", type=int, default=None, help="scan side (overrides --gb)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    n = a.scan or scan_for_gb(a.gb)
    pats, step = sample_patterns()
    out = a.out or DATA_DIR / f"scan_x{n}_y{n}.raw"
    write_tiles(out, n, n, pats, step)


if __name__ == "__main__":
    main()
