"""Opening a command's data with its options: ``--dataset``, ``--scan-shape``,
``--allow-external``, the calibration options (which win over the file's), ``--centre``, the
compute choice, and the list of input files no output may replace."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from ..dataset import USER
from .errors import UserError


# -- shared helpers -----------------------------------------------------------------------
def load_data(path: str, args: argparse.Namespace):
    """Open a data file with the command's data options (``--dataset``, ``--scan-shape``,
    ``--allow-external``)."""
    from ..io import load

    options = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    if getattr(args, "allow_external", False):
        options["allow_external"] = True
    return with_calibration(load(Path(path), **options), args)


def with_calibration(ds, args: argparse.Namespace):
    """Apply the calibrations given on the command line (they win over the file's)."""
    calibration = calibration_with(ds.calibration, args)
    if calibration is ds.calibration:
        return ds
    from dataclasses import replace

    return replace(ds, calibration=calibration)


def calibration_with(calibration, args: argparse.Namespace):
    """``calibration`` with the command line's calibration options applied (the same object
    when none is given)."""
    changes = {}
    if getattr(args, "energy", None) is not None:
        changes["energy_ev"] = float(args.energy) * 1e3
    if getattr(args, "convergence", None) is not None:
        changes["convergence_mrad"] = float(args.convergence)
    if getattr(args, "detector_pixel", None) is not None:
        changes["detector_pixel"] = (float(args.detector_pixel),) * 2
        changes["detector_units"] = "mrad"
    if getattr(args, "scan_step", None) is not None:
        changes["scan_step"] = (float(args.scan_step),) * 2
        changes["scan_units"] = "A"
    if not changes:
        return calibration
    try:
        return calibration.with_(source=USER, **changes)
    except ValueError as exc:
        raise UserError(f"calibration options: {exc}") from exc


def input_files(args: argparse.Namespace, *datasets) -> tuple[str, ...]:
    """Every input file of the command: file arguments and the files the data sets read."""
    files = [getattr(args, a, None) for a in ("data", "file", "image", "label", "reference", "model")]
    for ds in datasets:
        files.extend(ds.input_files)
    return tuple(str(f) for f in files if f)


def check_device(args: argparse.Namespace) -> None:
    if getattr(args, "device", None) != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (PyTorch "
                        f"{torch.__version__}); use --device cpu or --device auto")


def compute_choice(args: argparse.Namespace):
    """The ``--scheduler`` / ``--workers`` choice as a :class:`~.parallel.Compute`."""
    from ..parallel import Compute

    try:
        return Compute(scheduler=getattr(args, "scheduler", None),
                       workers=getattr(args, "workers", None))
    except ValueError as exc:
        raise UserError(f"--scheduler/--workers: {exc}") from exc


def centre_option(ds, spec: str | None, client=None):
    """``--centre``: 'CY,CX', or the bright-field disk of the mean of about 4,000 patterns
    spread over the scan (read on the workers when ``client`` is given)."""
    from ..detectors.centre import find_bf_centre
    from ..parallel import subsample_mean_pattern

    if spec and spec != "auto":
        try:
            cy, cx = (float(v) for v in spec.split(","))
        except ValueError as exc:
            raise UserError(f"--centre: expected 'auto' or 'CY,CX' in detector pixels, got {spec!r}") from exc
        ky, kx = ds.detector_shape
        if not (math.isfinite(cy) and math.isfinite(cx) and -ky <= cy <= 2 * ky and -kx <= cx <= 2 * kx):
            raise UserError(f"--centre {spec}: expected a centre near the {ky} x {kx} px detector")
        return cy, cx
    mean = subsample_mean_pattern(ds, client=client)
    try:
        if not np.isfinite(mean).all() or not np.any(mean):
            raise ValueError("no finite, nonzero mean pattern")
        return find_bf_centre(mean)
    except ValueError as exc:
        raise UserError(f"{ds.source}: cannot find the bright-field disk centre automatically "
                        f"({exc}); give it with --centre CY,CX (detector pixels)") from exc
