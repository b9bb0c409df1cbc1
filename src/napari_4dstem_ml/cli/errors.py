"""What a command's failure becomes: one message naming the file or option, and an exit status
(2 for the user's input, 1 for an internal error, 3 when a live acquisition stopped early)."""

from __future__ import annotations

import argparse
import contextlib
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_STALLED = 3  # stemml live: the acquisition stopped before the scan was complete
#: load() keywords as command-line options (for messages that say how to resolve an error)
OPTION_FLAGS = {"dataset": "--dataset", "key": "--dataset", "scan_shape": "--scan-shape",
                "allow_external": "--allow-external"}


class UserError(Exception):
    """An error caused by the user's input: reported as a message, exit status 2."""


def primary_input(args: argparse.Namespace) -> str:
    return next((str(getattr(args, a)) for a in ("data", "source", "file", "image", "model")
                 if getattr(args, a, None)), "input")



#: failures of file-parsing libraries (h5py, zipfile, torch, ...) on broken input files
DATA_ERRORS = (OSError, EOFError, struct.error, zipfile.BadZipFile, zlib.error,
                UnicodeDecodeError)


def describe_error(exc: BaseException, args: argparse.Namespace,
                   inputs: tuple[str, ...] = ()) -> tuple[int, str]:
    """(exit status, one-line message) for an exception leaving a command; ``inputs``: the
    command's input files (a message that names none of them is given the data file's name)."""
    if isinstance(exc, (UserError, ValueError)):
        text = str(exc)
        flag = OPTION_FLAGS.get(getattr(exc, "option", None) or "")
        if flag and flag not in text:  # say which option resolves it
            text += f" (on the command line: {flag})"
        return EXIT_USAGE, text
    from ..parallel import ParallelError

    if isinstance(exc, ParallelError):
        return EXIT_INTERNAL, str(exc)
    cluster = getattr(args, "scheduler", None) or (
        "the local Dask cluster" if getattr(args, "workers", None) else None)
    if cluster and type(exc).__module__.split(".")[0] in ("distributed", "tornado", "msgpack"):
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        return EXIT_USAGE, f"{cluster}: the Dask cluster failed ({type(exc).__name__}: {text})"
    files = [*inputs, getattr(args, "output", None) or ""]
    if isinstance(exc, OSError) and exc.filename:
        return EXIT_USAGE, f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (*DATA_ERRORS, MemoryError)):
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError):
            text = f"not enough memory ({text})"
        if not any(f and Path(f).name in text for f in files):
            text = f"{primary_input(args)}: could not read the data ({text})"
        return EXIT_USAGE, text
    return EXIT_INTERNAL, (f"internal error while processing {primary_input(args)}: "
                           f"{type(exc).__name__}: {exc} (please report it; STEMML_DEBUG=1 "
                           "shows the traceback)")


@contextlib.contextmanager
def numeric_warnings_off() -> Iterator[None]:
    """NumPy's floating-point RuntimeWarnings (with their source lines) off inside a
    command: NaN/inf data are reported once, in the command's own words."""
    import warnings

    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        yield
