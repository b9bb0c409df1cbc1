"""Write the training library of the base model (20 simulated items: 2D layers with point
defects and 2-30 nm crystals, 60-300 keV; none of the transfer suite's materials) to
benchmarks/_data/library/ (or -o DIR), cheapest first, resumable.

Run niced on one core, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/make_library.py [-o DIR] [--estimate]``.
Prints each item's estimate and its measured wall time; every file records its CPU seconds.
"""

from __future__ import annotations

import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

from napari_4dstem_ml.simulate.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["library", *sys.argv[1:]]))
