"""The ``stemml`` command line: headless access to everything the GUI does.

User errors (bad arguments, unreadable or broken files, existing outputs) print one clear
message and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2


class UserError(Exception):
    """An error caused by the user's input: reported as a message, exit status 2."""


def _load(path: str, args: argparse.Namespace):
    from .io import load

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    options = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    return load(p, **options)


def _progress(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


# -- commands ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    ds = _load(args.file, args)
    print(ds.summary())
    return 0


def _centre(ds, spec: str | None):
    from .detectors.centre import find_bf_centre
    from .detectors.engine import mean_pattern

    if spec and spec != "auto":
        try:
            cy, cx = (float(v) for v in spec.split(","))
        except ValueError as exc:
            raise UserError(f"--centre: expected 'auto' or 'CY,CX' in detector pixels, got {spec!r}") from exc
        return cy, cx
    return find_bf_centre(mean_pattern(ds.data))


def cmd_adf(args: argparse.Namespace) -> int:
    from .detectors.engine import iter_virtual_images
    from .detectors.geometry import annular_mask
    from .export import IMAGE_SUFFIXES, prepare_output, write_image

    prepare_output(args.output, overwrite=args.overwrite, suffixes=IMAGE_SUFFIXES)
    ds = _load(args.data, args)
    if args.outer <= args.inner:
        raise UserError(f"--outer ({args.outer}) must be larger than --inner ({args.inner})")
    if args.pixels:
        per_px = (1.0, 1.0)
    else:
        try:
            per_px = ds.calibration.require_detector_mrad("an annular detector in mrad")
        except ValueError as exc:
            raise UserError(f"{ds.source}: {exc}; give the radii in pixels with --pixels") from exc
    centre = _centre(ds, args.centre)
    mask = annular_mask(ds.detector_shape, centre, args.inner / per_px[0], args.outer / per_px[0])
    image = None
    with _progress(ds.scan_shape[0], "virtual detector") as bar:
        for event in iter_virtual_images(ds.data, mask):
            bar.update(event.rows_done - bar.n)
            image = event.image
    step = ds.calibration.scan_step_A
    out = write_image(args.output, image, step[1] if step else None, overwrite=args.overwrite)
    unit = "px" if args.pixels else "mrad"
    print(f"wrote {out}: {args.inner:g}-{args.outer:g} {unit} detector, centre ({centre[0]:.2f}, {centre[1]:.2f}) px")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .export import prepare_output
    from .training.loop import EpochEvent, PrepareEvent, StepEvent
    from .workflow import JobResult, Message, TrainingJob, run_job

    prepare_output(args.output, overwrite=args.overwrite, suffixes=(".pt",))
    ds = _load(args.data, args)
    job = TrainingJob.from_cli(args)
    epochs = job.configs(ds)[2].epochs
    bar = None
    result = None
    for event in run_job(job, ds):
        if isinstance(event, Message):
            print(event.text)
        elif isinstance(event, PrepareEvent):
            if event.done == 0:
                print(f"{event.stage} ({event.total} scan rows) ...")
        elif isinstance(event, StepEvent):
            if bar is None:
                bar = _progress(epochs, "training", unit="epochs")
            bar.set_postfix(step=event.step, loss=f"{event.train_loss:.4g}")
        elif isinstance(event, EpochEvent) and bar is not None:
            bar.update(event.epoch + 1 - bar.n)
            r = event.metrics.get("pearson_r", float("nan"))
            bar.set_postfix(train=f"{event.train_loss:.4g}", val=f"{event.val_loss:.4g}", r=f"{r:.3f}")
        elif isinstance(event, JobResult):
            result = event
    if bar is not None:
        bar.close()
    if result is not None:
        print(result.report())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .export import IMAGE_SUFFIXES, prepare_output, write_image
    from .training.checkpoint import load_checkpoint
    from .training.inference import iter_predict

    prepare_output(args.output, overwrite=args.overwrite, suffixes=IMAGE_SUFFIXES)
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"{model_path}: no such model file")
    loaded = load_checkpoint(model_path)
    ds = _load(args.data, args)
    image = None
    with _progress(ds.scan_shape[0], "predict") as bar:
        for event in iter_predict(loaded.model, loaded.preprocessor, ds):
            bar.update(event.rows_done - bar.n)
            image = event.image
    step = ds.calibration.scan_step_A
    out = write_image(args.output, image, step[1] if step else None, overwrite=args.overwrite)
    print(f"wrote {out} ({image.shape[0]} x {image.shape[1]})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import compare
    from .registration import load_label

    img = load_label(args.image)
    ref = load_label(args.reference, dataset=args.dataset)
    image, reference = img.image, ref.image
    pixel = args.pixel_size or img.pixel_size_A or ref.pixel_size_A
    if image.shape != reference.shape:
        raise UserError(
            f"{args.image} is {image.shape[0]} x {image.shape[1]} but {args.reference} is "
            f"{reference.shape[0]} x {reference.shape[1]}; register the reference onto the scan grid first"
        )
    report = compare(image, reference, crop=args.crop, pixel_size=pixel or 1.0)
    print(report.summary() + ("" if pixel else " (FRC in pixels: no pixel size known)"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .launch import run_headless

    models = ("linear", "conv4d") if args.model == "both" else (args.model,)
    run_headless(args.output, models=models, time_limit_s=args.time_limit)
    return 0


# -- parser -----------------------------------------------------------------------------
def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="HDF5: path of the 4D dataset inside the file")
    p.add_argument("--scan-shape", nargs=2, type=int, metavar=("NY", "NX"), help="scan shape when the file does not say")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="stemml", description="4D-STEM machine-learning reconstruction")
    parser.add_argument("--version", action="version", version=f"napari-4dstem-ml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print shape, dtype, calibrations and the reader used")
    p.add_argument("file")
    _add_data_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("adf", help="virtual annular detector image")
    p.add_argument("data")
    p.add_argument("--inner", type=float, required=True, help="inner radius (mrad, or px with --pixels)")
    p.add_argument("--outer", type=float, required=True, help="outer radius (mrad, or px with --pixels)")
    p.add_argument("--pixels", action="store_true", help="radii in detector pixels instead of mrad")
    p.add_argument("--centre", default="auto", help="'auto' (bright-field disk) or 'CY,CX' in detector pixels")
    p.add_argument("-o", "--output", required=True, help="output image (.tif, .npy, .png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_data_options(p)
    p.set_defaults(func=cmd_adf)

    p = sub.add_parser("train", help="train a model against a label image")
    p.add_argument("data")
    p.add_argument("--label", required=True, help="label image (TIFF, NumPy, HDF5, PNG, .mat)")
    p.add_argument("--label-dataset", help="HDF5: path of the label image inside the file")
    p.add_argument("--label-pixel", type=float, help="label pixel size in Å (if the file does not say)")
    p.add_argument("--model", choices=("linear", "conv4d"), default="linear")
    p.add_argument("--cluster", type=int, default=5, help="cluster size K (odd)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--detector-size", type=int, default=64, help="model detector grid (pixels per side)")
    p.add_argument("--max-angle", type=float, default=None, help="detector crop radius in mrad")
    p.add_argument("--no-register", action="store_true", help="the label is already on the scan grid")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_data_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="apply a trained model to a data set")
    p.add_argument("data")
    p.add_argument("--model", required=True, help="checkpoint written by 'stemml train'")
    p.add_argument("-o", "--output", required=True, help="output image (.tif, .npy, .png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_data_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="compare an image with a reference (PSNR, SSIM, r, FRC)")
    p.add_argument("image")
    p.add_argument("--reference", required=True)
    p.add_argument("--dataset", help="HDF5: path of the reference image inside the file")
    p.add_argument("--crop", type=int, default=4, help="pixels cropped at each edge before comparing")
    p.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (for FRC resolution)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole workflow on the bundled MoS2 and PrScO3 samples")
    p.add_argument("-o", "--output", default="stemml-output", help="folder for a new run subfolder")
    p.add_argument("--model", choices=("linear", "conv4d", "both"), default="both")
    p.add_argument("--time-limit", type=float, default=300.0, help="training time limit per model (s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stemml: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as exc:
        print(f"stemml {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
