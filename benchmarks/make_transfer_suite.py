"""Write the held-out transfer suite (WS2 + S vacancy, hBN + B vacancy, SrTiO3 5 and 20 nm,
Si [110] at 120 keV) to benchmarks/_data/transfer/ (or -o DIR), smallest first, resumable.

Run niced on one core, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/make_transfer_suite.py [-o DIR] [--estimate]``.
Prints each item's estimate and its measured wall time (one core).
"""

from __future__ import annotations

import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

from napari_4dstem_ml.simulate.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["transfer-suite", *sys.argv[1:]]))
