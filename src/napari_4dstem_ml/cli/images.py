"""``stemml adf`` (a virtual annular detector image) and ``stemml evaluate`` (an image against a
reference)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .args import (
    NON_NEGATIVE,
    POSITIVE,
    add_compute_options,
    add_data_options,
    number,
)
from .errors import UserError
from .inputs import (
    centre_option,
    compute_choice,
    input_files,
    load_data,
)
from .reporting import progress, report_image, run_to_sink


def cmd_adf(args: argparse.Namespace) -> int:
    from ..detectors.geometry import annular_mask
    from ..parallel import iter_virtual_image, open_client
    from ..parallel.sink import image_sink, prepare_sink

    compute = compute_choice(args)
    prepare_sink(args.output, overwrite=args.overwrite, inputs=input_files(args))
    ds = load_data(args.data, args)
    inputs = input_files(args, ds)
    prepare_sink(args.output, overwrite=args.overwrite, inputs=inputs)
    if args.outer <= args.inner:
        raise UserError(f"--outer ({args.outer}) must be larger than --inner ({args.inner})")
    if args.pixels:
        per_px = (1.0, 1.0)
    else:
        try:
            per_px = ds.calibration.require_detector_mrad("an annular detector in mrad")
        except ValueError as exc:
            raise UserError(f"{ds.source}: {exc}; give the radii in pixels with --pixels") from exc
    unit = "px" if args.pixels else "mrad"
    step = ds.calibration.scan_step_A
    from ..detectors import max_radius_px

    with open_client(compute) as client:
        centre = centre_option(ds, args.centre, client)
        reach = max_radius_px(ds.detector_shape, centre) * per_px[0]
        inner, outer = args.inner, args.outer
        if inner >= reach:
            raise UserError(
                f"--inner {inner:g} {unit} lies beyond the detector's reach ({reach:.4g} {unit} "
                f"from the pattern centre): the annulus would contain no detector pixel"
            )
        if outer > reach:
            print(f"stemml adf: warning: --outer {outer:g} {unit} is beyond the detector's reach; "
                  f"clipped to {reach:.4g} {unit} (the largest circle around the centre that the "
                  "detector holds)", file=sys.stderr)
            outer = reach
        mask = annular_mask(ds.detector_shape, centre, inner / per_px[0], outer / per_px[0])
        if not mask.any():
            raise UserError(
                f"--inner {inner:g} --outer {outer:g} ({unit}): the annulus about the centre "
                f"({centre[0]:.1f}, {centre[1]:.1f}) px holds no pixel of the "
                f"{ds.detector_shape[0]} x {ds.detector_shape[1]} px detector")
        with image_sink(args.output, ds.scan_shape, step[1] if step else None,
                        overwrite=args.overwrite, inputs=inputs) as sink, \
                progress(ds.scan_shape[0], "virtual detector") as bar:
            image = run_to_sink(iter_virtual_image(ds, mask, client=client), sink, bar)
            report_image(image, ds.source, "virtual image")
    print(f"wrote {args.output}: {inner:g}-{outer:.4g} {unit} detector, centre "
          f"({centre[0]:.2f}, {centre[1]:.2f}) px ({compute.describe()})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import compare
    from ..registration import load_label

    ext = bool(args.allow_external)
    img = load_label(args.image, allow_external=ext)
    ref = load_label(args.reference, dataset=args.dataset, allow_external=ext)
    image, reference = img.image, ref.image
    pixel = args.pixel_size or img.pixel_size_A or ref.pixel_size_A
    if image.shape != reference.shape:
        raise UserError(
            f"{args.image} is {image.shape[0]} x {image.shape[1]} but {args.reference} is "
            f"{reference.shape[0]} x {reference.shape[1]}; register the reference onto the scan grid first"
        )
    c = int(args.crop)
    for path, arr in ((args.image, image), (args.reference, reference)):
        inner = np.asarray(arr, np.float64)[c:arr.shape[0] - c or None, c:arr.shape[1] - c or None]
        if inner.size < 4:
            raise UserError(f"--crop {c}: nothing of the {arr.shape[0]} x {arr.shape[1]} image "
                            "is left to compare")
        bad = int(inner.size - np.isfinite(inner).sum())
        if bad:
            raise UserError(f"{path}: {bad} of the {inner.size} compared pixels are NaN/inf; "
                            "the metrics would be undefined")
        if not np.ptp(inner) > 0:
            raise UserError(f"{path} is constant ({inner.flat[0]:.6g}) over the compared region: "
                            "correlation, SSIM and contrast are undefined for a flat image")
    report = compare(image, reference, crop=args.crop, pixel_size=pixel or 1.0,
                     register=not args.no_register)
    print(report.summary() + ("" if pixel else " (FRC in pixels: no pixel size known)"))
    if report.pearson_r < 0:
        print(f"note: r is negative: {args.image} shows inverted contrast relative to "
              f"{args.reference} (SSIM and PSNR were taken after a fit with scale "
              f"{report.scale:.3g})")
    return 0


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("adf", help="virtual annular detector image")
    p.add_argument("data")
    p.add_argument("--inner", type=NON_NEGATIVE, required=True, help="inner radius (mrad, or px with --pixels)")
    p.add_argument("--outer", type=POSITIVE, required=True, help="outer radius (mrad, or px with --pixels)")
    p.add_argument("--pixels", action="store_true", help="radii in detector pixels instead of mrad")
    p.add_argument("--centre", default="auto", help="'auto' (bright-field disk) or 'CY,CX' in detector pixels")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.tif, .npy, .png, .h5, .zarr; HDF5/Zarr written as rows "
                        "arrive; in place only when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_data_options(p)
    add_compute_options(p)
    p.set_defaults(func=cmd_adf)

    p = sub.add_parser("evaluate", help="compare an image with a reference (PSNR, SSIM, r, FRC)")
    p.add_argument("image")
    p.add_argument("--reference", required=True)
    p.add_argument("--dataset", help="HDF5: path of the reference image inside the file")
    p.add_argument("--crop", type=number(int, 0), default=4, help="pixels cropped at each edge before comparing")
    p.add_argument("--pixel-size", type=POSITIVE, default=None, help="pixel size in Å (for FRC resolution)")
    p.add_argument("--no-register", action="store_true", help="compare as given, without a sub-pixel shift")
    p.add_argument("--allow-external", action="store_true",
                   help="HDF5: allow images stored in other files (external storage, virtual "
                        "datasets, external links); refused by default")
    p.set_defaults(func=cmd_evaluate)
