"""End-to-end jobs shared by the CLI, the headless ``make run`` and scripts.

``run_job`` trains one model from a data set and a label file: load the label, register it
onto the scan grid against a virtual image of the same field, train, save an atomic
checkpoint. It is a generator: it yields :class:`Message` lines, the training events of
:func:`napari_4dstem_ml.training.loop.train`, and finally a :class:`JobResult`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset4D


@dataclass(frozen=True)
class Message:
    """A line of text for the user."""

    text: str


def reference_image(dataset: Dataset4D) -> tuple[np.ndarray, str]:
    """A virtual dark-field image ``(Ny, Nx)`` of ``dataset`` to register a label against.

    The annulus runs from 1.5× to 4× the bright-field disk radius (the ADF preset), clipped
    to the detector; the disk radius comes from the convergence angle when calibrated,
    otherwise from the mean pattern.
    """
    from .detectors import annular_mask, bf_disk, max_radius_px, mean_pattern, virtual_images

    mean = mean_pattern(dataset.data, step=max(1, min(dataset.scan_shape) // 32))
    centre, r_bf = bf_disk(mean, dataset.calibration)
    r_max = max_radius_px(dataset.detector_shape, centre)
    inner, outer = 1.5 * r_bf, min(4.0 * r_bf, r_max)
    if inner >= outer:  # detector barely larger than the disk: use its outer ring
        inner, outer = 1.05 * r_bf, r_max
    mask = annular_mask(dataset.detector_shape, centre, inner, outer)
    return virtual_images(dataset.data, mask), f"virtual ADF {inner:.1f}-{outer:.1f} px"


@dataclass(frozen=True)
class TrainingJob:
    """Everything ``stemml train`` needs. Angles in mrad, pixel sizes in Å."""

    label: str
    output: str
    model: str = "linear"
    cluster_size: int = 5
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    detector_size: int = 64
    max_angle_mrad: float | None = None
    label_dataset: str | None = None
    label_pixel_A: float | None = None
    register: bool = True
    overwrite: bool = False
    time_limit_s: float | None = None
    allow_external: bool = False

    @classmethod
    def from_cli(cls, args: Any) -> TrainingJob:
        return cls(
            label=args.label,
            output=args.output,
            model=args.model,
            cluster_size=args.cluster,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            detector_size=args.detector_size,
            max_angle_mrad=args.max_angle,
            label_dataset=args.label_dataset,
            label_pixel_A=args.label_pixel,
            register=not args.no_register,
            overwrite=args.overwrite,
            allow_external=bool(getattr(args, "allow_external", False)),
        )

    def configs(self, dataset: Dataset4D):
        """(model config, preprocessing config, training config) for this job."""
        from .models import CNN4dConfig, LinearConfig
        from .preprocess import PreprocessConfig
        from .training.loop import TrainConfig

        if self.model == "linear":
            model_cfg = LinearConfig(cluster_size=self.cluster_size)
            defaults = {"epochs": 100, "lr": 3e-2, "batch_size": 32}
            compression = "none"  # a linear model must see linear intensities
        elif self.model == "conv4d":
            model_cfg = CNN4dConfig(cluster_size=self.cluster_size)
            defaults = {"epochs": 20, "lr": 2e-3, "batch_size": 32}
            compression = "power"
        else:
            raise ValueError(f"model must be 'linear' or 'conv4d', got {self.model!r}")
        size = int(self.detector_size)
        max_angle = self.max_angle_mrad
        pixel = None
        mrad = dataset.calibration.detector_pixel_mrad
        if max_angle is None and mrad is not None:
            # the whole detector's inscribed circle, sampled on the model's grid
            max_angle = 0.5 * min(dataset.detector_shape) * mrad[0]
        if max_angle is not None and mrad is not None:
            pixel = 2.0 * max_angle / size
        pre_cfg = PreprocessConfig(
            max_angle_mrad=max_angle if mrad is not None else None,
            output_shape=(size, size),
            output_pixel_mrad=pixel,
            bin_factor=max(1, min(dataset.detector_shape) // size) if pixel is None else 1,
            compression=compression,
        )
        def given(value, name):  # 0 is a value (and then refused), not "unset"
            return defaults[name] if value is None else value

        train_cfg = TrainConfig(
            epochs=given(self.epochs, "epochs"),
            lr=given(self.lr, "lr"),
            batch_size=given(self.batch_size, "batch_size"),
            seed=self.seed,
            device=self.device,
            time_limit_s=self.time_limit_s,
        )
        return model_cfg, pre_cfg, train_cfg


@dataclass
class JobResult:
    """A finished job: where the model went and how well it fits."""

    checkpoint: Path
    registration: dict[str, Any]
    metrics: dict[str, float]
    stopped: str
    epochs: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        m = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items() if isinstance(v, float))
        return (
            f"saved {self.checkpoint} after {self.epochs} epochs ({self.stopped}, "
            f"{self.elapsed_s:.1f} s); validation: {m}"
        )


def registered_label(
    dataset: Dataset4D, label_path: str | Path, *, dataset_name: str | None = None,
    pixel_size_A: float | None = None, register: bool = True, allow_external: bool = False,
) -> Generator[Message, None, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Load a label file and put it on the scan grid; returns (image, coverage mask, summary).
    A label without variance (one value everywhere) is refused: there is nothing to learn."""
    from .registration import load_label, register_label

    lab = load_label(label_path, pixel_size=pixel_size_A, dataset=dataset_name,
                     allow_external=allow_external)
    values = lab.image[np.isfinite(lab.image)]
    if values.size and float(values.max()) == float(values.min()):
        raise ValueError(f"{label_path}: the label has no variance (every value is "
                         f"{float(values[0]):.6g}): there is nothing to learn")
    if not register:
        if lab.image.shape != dataset.scan_shape:
            raise ValueError(
                f"{label_path}: label is {lab.image.shape} but the scan is {dataset.scan_shape}; "
                "it must be on the scan grid when registration is turned off"
            )
        return lab.image, np.isfinite(lab.image), {"registered": False}
    step = dataset.calibration.scan_step_A
    if lab.pixel_size_A is None or step is None:
        missing = "the label's pixel size (--label-pixel)" if lab.pixel_size_A is None else "the scan step"
        raise ValueError(f"registering {label_path} onto the scan grid needs {missing}")
    ref, what = reference_image(dataset)
    yield Message(f"registering the label against a {what} image ...")
    reg = register_label(lab.image, lab.pixel_size_A, ref, step)
    p = reg.params
    summary = {"registered": True, "reference": what, **p.to_dict(), "score": reg.score,
               "coverage": reg.coverage}
    yield Message(
        f"label registered: scale {p.scale:.4g}, rotation {p.rotation_deg:.2f}°, shift "
        f"({p.shift_yx[0]:.2f}, {p.shift_yx[1]:.2f}) scan steps, r = {reg.score:+.3f}, "
        f"covers {100 * reg.coverage:.0f} % of the scan"
    )
    if abs(reg.score) < 0.3:
        yield Message("warning: the label correlates poorly with the virtual image; check the fit")
    return reg.image_on_scan_grid, reg.coverage_mask, summary


