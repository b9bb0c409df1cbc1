"""Progress bars, result checks and the loop that streams a job's blocks to its output file."""

from __future__ import annotations

import sys

import numpy as np

from .errors import UserError


def report_image(image: np.ndarray, source, what: str) -> None:
    """An all-NaN or all-zero result is an error naming the data file; a partly non-finite
    one gets a warning with the count."""
    finite = np.isfinite(image)
    n_bad, n = int(image.size - finite.sum()), int(image.size)
    if n_bad == n:
        raise UserError(f"{source}: the {what} is NaN/inf everywhere (the data hold NaN/inf "
                        "values); nothing written")
    if not np.any(image[finite]):
        raise UserError(f"{source}: the {what} is zero everywhere (no signal there); nothing "
                        "written")
    if n_bad:
        print(f"warning: {n_bad} of {n} scan positions of the {what} are NaN/inf (the data "
              f"hold NaN/inf values there)", file=sys.stderr)


def progress(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


def run_to_sink(events, sink, bar):
    """Drive a job's :class:`~.parallel.BlockEvent` generator: each finished block of rows goes
    to the output file and the progress bar; closing it (Ctrl-C, an error) cancels the job."""
    import contextlib

    image = None
    with contextlib.closing(events):
        for ev in events:
            sink.write(ev.y0, ev.y1, ev.block)
            bar.update(ev.rows_done - bar.n)
            image = ev.image
    return image
