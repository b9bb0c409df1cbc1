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
from .predict.events import Message
from .predict.pipeline import ReconstructionReport, domain_issues  # noqa: F401 - re-exported


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


#: the angular unit of the CNN's detector grid (measured to transfer better than mrad on
#: held-out library items; the linear model transferred better on an mrad grid)
DEFAULT_ANGLE_UNITS = "alpha"
#: the models' detector grid: MODEL_GRID pixels across 2 × MODEL_REACH_ALPHA α
MODEL_GRID = 48
MODEL_REACH_ALPHA = 2.4
INITS = ("base", "scratch")



#: default training settings per model, from scratch (``"conv4d"``) and fine-tuning a
#: checkpoint or the base model (``"conv4d.base"``); ``l2sp``: the weight of the penalty that
#: keeps fine-tuned weights near the initial ones. Fine-tuning the base CNN on MoS2 was
#: measured with 8 and 16 epochs and L2-SP 1e-3–3 (README, Trust): 1.0 keeps the thick library
#: crystals, 16 epochs fit the label better than 8 at no cost in transfer. The linear model is
#: refitted by least squares without a penalty: on MoS2 any penalty ≥ 0.1 pulled it towards
#: the library's average mask, below ADF (r 0.785 at 1.0 vs 0.815 without, against the truth).
#: ``patience``: epochs without validation improvement before training stops early (``None``:
#: every epoch runs; the best validation epoch is kept either way). The CNN's fine-tune runs
#: all 16: with the generic 5 its outcome hung on a noisy plateau — the same seed and code in a
#: fresh environment stopped after epoch 8 with epoch 3 kept (MoS2 unseen half SSIM 0.800), where
#: all 16 keep epoch 11 (0.826; epochs counted from 1), as the napari dock always did.
TRAINING_DEFAULTS: dict[str, dict[str, float | None]] = {
    "linear": {"epochs": 100, "lr": 3e-2, "batch_size": 32, "l2sp": 0.0, "patience": 5},
    "conv4d": {"epochs": 20, "lr": 2e-3, "batch_size": 32, "l2sp": 0.0, "patience": 5},
    "linear.base": {"epochs": 1, "lr": 3e-2, "batch_size": 32, "l2sp": 0.0, "patience": 5},
    "conv4d.base": {"epochs": 16, "lr": 5e-4, "batch_size": 32, "l2sp": 1.0, "patience": None},
}

