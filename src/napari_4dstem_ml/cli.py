"""The ``stemml`` command line: headless access to everything the GUI does.

Errors: every user-facing error (bad arguments, unreadable, broken or hostile files, existing
or unwritable outputs, data that would give garbage) prints one message naming the file or
option and what was expected, and exits with status 2; no traceback. Anything else is an
internal error: one line, status 1 (``STEMML_DEBUG=1`` shows the traceback). Arguments are
validated by range when parsed (0 is a value, not "unset"); outputs are validated before any
work and written through :func:`napari_4dstem_ml.export.output_file` (never over an input).
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_STALLED = 3  # stemml live: the acquisition stopped before the scan was complete
#: load() keywords as command-line options (for messages that say how to resolve an error)
_OPTION_FLAGS = {"dataset": "--dataset", "key": "--dataset", "scan_shape": "--scan-shape",
                 "allow_external": "--allow-external"}


class UserError(Exception):
    """An error caused by the user's input: reported as a message, exit status 2."""


# -- argument types: range-checked where they are parsed ----------------------------------
def _number(kind, lo=None, hi=None, *, lo_open=False, odd=False):
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


POSITIVE = _number(float, 0, lo_open=True)
NON_NEGATIVE = _number(float, 0)
COUNT = _number(int, 1)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)


# -- shared helpers -----------------------------------------------------------------------
def _load(path: str, args: argparse.Namespace):
    """Open a data file with the command's data options (``--dataset``, ``--scan-shape``,
    ``--allow-external``)."""
    from .io import load

    options = {}
    if getattr(args, "dataset", None):
        options["dataset"] = args.dataset
    if getattr(args, "scan_shape", None):
        options["scan_shape"] = tuple(args.scan_shape)
    if getattr(args, "allow_external", False):
        options["allow_external"] = True
    return _with_calibration(load(Path(path), **options), args)


def _with_calibration(ds, args: argparse.Namespace):
    """Apply the calibrations given on the command line (they win over the file's)."""
    calibration = _calibration_with(ds.calibration, args)
    if calibration is ds.calibration:
        return ds
    from dataclasses import replace

    return replace(ds, calibration=calibration)


def _calibration_with(calibration, args: argparse.Namespace):
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
        return calibration.with_(**changes)
    except ValueError as exc:
        raise UserError(f"calibration options: {exc}") from exc


def _inputs(args: argparse.Namespace, *datasets) -> tuple[str, ...]:
    """Every input file of the command: file arguments and the files the data sets read."""
    files = [getattr(args, a, None) for a in ("data", "file", "image", "label", "reference", "model")]
    for ds in datasets:
        files.extend(ds.input_files)
    return tuple(str(f) for f in files if f)


def _check_device(args: argparse.Namespace) -> None:
    if getattr(args, "device", None) != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (PyTorch "
                        f"{torch.__version__}); use --device cpu or --device auto")


def _report_image(image: np.ndarray, source, what: str) -> None:
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


