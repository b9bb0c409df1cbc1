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
from .errors import UserError, numeric_warnings_off
from .inputs import (
    compute_choice,
    input_files,
    load_data,
)
from .reporting import progress, report_image


def cmd_train(args: argparse.Namespace) -> int:
    from ..base_model import initial_model
    from ..export import OutputPlan
    from ..training.loop import EpochEvent, NoticeEvent, PrepareEvent, StepEvent
    from ..workflow import JobResult, Message, TrainingJob, run_job

    plan = OutputPlan(inputs=[*input_files(args), _init_file(args)], overwrite=args.overwrite)
    plan.add(args.output, "-o", suffixes=(".pt",))
    initial = initial_model(args.init, args.model)  # of the kind of --model: before any work
    ds = load_data(args.data, args)
    plan.add_inputs(*input_files(args, ds))
    k = int(initial.model_config.cluster_size) if initial is not None else int(args.cluster)
    _check_scan_fits(ds, k, args.data, "--init's model" if initial is not None else "--cluster")
    job = TrainingJob.from_cli(args)
    with numeric_warnings_off():
        prepared = job.prepare(ds)
    epochs = prepared[1][2].epochs
    tty = sys.stderr.isatty()
    bar = None
    result = None
    with numeric_warnings_off():
        events = run_job(job, ds, prepared=prepared)
        for event in events:
            if isinstance(event, (Message, NoticeEvent)):
                print(event.text)
            elif isinstance(event, PrepareEvent):
                if event.done == 0:
                    print(f"{event.stage} ({event.total} {event.unit}) ...")
            elif isinstance(event, StepEvent):
                if bar is None and tty:
                    bar = progress(epochs, "training", unit="epochs")
                if bar is not None:
                    bar.set_postfix(step=event.step, loss=f"{event.train_loss:.4g}")
            elif isinstance(event, EpochEvent):
                r = event.metrics.get("pearson_r", float("nan"))
                if bar is not None:
                    bar.update(event.number - bar.n)
                    bar.set_postfix(train=f"{event.train_loss:.4g}", val=f"{event.val_loss:.4g}",
                                    r=f"{r:.3f}")
                else:  # a log file or pipe: one line per epoch
                    print(f"epoch {event.number}/{epochs}: train loss {event.train_loss:.4g}, validation "
                          f"loss {event.val_loss:.4g}, r {r:.3f}, {event.elapsed_s:.1f} s"
                          + (" (best)" if event.is_best else ""), flush=True)
            elif isinstance(event, JobResult):
                result = event
    if bar is not None:
        bar.close()
    if result is not None:
        print(result.report())
    return 0


def _check_scan_fits(ds, k: int, data: str, what: str) -> None:
    """The scan holds a K x K cluster (with reflection at the edges); else an error naming
    the data file and where K comes from."""
    h = k // 2
    if h and min(ds.scan_shape) <= h:
        raise UserError(f"{data}: its {ds.scan_shape[0]} x {ds.scan_shape[1]} scan is too small "
                        f"for {what}'s {k} x {k} clusters (at least {h + 1} x {h + 1} scan "
                        "positions are needed)")


def _init_file(args: argparse.Namespace) -> str | None:
    """``--init`` when it names a checkpoint file (an input no output may replace)."""
    init = getattr(args, "init", None)
    return None if init in (None, "base", "scratch") else str(init)


def _baseline_paths(output: str, names: Sequence[str] = ("iCoM", "ADF")) -> list[Path]:
    """Where ``predict --baselines`` writes each baseline (``names``: those of
    :meth:`~napari_4dstem_ml.baselines.Baselines.images`), beside ``output``."""
    stem = Path(output)
    return [stem.with_name(f"{stem.stem}_{n.lower()}{stem.suffix}") for n in names]


def _predict_plan(args: argparse.Namespace, inputs: Sequence[str]):
    """Every output of ``predict``, checked against the inputs and each other before work."""
    from ..export import OutputPlan
    from ..parallel.sink import SINK_SUFFIXES

    plan = OutputPlan(inputs=inputs, overwrite=args.overwrite)
    plan.add(args.output, "-o", suffixes=SINK_SUFFIXES)
    if args.uncertainty:
        plan.add(args.uncertainty, "--uncertainty", suffixes=SINK_SUFFIXES)
    if args.baselines:
        for name, path in zip(("iCoM", "ADF"), _baseline_paths(args.output)):
            plan.add(path, f"the {name} baseline of --baselines", suffixes=SINK_SUFFIXES)
    return plan


def _pattern_map_path(output: str) -> Path:
    """Where ``predict`` writes the pattern check's distance map: beside ``output``."""
    stem = Path(output)
    return stem.with_name(f"{stem.stem}_pattern_distance{stem.suffix}")