@dataclass(frozen=True)
class TrainingJob:
    """Everything ``stemml train`` needs. Angles in mrad, pixel sizes in Å.

    ``init``: ``"base"`` fine-tunes the base model shipped with the plugin (trained on a
    simulated library of materials, see :mod:`napari_4dstem_ml.base_model`), ``"scratch"``
    trains a new model, any other value is a checkpoint to fine-tune. ``ensemble``: members
    of a deep ensemble (uncertainty maps; ``None``: 3 for the CNN, 1 for the linear model,
    or the initial model's). ``augment``: on-the-fly augmentation (CNN).
    """

    label: str
    output: str
    model: str = "conv4d"
    cluster_size: int = 5
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    detector_size: int | None = None
    max_angle_mrad: float | None = None
    label_dataset: str | None = None
    label_pixel_A: float | None = None
    register: bool = True
    overwrite: bool = False
    time_limit_s: float | None = None
    init: str = "base"
    ensemble: int | None = None
    augment: bool = True
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
            init=args.init,
            ensemble=args.ensemble,
            augment=not args.no_augment,
            allow_external=bool(getattr(args, "allow_external", False)),
        )

    def initial_model(self):
        """The :class:`~.training.checkpoint.LoadedModel` to fine-tune, or ``None``; a model
        of another kind than ``model`` (also as an ensemble's members) is refused."""
        from .base_model import initial_model

        return initial_model(self.init, self.model)

    def configs(self, dataset: Dataset4D, initial: Any = None):
        """(model config, preprocessing config, training config) for this job; with an
        ``initial`` model (fine-tuning) its model and preprocessing configs are kept."""
        from .models import CNN4dConfig, EnsembleConfig, LinearConfig
        from .training.loop import TrainConfig

        if self.model not in ("linear", "conv4d"):
            raise ValueError(f"model must be 'linear' or 'conv4d', got {self.model!r}")
        linear = self.model == "linear"
        if initial is not None:
            model_cfg = initial.model_config
            defaults = TRAINING_DEFAULTS[f"{self.model}.base"]
            pre_cfg = initial.preprocessor.config
        else:
            member = (LinearConfig(cluster_size=self.cluster_size) if linear
                      else CNN4dConfig(cluster_size=self.cluster_size))
            n = self.ensemble if self.ensemble is not None else (1 if linear else 3)
            model_cfg = member if n == 1 else EnsembleConfig(member=member, size=n)
            defaults = TRAINING_DEFAULTS[self.model]
            pre_cfg = self._preprocess_config(dataset, linear)

        def given(value, name):  # 0 is a value (and then refused), not "unset"
            return defaults[name] if value is None else value

        train_cfg = TrainConfig(
            epochs=given(self.epochs, "epochs"),
            lr=given(self.lr, "lr"),
            batch_size=given(self.batch_size, "batch_size"),
            seed=self.seed,
            device=self.device,
            time_limit_s=self.time_limit_s,
            l2sp=defaults["l2sp"],
            patience=defaults["patience"],
        )
        return model_cfg, pre_cfg, train_cfg

    def _preprocess_config(self, dataset: Dataset4D, linear: bool):
        from .preprocess import PreprocessConfig

        size = int(self.detector_size or MODEL_GRID)
        compression = "none" if linear else "power"  # a linear model must see linear intensities
        cal = dataset.calibration
        mrad = cal.detector_pixel_mrad
        if not linear and self.max_angle_mrad is None and DEFAULT_ANGLE_UNITS == "alpha" \
                and mrad is not None and cal.convergence_mrad:
            reach = 0.5 * min(dataset.detector_shape) * mrad[0] / cal.convergence_mrad
            r = min(MODEL_REACH_ALPHA, reach)
            return PreprocessConfig(angle_units="alpha", max_angle=r, output_shape=(size, size),
                                    output_pixel=2.0 * r / size, compression=compression)
        max_angle = self.max_angle_mrad
        pixel = None
        if max_angle is None and mrad is not None:
            # the whole detector's inscribed circle, sampled on the model's grid
            max_angle = 0.5 * min(dataset.detector_shape) * mrad[0]
        if max_angle is not None and mrad is not None:
            pixel = 2.0 * max_angle / size
        return PreprocessConfig(
            max_angle=max_angle if mrad is not None else None,
            output_shape=(size, size),
            output_pixel=pixel,
            bin_factor=max(1, min(dataset.detector_shape) // size) if pixel is None else 1,
            compression=compression,
        )

    def prepare(self, dataset: Dataset4D) -> tuple[Any, tuple]:
        """(the initial model or ``None``, :meth:`configs`): validates the settings before any
        long work. With an initial model, a cluster size other than its own is an error."""
        initial = self.initial_model()
        if initial is not None and self.cluster_size != initial.model_config.cluster_size \
                and self.cluster_size != TrainingJob.cluster_size:
            raise ValueError(
                f"--cluster {self.cluster_size}: the model to fine-tune uses K = "
                f"{initial.model_config.cluster_size}; use --init scratch for another cluster size")
        if initial is not None and self.ensemble is not None:
            initial = self._members_of(initial, int(self.ensemble))
        return initial, self.configs(dataset, initial)

    def _members_of(self, initial: Any, n: int) -> Any:
        """The initial model with its first ``n`` ensemble members (``n = 1``: one network),
        so that ``--ensemble N`` holds when fine-tuning as from scratch."""
        from dataclasses import replace as dc_replace

        from .models import EnsembleConfig
        from .models.ensemble import Ensemble

        cfg = initial.model_config
        have = cfg.size if isinstance(cfg, EnsembleConfig) else 1
        if n == have:
            return initial
        if n > have:
            raise ValueError(f"--ensemble {n}: the model to fine-tune ({self.init}) has {have} "
                             f"member(s); give at most {have}, or --init scratch for {n}")
        members = list(initial.model.members)[:n]
        if n == 1:
            return dc_replace(initial, model=members[0], model_config=cfg.member)
        return dc_replace(initial, model=Ensemble(members, mirror_average=cfg.mirror_average),
                          model_config=EnsembleConfig(member=cfg.member, size=n,
                                                      mirror_average=cfg.mirror_average))

    def augment_config(self):
        from .training.augment import AugmentConfig

        return AugmentConfig() if self.augment and self.model == "conv4d" else None


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
    best_epoch: int | None = None

    def report(self) -> str:
        from .training.loop import how_it_ended

        m = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items() if isinstance(v, float))
        text = (
            f"saved {self.checkpoint}: {how_it_ended(self.stopped, self.epochs, self.best_epoch)}"
            f" ({self.elapsed_s:.1f} s); validation: {m}"
        )
        trust = trust_line(self.extra.get("train_summary"))
        return text + ("\n" + trust if trust else "")


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
    for w in reg.warnings:
        yield Message(f"warning: {w}")
    summary["warnings"] = list(reg.warnings)
    return reg.image_on_scan_grid, reg.coverage_mask, summary