def _progress(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


# -- commands ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .parallel import open_client

    ds = _load(args.file, args)
    print(ds.summary())
    compute = _compute(args)
    if not compute.in_process:
        with open_client(compute) as client:
            info = client.scheduler_info()
            workers = info.get("workers", {})
            threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
            memory = sum(float(w.get("memory_limit", 0) or 0) for w in workers.values())
            print(f"compute: {compute.describe()} at {info.get('address', '?')}: {len(workers)} "
                  f"worker(s), {threads} thread(s), {memory / 1e9:.1f} GB memory")
    return 0


def _compute(args: argparse.Namespace):
    """The ``--scheduler`` / ``--workers`` choice as a :class:`~.parallel.Compute`."""
    from .parallel import Compute

    try:
        return Compute(scheduler=getattr(args, "scheduler", None),
                       workers=getattr(args, "workers", None))
    except ValueError as exc:
        raise UserError(f"--scheduler/--workers: {exc}") from exc


def _run_to_sink(events, sink, bar):
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


def _centre(ds, spec: str | None, client=None):
    """``--centre``: 'CY,CX', or the bright-field disk of the mean of about 4,000 patterns
    spread over the scan (read on the workers when ``client`` is given)."""
    from .detectors.centre import find_bf_centre
    from .parallel import subsample_mean_pattern

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


def cmd_adf(args: argparse.Namespace) -> int:
    from .detectors.geometry import annular_mask
    from .parallel import iter_virtual_image, open_client
    from .parallel.sink import image_sink, prepare_sink

    compute = _compute(args)
    prepare_sink(args.output, overwrite=args.overwrite, inputs=_inputs(args))
    ds = _load(args.data, args)
    inputs = _inputs(args, ds)
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
    from .detectors import max_radius_px

    with open_client(compute) as client:
        centre = _centre(ds, args.centre, client)
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
                _progress(ds.scan_shape[0], "virtual detector") as bar:
            image = _run_to_sink(iter_virtual_image(ds, mask, client=client), sink, bar)
            _report_image(image, ds.source, "virtual image")
    print(f"wrote {args.output}: {inner:g}-{outer:.4g} {unit} detector, centre "
          f"({centre[0]:.2f}, {centre[1]:.2f}) px ({compute.describe()})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .export import prepare_output
    from .training.loop import EpochEvent, NoticeEvent, PrepareEvent, StepEvent
    from .workflow import JobResult, Message, TrainingJob, run_job

    prepare_output(args.output, overwrite=args.overwrite, inputs=_inputs(args), suffixes=(".pt",))
    ds = _load(args.data, args)
    prepare_output(args.output, overwrite=args.overwrite, inputs=_inputs(args, ds))
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
                bar = _progress(epochs, "training", unit="epochs")
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
    from .export import IMAGE_SUFFIXES, prepare_output, write_image
    from .parallel import iter_predict, open_client
    from .parallel.sink import image_sink, prepare_sink
    from .training.checkpoint import load_checkpoint
    from .training.inference import PredictEvent
    from .workflow import Message, reconstruct

    compute = _compute(args)
    if not compute.in_process and (args.uncertainty or args.baselines):
        raise UserError("--uncertainty and --baselines run in process; drop --scheduler/--workers")
    prepare_sink(args.output, overwrite=args.overwrite, inputs=_inputs(args))
    if args.uncertainty:
        prepare_output(args.uncertainty, overwrite=args.overwrite, inputs=_inputs(args),
                       suffixes=IMAGE_SUFFIXES)
    for path in _baseline_paths(args.output) if args.baselines else ():
        prepare_output(path, overwrite=args.overwrite, inputs=_inputs(args))
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"{model_path}: no such model file")
    loaded = load_checkpoint(model_path)
    if args.uncertainty and not hasattr(loaded.model, "predict_field_members"):
        raise UserError(
            f"--uncertainty needs an ensemble model; {model_path} holds a single model "
            "(train with --ensemble 3, the CNN's default)"
        )
    ds = _load(args.data, args)
    inputs = _inputs(args, ds)
    prepare_sink(args.output, overwrite=args.overwrite, inputs=inputs)
    step = ds.calibration.scan_step_A
    if not compute.in_process:
        with open_client(compute) as client, \
                image_sink(args.output, ds.scan_shape, step[1] if step else None,
                           overwrite=args.overwrite, inputs=inputs) as sink, \
                _progress(ds.scan_shape[0], "predict") as bar:
            image = _run_to_sink(iter_predict(loaded.model, loaded.preprocessor, ds, client=client),
                                 sink, bar)
            _report_image(image, ds.source, "prediction")
        print(f"wrote {args.output} ({image.shape[0]} x {image.shape[1]}; {compute.describe()})")
        return 0

    report = None
    gen = reconstruct(loaded, ds, baselines=bool(args.baselines))
    with _progress(ds.scan_shape[0], "predict") as bar:
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
    _report_image(report.image, ds.source, "prediction")
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


def cmd_replay(args: argparse.Namespace) -> int:
    from .live import replay

    ds = _load(args.source, args)
    dst = Path(args.destination)
    for p in (dst, dst.with_suffix(".xml")):
        if str(p.resolve()) in {str(Path(f).resolve()) for f in _inputs(args, ds)}:
            raise UserError(f"{p}: the replay would overwrite its own source")
    ny, nx = ds.scan_shape
    with _progress(ny * nx, f"replay at {args.rate:g} Hz" if args.rate else "replay",
                   unit="frames") as bar:
        replay(ds, dst, args.rate, overwrite=args.overwrite,
               progress=lambda n, total: bar.update(n - bar.n))
    print(f"wrote {dst} ({ny} x {nx} frames) and {dst.with_suffix('.xml').name}")
    return 0


def _live_outputs(args: argparse.Namespace, names: list[str]) -> dict[str, Path]:
    """Output path per image: the model's at ``-o``; the virtual image at ``-o`` without a
    model, else with ``_adf`` added to the name."""
    out = Path(args.output)
    paths = {}
    for n in names:
        if n == "model" or (n == "adf" and "model" not in names):
            paths[n] = out
        else:
            paths[n] = out.with_name(f"{out.stem}_{n}{out.suffix}")
    return paths


def _partial_name(p: Path) -> Path:
    return p.with_name(f"{p.stem}.partial{p.suffix}")


def _live_source(args: argparse.Namespace):
    """The growing EMPAD file, or the Merlin stream of ``merlin://HOST:PORT``."""
    from .live import open_source

    try:
        return open_source(args.data, timeout_s=args.timeout,
                           scan_shape=tuple(args.scan_shape) if args.scan_shape else None)
    except ImportError as exc:
        raise UserError(str(exc)) from exc


def cmd_live(args: argparse.Namespace) -> int:
    from .detectors.centre import find_bf_centre
    from .detectors.geometry import annular_mask
    from .export import IMAGE_SUFFIXES, prepare_output, write_image
    from .live import LivePipeline, run_live

    if args.model is None and args.inner is None:
        raise UserError("nothing to compute: give --model and/or --inner/--outer")
    if (args.inner is None) != (args.outer is None):
        raise UserError("--inner and --outer go together")
    if args.inner is not None and args.outer <= args.inner:
        raise UserError(f"--outer ({args.outer}) must be larger than --inner ({args.inner})")
    names = (["adf"] if args.inner is not None else []) + (["model"] if args.model else [])
    outputs = _live_outputs(args, names)
    src_files = (args.data, str(Path(args.data).with_suffix(".xml")), args.model)
    if args.data.lower().startswith("merlin://"):
        src_files = (args.model,)
    for p in outputs.values():
        prepare_output(p, overwrite=args.overwrite, inputs=[f for f in src_files if f],
                       suffixes=IMAGE_SUFFIXES)
        prepare_output(_partial_name(p), overwrite=True, inputs=[f for f in src_files if f])
    loaded = None
    if args.model:
        from .training.checkpoint import load_checkpoint

        if not Path(args.model).exists():
            raise UserError(f"{args.model}: no such model file")
        loaded = load_checkpoint(args.model)
    source = _live_source(args)
    calibration = _calibration_with(source.calibration, args)
    detectors = {}
    if args.inner is not None:
        if args.pixels:
            per_px = 1.0
        else:
            px = calibration.detector_pixel_mrad
            if px is None:
                raise UserError(f"{args.data}: the acquisition gives no detector pixel size in "
                                "mrad; give it with --detector-pixel MRAD, or the radii in "
                                "pixels with --pixels")
            per_px = px[0]
        det = source.detector_shape
        if args.centre and args.centre != "auto":
            try:
                cy, cx = (float(v) for v in args.centre.split(","))
            except ValueError as exc:
                raise UserError(f"--centre: expected 'auto' or 'CY,CX', got {args.centre!r}") from exc
            detectors["adf"] = annular_mask(det, (cy, cx), args.inner / per_px, args.outer / per_px)
        else:
            detectors["adf"] = lambda mean: annular_mask(det, find_bf_centre(mean),
                                                         args.inner / per_px, args.outer / per_px)
    pipe = LivePipeline(source.scan_shape, source.detector_shape, detectors=detectors,
                        model=loaded.model if loaded else None,
                        preprocessor=loaded.preprocessor if loaded else None,
                        calibration=calibration)
    pipe.warm_up()
    ny, nx = source.scan_shape
    last = names[-1]
    with _progress(ny, f"live {Path(args.data).name}") as bar:
        def show(ev):
            bar.update(ev.rows_done[last] - bar.n)
            bar.set_postfix(acquired=ev.rows_acquired, rate=f"{ev.frames_per_s:.0f}/s",
                            latency=f"{ev.latency_s * 1e3:.0f}ms", refresh=False)

        result = run_live(source, pipe, show)
    step = source.calibration.scan_step_A
    pixel = step[1] if step else None
    if not result.complete:
        saved = []
        for n in names:
            if result.rows_done[n] > 0:
                p = _partial_name(outputs[n])
                write_image(p, result.images[n], pixel, overwrite=True)
                saved.append(f"{p} ({result.rows_done[n]} of {ny} rows)")
        where = "; partial image(s) saved as " + ", ".join(saved) if saved else "; nothing to save"
        print(f"stemml live: {result.message}{where}", file=sys.stderr)
        return EXIT_STALLED
    for n in names:
        write_image(outputs[n], result.images[n], pixel, overwrite=args.overwrite)
        print(f"wrote {outputs[n]} ({n}, {ny} x {nx})")
    print(f"{result.frames} frames in {result.elapsed_s:.1f} s ({result.frames / max(result.elapsed_s, 1e-9):.0f} "
          f"frames/s); slowest block processed in {result.max_latency_s * 1e3:.0f} ms")


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
    report = compare(image, reference, crop=args.crop, pixel_size=pixel or 1.0,
                     register=not args.no_register)
    print(report.summary() + ("" if pixel else " (FRC in pixels: no pixel size known)"))
    if report.pearson_r < 0:
        print(f"note: r is negative: {args.image} shows inverted contrast relative to "
              f"{args.reference} (SSIM and PSNR were taken after a fit with scale "
              f"{report.scale:.3g})")
    return 0


def _range(values, name: str, positive: bool = True) -> tuple[float, float] | None:
    if values is None:
        return None
    v = [float(x) for x in values]
    lo, hi = (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
    if lo > hi or (positive and lo <= 0):
        raise UserError(f"{name}: expected MIN [MAX] with {'0 < ' if positive else ''}MIN <= MAX, got {values}")
    return lo, hi


def cmd_simulate_train(args: argparse.Namespace) -> int:
    from .simtrain import SimTrainJob, SimTrainPlan, simulate_train
    from .simulate.series import SeriesEvent
    from .training.loop import EpochEvent
    from .workflow import JobResult, Message

    try:
        job = SimTrainJob(
            structure=args.structure, output=args.output, work_dir=args.work_dir,
            zone_axis=tuple(args.zone) if args.zone else None,
            thickness_nm=_range(args.thickness, "--thickness"),
            defocus_nm=_range(args.defocus, "--defocus", positive=False) or (0.0, 0.0),
            dose=_range(args.dose, "--dose"), tilt_mrad=args.tilt,
            energy_kev=tuple(args.energy), convergence_mrad=_range(args.convergence, "--convergence"),
            detector_pixel_mrad=args.detector_pixel, detector_size=args.detector_size,
            scan_step_A=_range(args.scan_step, "--scan-step"), scan_shape=tuple(args.scan_shape),
            items=args.items, model=args.model, init=args.init, epochs=args.epochs, seed=args.seed,
            overwrite=args.overwrite)
    except ImportError as exc:
        raise UserError(f"simulate-train needs the simulation extra: pip install 'napari-4dstem-ml[sim]' ({exc})") from exc
    bar = None
    result = None
    try:
        for ev in simulate_train(job):
            if isinstance(ev, SimTrainPlan):
                print(ev.summary())
                for name, done in zip(ev.names, ev.finished):
                    print(f"  {name}{' (done)' if done else ''}")
                if args.plan_only:
                    return 0
            elif isinstance(ev, SeriesEvent):
                if bar is None and sys.stderr.isatty():
                    bar = _progress(ev.n_items, "simulating", unit="items")
                if bar is not None:
                    bar.n = ev.index
                    eta = "" if ev.eta_s is None else f"{ev.eta_s / 60:.1f} min left"
                    bar.set_postfix_str(f"{ev.event.stage} {eta}")
                elif ev.event.stage == "done":
                    print(f"simulated {ev.index + 1}/{ev.n_items} in {ev.elapsed_s:.0f} s", flush=True)
            elif isinstance(ev, Message):
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.text)
            elif isinstance(ev, EpochEvent):
                r = ev.metrics.get("pearson_r", float("nan"))
                print(f"epoch {ev.epoch}: validation loss {ev.val_loss:.4g}, r {r:.3f}, {ev.elapsed_s:.0f} s",
                      flush=True)
            elif isinstance(ev, JobResult):
                result = ev
    except ImportError as exc:
        raise UserError(f"simulate-train needs the simulation extra: pip install 'napari-4dstem-ml[sim]' ({exc})") from exc
    finally:
        if bar is not None:
            bar.close()
    if result is not None:
        print(result.report())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .launch import run_headless

    models = ("linear", "conv4d") if args.model == "both" else (args.model,)
    run_headless(args.output, models=models, time_limit_s=args.time_limit)
    return 0


# -- parser -----------------------------------------------------------------------------
def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="HDF5: path of the 4D dataset inside the file")
    p.add_argument("--scan-shape", nargs=2, type=COUNT, metavar=("NY", "NX"), help="scan shape when the file does not say")
    p.add_argument("--allow-external", action="store_true",
                   help="HDF5: allow data stored in other files (external storage, virtual "
                        "datasets, external links); refused by default")
    _add_calibration_options(p)