def run_job(
    job: TrainingJob, dataset: Dataset4D, registered: tuple | None = None
) -> Generator[Any, None, JobResult]:
    """Train ``job.model`` on ``dataset`` against ``job.label`` and save the checkpoint.

    ``registered``: the label already on the scan grid, as returned by
    :func:`registered_label` (image, coverage mask, summary), to skip registering it again.
    """
    from .export import prepare_output
    from .training.checkpoint import save_checkpoint
    from .training.loop import DoneEvent, train

    inputs = (*dataset.input_files, job.label)
    out = Path(job.output)
    prepare_output(out, overwrite=job.overwrite, inputs=inputs, suffixes=(".pt",))
    if registered is None:
        registered = yield from registered_label(
            dataset, job.label, dataset_name=job.label_dataset, pixel_size_A=job.label_pixel_A,
            register=job.register, allow_external=job.allow_external,
        )
    label, coverage, reg_summary = registered
    model_cfg, pre_cfg, train_cfg = job.configs(dataset)
    yield Message(f"training a {job.model} model (K = {job.cluster_size}) on {dataset.scan_shape} positions")
    result = None
    for event in train(dataset, label, model_cfg, pre_cfg, train_cfg, label_mask=coverage):
        yield event
        if isinstance(event, DoneEvent):
            result = event.result
    summary = dict(result.train_summary)
    summary.update(source=str(dataset.source), label=str(job.label), registration=reg_summary,
                   job=asdict(job))
    save_checkpoint(out, result.model, result.model_config, result.preprocessor,
                    train_summary=summary, metrics=result.metrics, overwrite=job.overwrite,
                    inputs=inputs)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    res = JobResult(out, reg_summary, metrics, result.stopped, len(result.history), result.elapsed_s)
    yield res
    return res



