"""Argument types (range-checked where they are parsed), the parser class and the option groups
that several commands share."""

from __future__ import annotations

import argparse
import math

from .errors import EXIT_USAGE


# -- argument types: range-checked where they are parsed ----------------------------------
def number(kind, lo=None, hi=None, *, lo_open=False, odd=False):
    """An argparse ``type=``: a finite ``kind`` (int or float) in [lo, hi] (``lo_open``:
    (lo, hi]); ``odd`` ints only. The message names the expected range."""
    def fmt(v):
        return f"{v:g}" if kind is float else str(int(v))

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {fmt(lo)}")
    if hi is not None:
        parts.append(f"<= {fmt(hi)}")
    expect = f"{'an odd integer' if odd else 'an integer' if kind is int else 'a number'}" + (
        f" {' and '.join(parts)}" if parts else "")

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expect}, got {text!r}") from None
        ok = math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) \
            and (hi is None or v <= hi) and (not odd or v % 2 == 1)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {expect}, got {text!r}")
        return v

    parse.__name__ = kind.__name__
    return parse


POSITIVE = number(float, 0, lo_open=True)
NON_NEGATIVE = number(float, 0)
COUNT = number(int, 1)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)



# -- parser -----------------------------------------------------------------------------
def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="HDF5: path of the 4D dataset inside the file")
    p.add_argument("--scan-shape", nargs=2, type=COUNT, metavar=("NY", "NX"), help="scan shape when the file does not say")
    p.add_argument("--allow-external", action="store_true",
                   help="HDF5: allow data stored in other files (external storage, virtual "
                        "datasets, external links); refused by default")
    add_calibration_options(p)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (wins over the file's)")
    g.add_argument("--energy", type=POSITIVE, metavar="KEV", help="beam energy (keV)")
    g.add_argument("--convergence", type=POSITIVE, metavar="MRAD", help="convergence semi-angle α (mrad)")
    g.add_argument("--detector-pixel", type=POSITIVE, metavar="MRAD", help="detector pixel (mrad)")
    g.add_argument("--scan-step", type=POSITIVE, metavar="ANGSTROM", help="scan step (Å)")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this running Dask distributed scheduler (workers read the file "
                        "themselves: give a path they can open)")
    g.add_argument("--workers", type=COUNT, metavar="N",
                   help="start a local Dask cluster of N worker processes (default: in process)")