def run_job(
    job: TrainingJob, dataset: Dataset4D, registered: tuple | None = None,
    prepared: tuple | None = None,
) -> Generator[Any, None, JobResult]:
    """Train ``job.model`` on ``dataset`` against ``job.label`` and save the checkpoint.

    ``registered``: the label already on the scan grid, as returned by
    :func:`registered_label` (image, coverage mask, summary), to skip registering it again.
    ``prepared``: :meth:`TrainingJob.prepare`'s result, to skip preparing it again.
    """
    from .export import prepare_output
    from .training.checkpoint import save_checkpoint
    from .training.loop import DoneEvent, train

    inputs = (*dataset.input_files, job.label)
    out = Path(job.output)
    prepare_output(out, overwrite=job.overwrite, inputs=inputs, suffixes=(".pt",))
    initial, (model_cfg, pre_cfg, train_cfg) = prepared or job.prepare(dataset)
    if registered is None:
        registered = yield from registered_label(
            dataset, job.label, dataset_name=job.label_dataset, pixel_size_A=job.label_pixel_A,
            register=job.register, allow_external=job.allow_external,
        )
    label, coverage, reg_summary = registered
    how = "from scratch" if initial is None else (
        "fine-tuning the base model" if job.init == "base" else f"fine-tuning {job.init}")
    yield Message(f"training a {job.model} model (K = {model_cfg.cluster_size}) on "
                  f"{dataset.scan_shape} positions, {how}")
    result = None
    for event in train(dataset, label, model_cfg, pre_cfg, train_cfg, label_mask=coverage,
                       init=initial, augment=job.augment_config()):
        yield event
        if isinstance(event, DoneEvent):
            result = event.result
    summary = dict(result.train_summary)
    summary.update(source=str(dataset.source), label=str(job.label), registration=reg_summary,
                   job=asdict(job))
    provenance = {"fine_tuned_from": (initial.info.get("provenance") or {"checkpoint": job.init})}\
        if initial is not None else {"trained_from": "scratch"}
    save_checkpoint(out, result.model, result.model_config, result.preprocessor,
                    train_summary=summary, metrics=result.metrics, provenance=provenance,
                    overwrite=job.overwrite, inputs=inputs)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    res = JobResult(out, reg_summary, metrics, result.stopped, len(result.history), result.elapsed_s,
                    extra={"train_summary": {k: result.train_summary.get(k)
                                             for k in ("versus_classical", "reach_floor")}},
                    best_epoch=result.best_epoch)
    yield res
    return res