def _new_run_dir(out_dir: str | Path) -> Path:
    """A fresh folder inside ``out_dir`` (never reusing one, so nothing is overwritten)."""
    import time

    base = Path(out_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run = base / (f"run-{stamp}" + (f"-{i}" if i else ""))
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder in {base}")


def run_headless(
    out_dir: str | Path = "stemml-output",
    *,
    models: tuple[str, ...] = ("linear", "conv4d"),
    time_limit_s: float | None = 300.0,
) -> Generator[Any, None, Path]:
    """The main job on the bundled samples, without a display.

    Train each of ``models`` on the MoS2 sample against its ptychography label (registered
    onto the scan grid once, automatically), apply it to MoS2 and to the thick PrScO3
    sample, and compare each reconstruction and the conventional ADF image with the ground
    truth. Writes TIFF and PNG images, the checkpoints, the linear model's learned detector
    mask (``.npy``, usable as a custom virtual detector) and ``summary.json`` into a new run
    folder of ``out_dir``, which it returns. Yields :class:`Message` lines and training events.
    """
    import json

    from .export import write_image, write_text
    from .metrics import compare
    from .samples import SAMPLES, load_sample, sample_path
    from .training.checkpoint import load_checkpoint
    from .training.inference import predict

    run = _new_run_dir(out_dir)
    yield Message(f"writing results to {run}")
    mos2 = load_sample("mos2")
    ds = mos2.dataset
    yield Message(f"training data: {SAMPLES['mos2'].display_name}\n{ds.summary()}")
    step = ds.calibration.scan_step_A[1]
    nav, what = reference_image(ds)
    for suffix in (".tif", ".png"):
        write_image(run / f"mos2_navigation{suffix}", nav, step)
    yield Message(f"navigation image: {what}")
    registered = yield from registered_label(ds, sample_path("mos2"), dataset_name="label/image")

    samples = {"mos2": mos2}
    try:
        samples["prsco3"] = load_sample("prsco3")
    except FileNotFoundError as exc:
        yield Message(f"skipping prsco3: {exc}")
    summary: dict[str, Any] = {"registration": registered[2], "samples": {}, "models": {}}
    for key, sample in samples.items():
        px = sample.dataset.calibration.scan_step_A[1]
        for suffix in (".tif", ".png"):
            write_image(run / f"{key}_adf{suffix}", sample.adf, px)
        adf = compare(sample.adf, sample.ground_truth, pixel_size=px)
        summary["samples"][key] = {"adf_vs_truth": adf.to_dict()}
        yield Message(f"{key}: ADF vs ground truth: {adf.summary()}")

    for model in models:
        job = TrainingJob(label=str(sample_path("mos2")), label_dataset="label/image",
                          output=str(run / f"{model}.pt"), model=model, time_limit_s=time_limit_s)
        result = None
        for event in run_job(job, ds, registered):
            if isinstance(event, JobResult):
                result = event
            yield event
        loaded = load_checkpoint(result.checkpoint)
        if hasattr(loaded.model, "export_detector_mask"):
            mask_path = loaded.model.export_detector_mask(run / f"{model}_detector_mask.npy")
            yield Message(f"learned detector mask (model grid) written to {mask_path}")
        summary["models"][model] = {"checkpoint": str(result.checkpoint),
                                    "validation": result.metrics}
        for key, sample in samples.items():
            image = predict(loaded.model, loaded.preprocessor, sample.dataset)
            px = sample.dataset.calibration.scan_step_A[1]
            for suffix in (".tif", ".png"):
                write_image(run / f"{key}_{model}{suffix}", image, px)
            ml = compare(image, sample.ground_truth, pixel_size=px)
            summary["models"][model][key] = ml.to_dict()
            yield Message(f"{key}: {model} vs ground truth: {ml.summary()}")
    write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    yield Message(f"done: {run}")
    return run
