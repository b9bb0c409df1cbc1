"""Write the held-out transfer suite to benchmarks/_data/transfer/ (or -o DIR), resumable
(finished files are skipped): issue 17's additions first (PtSe2 1T + Se vacancy, black
phosphorus trilayer + P vacancy, CeO2 [001] 5 and 25 nm, WSe2 with defocus, astigmatism,
source size and scan jitter), then issue 9's five (WS2, hBN, SrTiO3 5 and 20 nm, Si [110]),
each group cheapest first.

Run niced on one core, e.g.
``OMP_NUM_THREADS=1 nice -n 15 python benchmarks/make_transfer_suite.py [-o DIR] [--estimate]
[--only NAME,NAME]``. Prints each item's estimate and its measured wall time (one core).
"""

from __future__ import annotations

import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from napari_4dstem_ml.simulate.scene import estimate_seconds  # noqa: E402
from napari_4dstem_ml.simulate.suites import (  # noqa: E402
    log_suite,
    transfer_suite,
    transfer_suite_extended,
    write_suite,
)

DEFAULT = Path(__file__).resolve().parent / "_data" / "transfer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=DEFAULT, help="output folder")
    p.add_argument("--estimate", action="store_true", help="print the estimates and stop")
    p.add_argument("--only", default="", help="comma-separated item names")
    args = p.parse_args(argv)
    new = {c.name for c in transfer_suite_extended()}
    allc = transfer_suite()
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {c.name for c in allc}
        if unknown:
            p.error(f"unknown item(s) {sorted(unknown)}; known: {[c.name for c in allc]}")
        allc = [c for c in allc if c.name in want]
    groups = [[c for c in allc if c.name in new], [c for c in allc if c.name not in new]]
    for g in groups:
        for c in sorted(g, key=estimate_seconds):
            print(f"{c.name}: estimate {estimate_seconds(c):.0f} s (one idle core)", flush=True)
    if args.estimate:
        return 0
    for g in groups:
        if g:
            log_suite(write_suite(g, args.output), log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