def trust_line(summary: dict[str, Any] | None) -> str:
    """One line on what the validation region says about the trained model (its r against ADF
    and iCoM, the shortest detector it tolerates), from its ``train_summary``; "" if neither
    was measured."""
    from .pattern_domain import clearly_beats_classical

    summary = summary or {}
    parts = []
    vc = summary.get("versus_classical")
    if isinstance(vc, dict) and "r_model" in vc:
        classical = ", ".join(f"{n} {vc[k]:.3f}" for n, k in (("ADF", "r_adf"), ("iCoM", "r_icom"))
                              if isinstance(vc.get(k), float))
        verdict = ("better than" if clearly_beats_classical({"versus_classical": vc})
                   else "not clearly better than" if vc.get("beats") else "NO better than")
        parts.append(f"on the validation region the model (r {vc['r_model']:.3f}) is {verdict} "
                     f"the classical images ({classical})")
    rf = summary.get("reach_floor")
    if isinstance(rf, dict) and isinstance(rf.get("floor_alpha"), float):
        parts.append(f"it tolerates a detector reaching down to {rf['floor_alpha']:.2f} α "
                     f"(r lost ≤ {rf.get('tolerance_r', 0.01):.2f})")
    mv = summary.get("mirror_average")
    if isinstance(mv, dict) and isinstance(mv.get("r_members"), float):
        change = f"r {mv['r_members']:.3f} → {mv.get('r_mirrored', float('nan')):.3f}"
        parts.append(f"the x-mirrored views {'kept' if mv.get('kept') else 'switched off'} "
                     f"({change} with them)")
    return "; ".join(parts)



def reconstruct(
    loaded: Any, dataset: Dataset4D, *, baselines: bool = False, tile_rows: int | None = None
) -> Generator[Any, None, ReconstructionReport]:
    """Apply a loaded model to ``dataset``: :class:`~.predict.Reconstructor` run in this
    process (domain check, the model's pass, with ``baselines`` iCoM and ADF)."""
    from .predict import Reconstructor

    return (yield from Reconstructor(loaded, dataset, baselines=baselines,
                                     tile_rows=tile_rows).run())


def _new_run_dir(out_dir: str | Path) -> Path:
    """A fresh folder inside ``out_dir`` (never reusing one, so nothing is overwritten)."""
    import time

    base = Path(out_dir)
    if base.exists() and not base.is_dir():
        raise FileExistsError(f"{base} is a file; the demo writes a new run folder into a folder")
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
    sample, and compare each reconstruction — and the classical iCoM and ADF images of the same
    data — with the ground truth. Writes TIFF and PNG images (the CNN ensemble's uncertainty
    map too), the checkpoints, the linear model's learned detector mask (``.npy``, usable as a
    custom virtual detector) and ``summary.json`` (metrics, domain checks) into a new run
    folder of ``out_dir``, which it returns. Yields :class:`Message` lines and training events.
    """
    import json

    from .export import write_image, write_text
    from .metrics import compare
    from .samples import SAMPLES, load_sample, sample_path
    from .training.checkpoint import load_checkpoint

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
    from .baselines import classical_baselines

    for key, sample in samples.items():
        px = sample.dataset.calibration.scan_step_A[1]
        base = classical_baselines(sample.dataset)
        summary["samples"][key] = {"baselines": base.info}
        for name, img in base.images().items():
            for suffix in (".tif", ".png"):
                write_image(run / f"{key}_{name.lower()}{suffix}", img, px)
            rep = compare(img, sample.ground_truth, pixel_size=px)
            summary["samples"][key][f"{name.lower()}_vs_truth"] = rep.to_dict()
            yield Message(f"{key}: {name} vs ground truth: {rep.summary()}")

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
            rep = yield from reconstruct(loaded, sample.dataset)
            image = rep.image
            if rep.uncertainty is not None:
                for suffix in (".tif", ".png"):
                    write_image(run / f"{key}_{model}_uncertainty{suffix}", rep.uncertainty,
                                sample.dataset.calibration.scan_step_A[1])
            summary["models"][model][f"{key}_domain"] = rep.metadata()
            px = sample.dataset.calibration.scan_step_A[1]
            for suffix in (".tif", ".png"):
                write_image(run / f"{key}_{model}{suffix}", image, px)
            ml = compare(image, sample.ground_truth, pixel_size=px)
            summary["models"][model][key] = ml.to_dict()
            yield Message(f"{key}: {model} vs ground truth: {ml.summary()}")
    write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    yield Message(f"done: {run}")
    return run
