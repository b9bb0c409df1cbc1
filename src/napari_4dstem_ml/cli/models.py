"""``stemml train`` and ``stemml predict``: a model trained against a label, and applied to data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .args import (
    add_compute_options,
    add_data_options,
    number,
)
from .errors import UserError
from .inputs import (
    compute_choice,
    input_files,
    load_data,
)
from .reporting import progress, report_image, run_to_sink


def cmd_train(args: argparse.Namespace) -> int:
    from ..export import prepare_output
    from ..training.loop import EpochEvent, NoticeEvent, PrepareEvent, StepEvent
    from ..workflow import JobResult, Message, TrainingJob, run_job

    prepare_output(args.output, overwrite=args.overwrite, inputs=input_files(args), suffixes=(".pt",))
    ds = load_data(args.data, args)
    prepare_output(args.output, overwrite=args.overwrite, inputs=input_files(args, ds))
    job = TrainingJob.from_cli(args)
    prepared = job.prepare(ds)
    epochs = prepared[1][2].epochs
    tty = sys.stderr.isatty()
    bar = None
    result = None
    for event in run_job(job, ds, prepared=prepared):
        if isinstance(event, (Message, NoticeEvent)):
            print(event.text)
        elif isinstance(event, PrepareEvent):
            if event.done == 0:
                print(f"{event.stage} ({event.total} scan rows) ...")
        elif isinstance(event, StepEvent):
            if bar is None and tty:
                bar = progress(epochs, "training", unit="epochs")
            if bar is not None:
                bar.set_postfix(step=event.step, loss=f"{event.train_loss:.4g}")
        elif isinstance(event, EpochEvent):
            r = event.metrics.get("pearson_r", float("nan"))
            if bar is not None:
                bar.update(event.epoch + 1 - bar.n)
                bar.set_postfix(train=f"{event.train_loss:.4g}", val=f"{event.val_loss:.4g}", r=f"{r:.3f}")
            else:  # a log file or pipe: one line per epoch
                print(f"epoch {event.epoch}: train loss {event.train_loss:.4g}, validation loss "
                      f"{event.val_loss:.4g}, r {r:.3f}, {event.elapsed_s:.1f} s"
                      + (" (best)" if event.is_best else ""), flush=True)
        elif isinstance(event, JobResult):
            result = event
    if bar is not None:
        bar.close()
    if result is not None:
        print(result.report())
    return 0


def _baseline_paths(output: str, names: Sequence[str] = ("iCoM", "ADF")) -> list[Path]:
    """Where ``predict --baselines`` writes each baseline (``names``: those of
    :meth:`~napari_4dstem_ml.baselines.Baselines.images`), beside ``output``."""
    stem = Path(output)
    return [stem.with_name(f"{stem.stem}_{n.lower()}{stem.suffix}") for n in names]


def cmd_predict(args: argparse.Namespace) -> int:
    from ..export import IMAGE_SUFFIXES, prepare_output, write_image
    from ..parallel import iter_predict, open_client
    from ..parallel.sink import image_sink, prepare_sink
    from ..predict.events import PredictEvent
    from ..training.checkpoint import load_checkpoint
    from ..workflow import Message, reconstruct

    compute = compute_choice(args)
    if not compute.in_process and (args.uncertainty or args.baselines):
        raise UserError("--uncertainty and --baselines run in process; drop --scheduler/--workers")
    prepare_sink(args.output, overwrite=args.overwrite, inputs=input_files(args))
    if args.uncertainty:
        prepare_output(args.uncertainty, overwrite=args.overwrite, inputs=input_files(args),
                       suffixes=IMAGE_SUFFIXES)
    for path in _baseline_paths(args.output) if args.baselines else ():
        prepare_output(path, overwrite=args.overwrite, inputs=input_files(args))
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"{model_path}: no such model file")
    loaded = load_checkpoint(model_path)
    if args.uncertainty and not hasattr(loaded.model, "predict_field_members"):
        raise UserError(
            f"--uncertainty needs an ensemble model; {model_path} holds a single model "
            "(train with --ensemble 3, the CNN's default)"
        )
    ds = load_data(args.data, args)
    inputs = input_files(args, ds)
    prepare_sink(args.output, overwrite=args.overwrite, inputs=inputs)
    step = ds.calibration.scan_step_A
    if not compute.in_process:
        with open_client(compute) as client, \
                image_sink(args.output, ds.scan_shape, step[1] if step else None,
                           overwrite=args.overwrite, inputs=inputs) as sink, \
                progress(ds.scan_shape[0], "predict") as bar:
            image = run_to_sink(iter_predict(loaded.model, loaded.preprocessor, ds, client=client),
                                 sink, bar)
            report_image(image, ds.source, "prediction")
        print(f"wrote {args.output} ({image.shape[0]} x {image.shape[1]}; {compute.describe()})")
        return 0

    report = None
    gen = reconstruct(loaded, ds, baselines=bool(args.baselines))
    with progress(ds.scan_shape[0], "predict") as bar:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                report = stop.value
                break
            if isinstance(event, PredictEvent):
                bar.update(event.rows_done - bar.n)
            elif isinstance(event, Message):
                bar.write(f"stemml predict: {event.text}", file=sys.stderr)
    report_image(report.image, ds.source, "prediction")
    step = ds.calibration.scan_step_A
    px = step[1] if step else None
    meta = {"model": str(model_path), "data": str(args.data), **report.metadata()}
    if Path(args.output).suffix.lower() in IMAGE_SUFFIXES:
        out = write_image(args.output, report.image, px, overwrite=args.overwrite, metadata=meta,
                          inputs=inputs)
    else:  # HDF5 or Zarr
        with image_sink(args.output, ds.scan_shape, px, overwrite=args.overwrite,
                        inputs=inputs) as sink:
            sink.write(0, ds.scan_shape[0], report.image)
        out = args.output
    print(f"wrote {out} ({report.image.shape[0]} x {report.image.shape[1]})")
    if args.uncertainty:
        u = write_image(args.uncertainty, report.uncertainty, px, overwrite=args.overwrite,
                        inputs=inputs,
                        metadata={**meta, "quantity": "ensemble standard deviation (label units)"})
        print(f"wrote {u} (uncertainty: ensemble standard deviation)")
    if args.baselines:
        for name, img in report.baselines.images().items():
            path = _baseline_paths(args.output, (name,))[0]
            write_image(path, img, px, overwrite=args.overwrite, inputs=inputs,
                        metadata={"data": str(args.data), "baseline": name, **report.baselines.info})
            print(f"wrote {path} ({name})")
    if report.issues:
        print(f"stemml predict: warning: the data lie outside the model's training domain in "
              f"{len(report.issues)} respect(s); treat the image with caution (recorded in its "
              "metadata)", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("train", help="train a model against a label image")
    p.add_argument("data")
    p.add_argument("--label", required=True, help="label image (TIFF, NumPy, HDF5, PNG, .mat)")
    p.add_argument("--label-dataset", help="HDF5: path of the label image inside the file")
    p.add_argument("--label-pixel", type=number(float, 0, 1e4, lo_open=True), help="label pixel size in Å (if the file does not say)")
    p.add_argument("--model", choices=("linear", "conv4d"), default="conv4d")
    p.add_argument("--init", default="base",
                   help="'base' (default: fine-tune the shipped base model), 'scratch', or a checkpoint to fine-tune")
    p.add_argument("--ensemble", type=number(int, 1, 32), default=None,
                   help="members of a deep ensemble, for uncertainty maps (default 3 for the CNN from scratch)")
    p.add_argument("--no-augment", action="store_true", help="no on-the-fly augmentation")
    p.add_argument("--cluster", type=number(int, 1, 63, odd=True), default=5, help="cluster size K (odd)")
    p.add_argument("--epochs", type=number(int, 1, 10**6), default=None)
    p.add_argument("--lr", type=number(float, 0, 10, lo_open=True), default=None)
    p.add_argument("--batch-size", type=number(int, 1, 2**20), default=None)
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--detector-size", type=number(int, 2, 1024), default=None, help="model detector grid (pixels per side; default 48)")
    p.add_argument("--max-angle", type=number(float, 0, 1000, lo_open=True), default=None, help="detector crop radius in mrad")
    p.add_argument("--no-register", action="store_true", help="the label is already on the scan grid")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_data_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="apply a trained model to a data set")
    p.add_argument("data")
    p.add_argument("--model", required=True, help="checkpoint written by 'stemml train'")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.tif, .npy, .png, .h5, .zarr; HDF5/Zarr written as rows "
                        "arrive with --scheduler/--workers; in place only when complete)")
    p.add_argument("--uncertainty", metavar="UNC", help="also write the per-pixel uncertainty (ensemble spread) here")
    p.add_argument("--baselines", action="store_true",
                   help="also write the iCoM and ADF images of the same data (OUT_icom, OUT_adf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_data_options(p)
    add_compute_options(p)
    p.set_defaults(func=cmd_predict)