def _add_calibration_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (wins over the file's)")
    g.add_argument("--energy", type=POSITIVE, metavar="KEV", help="beam energy (keV)")
    g.add_argument("--convergence", type=POSITIVE, metavar="MRAD", help="convergence semi-angle α (mrad)")
    g.add_argument("--detector-pixel", type=POSITIVE, metavar="MRAD", help="detector pixel (mrad)")
    g.add_argument("--scan-step", type=POSITIVE, metavar="ANGSTROM", help="scan step (Å)")


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this running Dask distributed scheduler (workers read the file "
                        "themselves: give a path they can open)")
    g.add_argument("--workers", type=COUNT, metavar="N",
                   help="start a local Dask cluster of N worker processes (default: in process)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="stemml", description="4D-STEM machine-learning reconstruction")
    parser.add_argument("--version", action="version", version=f"napari-4dstem-ml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="print shape, dtype, calibrations and the reader used")
    p.add_argument("file")
    _add_data_options(p)
    _add_compute_options(p)
    p.set_defaults(func=cmd_info)

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
    _add_data_options(p)
    _add_compute_options(p)
    p.set_defaults(func=cmd_adf)

    p = sub.add_parser("train", help="train a model against a label image")
    p.add_argument("data")
    p.add_argument("--label", required=True, help="label image (TIFF, NumPy, HDF5, PNG, .mat)")
    p.add_argument("--label-dataset", help="HDF5: path of the label image inside the file")
    p.add_argument("--label-pixel", type=_number(float, 0, 1e4, lo_open=True), help="label pixel size in Å (if the file does not say)")
    p.add_argument("--model", choices=("linear", "conv4d"), default="conv4d")
    p.add_argument("--init", default="base",
                   help="'base' (default: fine-tune the shipped base model), 'scratch', or a checkpoint to fine-tune")
    p.add_argument("--ensemble", type=_number(int, 1, 32), default=None,
                   help="members of a deep ensemble, for uncertainty maps (default 3 for the CNN from scratch)")
    p.add_argument("--no-augment", action="store_true", help="no on-the-fly augmentation")
    p.add_argument("--cluster", type=_number(int, 1, 63, odd=True), default=5, help="cluster size K (odd)")
    p.add_argument("--epochs", type=_number(int, 1, 10**6), default=None)
    p.add_argument("--lr", type=_number(float, 0, 10, lo_open=True), default=None)
    p.add_argument("--batch-size", type=_number(int, 1, 2**20), default=None)
    p.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--detector-size", type=_number(int, 2, 1024), default=None, help="model detector grid (pixels per side; default 48)")
    p.add_argument("--max-angle", type=_number(float, 0, 1000, lo_open=True), default=None, help="detector crop radius in mrad")
    p.add_argument("--no-register", action="store_true", help="the label is already on the scan grid")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_data_options(p)
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
    _add_data_options(p)
    _add_compute_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("replay", help="write an EMPAD acquisition in progress (XML, then frames at a rate)")
    p.add_argument("source", help="4D data set to replay (128 x 128 detector)")
    p.add_argument("destination", help="EMPAD .raw file to write (its .xml beside it)")
    p.add_argument("--rate", type=NON_NEGATIVE, default=1100.0, help="frames per second (0: as fast as possible)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    _add_data_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("live", help="reconstruct a growing EMPAD acquisition row by row")
    p.add_argument("data", help="EMPAD .raw being written (its .xml is read first), or "
                                "merlin://HOST:PORT for a Merlin detector's TCP data stream")
    p.add_argument("--model", help="checkpoint written by 'stemml train'")
    p.add_argument("--inner", type=NON_NEGATIVE, help="virtual annular detector: inner radius (mrad, or px with --pixels)")
    p.add_argument("--outer", type=POSITIVE, help="outer radius (mrad, or px with --pixels)")
    p.add_argument("--pixels", action="store_true", help="radii in detector pixels instead of mrad")
    p.add_argument("--centre", default="auto", help="'auto' (bright-field disk of the first row) or 'CY,CX' px")
    p.add_argument("--timeout", type=POSITIVE, default=10.0,
                   help="seconds without a new frame before giving up (partial images are saved as NAME.partial.tif)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.tif, .npy, .png); with a model and a detector the virtual image goes to NAME_adf.tif")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--scan-shape", nargs=2, type=COUNT, metavar=("NY", "NX"),
                   help="Merlin: the scan shape when the acquisition header does not give it")
    _add_calibration_options(p)
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("evaluate", help="compare an image with a reference (PSNR, SSIM, r, FRC)")
    p.add_argument("image")
    p.add_argument("--reference", required=True)
    p.add_argument("--dataset", help="HDF5: path of the reference image inside the file")
    p.add_argument("--crop", type=_number(int, 0), default=4, help="pixels cropped at each edge before comparing")
    p.add_argument("--pixel-size", type=POSITIVE, default=None, help="pixel size in Å (for FRC resolution)")
    p.add_argument("--no-register", action="store_true", help="compare as given, without a sub-pixel shift")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate-train", help="simulate your structure (abTEM) and train a model on it")
    p.add_argument("structure", help="a material name (e.g. MoS2, SrTiO3) or a CIF / ASE-readable file")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (.pt)")
    p.add_argument("--zone", nargs=3, type=int, metavar=("U", "V", "W"), help="zone axis [uvw] (default: [001])")
    p.add_argument("--thickness", nargs="+", type=float, metavar="NM", help="thickness MIN [MAX] in nm (bulk crystals)")
    p.add_argument("--defocus", nargs="+", type=float, metavar="NM", help="defocus MIN [MAX] in nm (default 0)")
    p.add_argument("--dose", nargs="+", type=float, default=[1e4, 1e5], metavar="E", help="dose MIN [MAX] in e⁻/pattern")
    p.add_argument("--tilt", type=float, default=0.0, metavar="MRAD", help="largest crystal tilt (mrad)")
    p.add_argument("--energy", nargs="+", type=float, default=[80.0], metavar="KEV", help="beam energies (keV)")
    p.add_argument("--convergence", nargs="+", type=float, default=[21.4], metavar="MRAD", help="α MIN [MAX] (mrad)")
    p.add_argument("--detector-pixel", type=float, default=0.84, metavar="MRAD", help="your detector's pixel (mrad)")
    p.add_argument("--detector-size", type=int, default=128, help="your detector's pixels per side")
    p.add_argument("--scan-step", nargs="+", type=float, default=[0.25], metavar="ANGSTROM", help="scan step MIN [MAX] (Å)")
    p.add_argument("--scan-shape", nargs=2, type=int, default=[48, 48], metavar=("NY", "NX"))
    p.add_argument("--items", type=int, default=6, help="number of simulations")
    p.add_argument("--model", choices=("linear", "conv4d"), default="conv4d")
    p.add_argument("--init", default="base", help="'base' (default), 'scratch' or a checkpoint to fine-tune")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="where simulations are kept (default: OUTPUT.simulations/); reruns resume")
    p.add_argument("--plan-only", action="store_true", help="print the simulations and the time estimate, then stop")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_simulate_train)

    p = sub.add_parser("demo", help="the whole workflow on the bundled MoS2 and PrScO3 samples")
    p.add_argument("-o", "--output", default="stemml-output", help="folder for a new run subfolder")
    p.add_argument("--model", choices=("linear", "conv4d", "both"), default="both")
    p.add_argument("--time-limit", type=POSITIVE, default=300.0, help="training time limit per model (s)")
    p.set_defaults(func=cmd_demo)
    return parser


def _primary(args: argparse.Namespace) -> str:
    return next((str(getattr(args, a)) for a in ("data", "file", "image", "model")
                 if getattr(args, a, None)), "input")


#: failures of file-parsing libraries (h5py, zipfile, torch, ...) on broken input files
_DATA_ERRORS = (OSError, EOFError, struct.error, zipfile.BadZipFile, zlib.error,
                UnicodeDecodeError)


def describe_error(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, one-line message) for an exception leaving a command."""
    if isinstance(exc, (UserError, ValueError)):
        text = str(exc)
        flag = _OPTION_FLAGS.get(getattr(exc, "option", None) or "")
        if flag and flag not in text:  # say which option resolves it
            text += f" (on the command line: {flag})"
        return EXIT_USAGE, text
    from .parallel import ParallelError

    if isinstance(exc, ParallelError):
        return EXIT_INTERNAL, str(exc)
    files = [*_inputs(args), getattr(args, "output", None) or ""]
    if isinstance(exc, OSError) and exc.filename:
        return EXIT_USAGE, f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (*_DATA_ERRORS, MemoryError)):
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError):
            text = f"not enough memory ({text})"
        if not any(f and Path(f).name in text for f in files):
            text = f"{_primary(args)}: could not read the data ({text})"
        return EXIT_USAGE, text
    return EXIT_INTERNAL, (f"internal error while processing {_primary(args)}: "
                           f"{type(exc).__name__}: {exc} (please report it; STEMML_DEBUG=1 "
                           "shows the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (status 2, argparse's message), --help, --version
        return _exit_code(exc)
    try:
        _check_device(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stemml: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("STEMML_DEBUG"):
            raise
        code, message = describe_error(exc, args)
        print(f"stemml {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
