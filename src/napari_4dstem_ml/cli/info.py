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
    if args.json:
        out = ds.info()
        if not compute.in_process:
            out["compute"] = compute.describe()
        print(json.dumps(out, indent=1))
        return 0
    print(ds.summary())
    if not compute.in_process:
        with open_client(compute) as client:
            info = client.scheduler_info()
            workers = info.get("workers", {})
            threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
            memory = sum(float(w.get("memory_limit", 0) or 0) for w in workers.values())
            print(f"compute: {compute.describe()} at {info.get('address', '?')}: {len(workers)} "
                  f"worker(s), {threads} thread(s), {memory / 1e9:.1f} GB memory")
    return 0


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("info", help="print shape, dtype, calibrations and the reader used")
    p.add_argument("file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: reader, shapes, dtype, calibrations in Å, keV and "
                        "mrad (null where unknown) and the header field each came from")
    add_data_options(p)
    add_compute_options(p)
    p.set_defaults(func=cmd_info)