def _warn(text: str) -> None:
    print(f"stemml predict: warning: {text}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..parallel.sink import write_results
    from ..predict import Message, PredictEvent, Reconstructor
    from ..training.checkpoint import load_checkpoint

    compute = compute_choice(args)
    plan = _predict_plan(args, input_files(args))
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"{model_path}: no such model file")
    loaded = load_checkpoint(model_path)
    summary = (loaded.info or {}).get("train_summary") or {}
    if args.uncertainty and not (hasattr(loaded.model, "predict_field_members")
                                 or summary.get("error_model")):
        raise UserError(
            f"--uncertainty needs an ensemble or a model trained with an error model; "
            f"{model_path} holds a single model without one (train with --ensemble 3, the "
            "CNN's default, or retrain: training fits an error model on the validation region)"
        )
    if ((loaded.info or {}).get("train_summary") or {}).get("pattern_domain"):
        from ..parallel.sink import SINK_SUFFIXES

        plan.add(_pattern_map_path(args.output), "the pattern check's distance map",
                 suffixes=SINK_SUFFIXES)
    ds = load_data(args.data, args)
    inputs = input_files(args, ds)
    plan.add_inputs(*inputs)
    _check_scan_fits(ds, int(loaded.model.cluster_size), args.data, f"the model {model_path}")
    step = ds.calibration.scan_step_A
    px = step[1] if step else None
    report = None
    with progress(ds.scan_shape[0], "predict") as bar, numeric_warnings_off():
        gen = Reconstructor(loaded, ds, compute=compute).run()
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
    meta = {"model": str(model_path), "data": str(args.data), **report.metadata()}
    items = [(args.output, report.image, px, meta)]
    what = ("predicted local RMS error (the checkpoint's error model)"
            if report.uncertainty_kind == "error model" else "ensemble standard deviation")
    if args.uncertainty:
        items.append((args.uncertainty, report.uncertainty, px,
                      {**meta, "quantity": f"{what} (label units)"}))
    written = {args.output: f"prediction, computed {report.where}",
               args.uncertainty: f"uncertainty: {what}"}
    verdict = report.pattern
    if verdict is not None and np.isfinite(verdict.distance).any():
        path = str(_pattern_map_path(args.output))
        items.append((path, verdict.distance, px,
                      {**meta, "quantity": "pattern distance from the training patterns "
                                           "(units of the threshold; > 1: unlike training)"}))
        written[path] = "pattern check: distance from the training patterns / threshold"
    if args.baselines:
        items += _baseline_items(args, ds, px, written)
    write_results(items, overwrite=args.overwrite, inputs=inputs)
    for it in items:
        image = it[1]
        print(f"wrote {it[0]} ({image.shape[0]} x {image.shape[1]}; {written[it[0]]})")
    if report.issues:
        _warn(f"the data lie outside the model's training domain in {len(report.issues)} "
              "respect(s); treat the image with caution (recorded in its metadata)")
    if verdict is not None:
        print(f"pattern check: {verdict.message}")
    return 0


def _baseline_items(args: argparse.Namespace, ds, px, written: dict) -> list[tuple]:
    """The iCoM and ADF images of ``predict --baselines``: a baseline that cannot be made
    from these data (no dark-field ring on the detector, a garbage image) is skipped with a
    warning, and the model's image is written all the same."""
    from ..baselines import classical_baselines
    from ..export import OutputError, check_image

    print("stemml predict: classical baselines: iCoM and ADF of the same data (in this "
          "process) ...", file=sys.stderr)
    try:
        with numeric_warnings_off():
            base = classical_baselines(ds)
    except (ValueError, ArithmeticError) as exc:
        reason = str(exc).replace("mean_pattern", "the mean diffraction pattern")
        _warn(f"no classical baselines for {args.data} ({reason}); the prediction is written")
        return []
    for note in base.notes:
        _warn(f"{note}; {_baseline_paths(args.output, ('ADF',))[0]} is not written")
    items = []
    for name, img in base.images().items():
        path = _baseline_paths(args.output, (name,))[0]
        try:
            check_image(img, f"the {name} baseline")
        except OutputError as exc:
            _warn(f"{exc}; {path} is not written")
            continue
        items.append((path, img, px, {"data": str(args.data), "baseline": name, **base.info}))
        written[path] = name
    return items


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
    p.add_argument("--uncertainty", metavar="UNC", help="also write the per-pixel uncertainty here: the local error predicted by "
                        "the model's error model (fitted on its validation region), else the ensemble's spread")
    p.add_argument("--baselines", action="store_true",
                   help="also write the iCoM and ADF images of the same data (OUT_icom, OUT_adf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_data_options(p)
    add_compute_options(p)
    p.set_defaults(func=cmd_predict)
