"""``stemml info``: what a file holds and what its header says."""

from __future__ import annotations

import argparse
import json

from .args import (
    add_compute_options,
    add_data_options,
)
from .inputs import (
    compute_choice,
    load_data,
)


def cmd_info(args: argparse.Namespace) -> int:
    from ..parallel import open_client

    ds = load_data(args.file, args)
    compute = compute_choice(args)
    disk = _measure_disk(ds) if args.disk else None
    if args.json:
        out = ds.info()
        if args.disk:
            out["bf_disk"] = None if disk is None else {
                "centre_px": list(disk.centre), "radius_px": disk.radius_px,
                "convergence_mrad": disk.convergence_mrad}
        if not compute.in_process:
            out["compute"] = compute.describe()
        print(json.dumps(out, indent=1))
        return 0
    print(ds.summary())
    if args.disk:
        print("measured " + disk.describe() if disk else "measured bright-field disk: none found")
    if not compute.in_process:
        with open_client(compute) as client:
            info = client.scheduler_info()
            workers = info.get("workers", {})
            threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
            memory = sum(float(w.get("memory_limit", 0) or 0) for w in workers.values())
            print(f"compute: {compute.describe()} at {info.get('address', '?')}: {len(workers)} "
                  f"worker(s), {threads} thread(s), {memory / 1e9:.1f} GB memory")
    return 0


def _measure_disk(ds):
    """The bright-field disk of the mean of about 1,000 patterns spread over the scan, or
    ``None`` when the patterns show none."""
    import math

    import numpy as np

    from ..detectors.centre import CentreError, measure_bf_disk
    from ..detectors.engine import mean_pattern

    ny, nx = ds.scan_shape
    mean = mean_pattern(ds.data, step=max(1, int(math.sqrt(ny * nx / 1000))))
    if not np.isfinite(mean).all() or not np.any(mean):
        return None
    try:
        return measure_bf_disk(mean, ds.calibration)
    except CentreError:
        return None


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("info", help="print shape, dtype, calibrations and the reader used")
    p.add_argument("file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: reader, shapes, dtype, calibrations in Å, keV and "
                        "mrad (null where unknown) and the header field each came from")
    p.add_argument("--disk", action="store_true",
                   help="also measure the bright-field disk (centre and radius in px, and the "
                        "convergence semi-angle it implies when the detector pixel is known)")
    add_data_options(p)
    add_compute_options(p)
    p.set_defaults(func=cmd_info)
