"""The training loop as a generator of small event dataclasses.

``train(...)`` yields :class:`NoticeEvent` (what the data validation excluded),
:class:`PrepareEvent` (preprocessing cache), :class:`StepEvent` (every
optimiser step), :class:`EpochEvent` (validation loss and metrics), :class:`PreviewEvent`
(reconstruction of the whole field) and a final :class:`DoneEvent`; it returns the
:class:`TrainResult` as ``StopIteration.value``. Stop it at any time between steps with
``gen.close()`` (or by setting a ``cancel`` object with ``is_set()``, e.g.
``threading.Event``: the loop then ends cleanly and still returns a result with the best
weights so far). Losses are on the standardised label; metrics are in label units.

Data validation before any work: positions whose diffraction pattern holds NaN/inf values are
found in one streaming pass, zeroed, and excluded (with every position whose K×K cluster
contains one) from training and validation, reported in a :class:`NoticeEvent` and in
``train_summary["nonfinite_positions"]``; data with no finite pattern and labels without
variance are refused (:class:`TrainError`). A model whose weights became NaN/inf is never
returned (:class:`TrainError`): training diverged.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..domain import DataSignature, TrainingDomain
from ..predict.events import finish
from ..predict.fields import iter_predict_source, resolve_device
from ..preprocess import PreprocessConfig, Preprocessor
from .clusters import PatternSource, RegionSplit, check_cluster_size, default_tile_rows
from .patches import patch_input, patch_plan

__all__ = [
    "DoneEvent",
    "EpochEvent",
    "NoticeEvent",
    "PrepareEvent",
    "PreviewEvent",
    "StepEvent",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainingItem",
    "how_it_ended",
    "run_training",
    "train",
    "train_items",
    "validation_metrics",
]

LOSSES = ("mse", "l1")
SAMPLINGS = ("auto", "patches", "clusters")
LINEAR_INITS = ("als", "none")
SCHEDULES = ("none", "cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda")


class TrainError(ValueError):
    """Training inputs or settings do not fit together."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    ``linear_init``: ``"als"`` fits the linear model directly to its least-squares optimum on
    the training positions (alternating least squares, see ``models.linear_solve``) as epoch
    0; with the MSE loss that is the answer (``stopped == "least_squares"``), with L1 Adam
    epochs refine it (early stopping keeps the ALS weights unless one beats them);
    ``"none"`` trains it with Adam only, from its default initialisation.
    ``epochs`` passes over the training positions (``steps_per_epoch`` caps a pass; ``None``:
    all positions); ``sampling``: ``"patches"`` (each step runs the fully convolutional
    ``model.predict_field`` on ``patches_per_step`` random scan patches of up to
    ``patch_size``² output positions, the loss taken over their training positions; each
    pattern passes through the first layer once), ``"clusters"`` (``batch_size`` separate K×K
    clusters per step through ``model.forward``) or ``"auto"`` (patches for K > 1, else
    clusters); ``batch_size`` clusters per step, and with patches the default
    ``patches_per_step`` (``None``: ``ceil(batch_size / patch_size²)``); ``lr`` Adam learning rate,
    ``weight_decay``; ``loss`` ``"mse"|"l1"``; ``schedule`` ``"none"|"cosine"`` (per step, to
    ``lr·min_lr_fraction``) ``|"plateau"`` (halve the rate after ``plateau_patience`` epochs
    without improvement); ``patience`` epochs without validation improvement before early
    stopping (``None``: never); ``seed`` (on the CPU a seed gives bit-identical runs; on CUDA
    the same up to rounding, as cuDNN's convolution kernels are not deterministic);
    ``device`` ``"auto"|"cpu"|"cuda"``;
    ``preview_every`` steps between previews (``None``: at the end of every epoch; 0: never);
    ``max_steps`` / ``time_limit_s`` stop early; ``num_threads`` CPU threads (``None``: all
    cores); ``val_max_positions`` caps the validation set (a fixed random subset);
    ``cache_budget_bytes`` for the preprocessed field; ``l2sp`` when fine-tuning (an initial
    model is given): weight of the penalty ``l2sp · Σ (θ − θ_initial)²`` that keeps the weights
    near the initial model's (for the linear model: a ridge towards its initial profile).
    """

    epochs: int = 20
    batch_size: int = 64
    sampling: str = "auto"
    linear_init: str = "als"
    patch_size: int = 8
    patches_per_step: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mse"
    schedule: str = "cosine"
    min_lr_fraction: float = 0.05
    plateau_patience: int = 2
    patience: int | None = 5
    seed: int = 0
    device: str = "auto"
    preview_every: int | None = None
    max_steps: int | None = None
    time_limit_s: float | None = None
    num_threads: int | None = None
    steps_per_epoch: int | None = None
    val_max_positions: int | None = 20000
    cache_budget_bytes: float = 2e9
    l2sp: float = 0.0

    def __post_init__(self) -> None:
        def pos_int(name, allow_none=False, minimum=1):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise TrainError(f"{name} must be an integer >= {minimum}, got {v!r}")

        pos_int("epochs")
        pos_int("batch_size")
        pos_int("patch_size")
        pos_int("patches_per_step", True)
        pos_int("plateau_patience")
        pos_int("patience", True)
        pos_int("seed", minimum=0)
        pos_int("preview_every", True, 0)
        pos_int("max_steps", True)
        pos_int("num_threads", True)
        pos_int("steps_per_epoch", True)
        pos_int("val_max_positions", True)
        if not float(self.lr) > 0:
            raise TrainError(f"lr must be > 0, got {self.lr!r}")
        if not (math.isfinite(float(self.l2sp)) and float(self.l2sp) >= 0):
            raise TrainError(f"l2sp must be >= 0, got {self.l2sp!r}")
        if float(self.weight_decay) < 0:
            raise TrainError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < float(self.min_lr_fraction) <= 1:
            raise TrainError(f"min_lr_fraction must be in (0, 1], got {self.min_lr_fraction!r}")
        if self.linear_init not in LINEAR_INITS:
            raise TrainError(f"linear_init must be one of {LINEAR_INITS}, got {self.linear_init!r}")
        if self.sampling not in SAMPLINGS:
            raise TrainError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.loss not in LOSSES:
            raise TrainError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.device not in DEVICES:
            raise TrainError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.time_limit_s is not None and not float(self.time_limit_s) > 0:
            raise TrainError(f"time_limit_s must be > 0 or None, got {self.time_limit_s!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise TrainError(f"TrainConfig: unknown parameter(s) {unknown}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoticeEvent:
    """A line for the user about the data (e.g. positions excluded as NaN/inf)."""

    text: str


@dataclass(frozen=True)
class PrepareEvent:
    """Preparing to train: ``done`` of ``total`` ``unit`` (scan rows read and preprocessed
    into memory, or ensemble members fitted by least squares)."""

    stage: str
    done: int
    total: int
    unit: str = "scan rows"


@dataclass(frozen=True)
class StepEvent:
    """One optimiser step: the batch's training loss (standardised label units) over
    ``positions`` training positions; ``total_steps`` planned in all (for progress bars; the
    patch plan varies per epoch, so it is a close estimate)."""

    step: int
    epoch: int
    train_loss: float
    elapsed_s: float
    positions: int = 0
    total_steps: int = 0

    @property
    def number(self) -> int:
        """The epoch counted from 1, as every front end shows it (``epoch`` counts from 0)."""
        return self.epoch + 1


@dataclass(frozen=True)
class EpochEvent:
    """End of an epoch: mean training loss, validation loss (NaN without validation
    positions), ``metrics`` on the validation positions in label units (``pearson_r``,
    ``psnr``), the learning rate and whether this epoch is the best so far."""

    epoch: int
    train_loss: float
    val_loss: float
    metrics: dict[str, float]
    lr: float
    elapsed_s: float
    step: int = 0
    is_best: bool = False

    @property
    def number(self) -> int:
        """The epoch counted from 1, as every front end shows it (``epoch`` counts from 0)."""
        return self.epoch + 1


@dataclass(frozen=True)
class PreviewEvent:
    """Reconstruction ``image`` ``(Ny, Nx)`` of the whole field (label units) at ``step``;
    ``masks`` holds model-specific views (linear: ``detector_mask`` (oy, ox),
    ``cluster_weights`` (K, K); 4D CNN: ``first_layer_filters``, a montage image)."""

    step: int
    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def how_it_ended(stopped: str, epochs_run: int, best_epoch: int | None = None) -> str:
    """How a training ended, in words, epochs counted from 1 as the progress shows them
    (``stopped``: :attr:`TrainResult.stopped`; ``best_epoch`` from 0, the epoch kept)."""
    kept = "" if best_epoch is None or best_epoch < 0 else f"; epoch {best_epoch + 1} kept"
    if stopped == "least_squares":
        return "fitted by least squares"
    if stopped == "completed":
        return f"all {epochs_run} epochs run" + (kept + " (best validation loss)" if kept else "")
    if stopped == "early_stopping":
        since = "" if not kept else f" since epoch {best_epoch + 1}, which is kept"
        return f"stopped early after epoch {epochs_run}: no better validation loss{since}"
    why = {"cancelled": "cancelled", "max_steps": "stopped at the step limit",
           "time_limit": "stopped at the time limit"}.get(stopped, stopped)
    return f"{why} after {epochs_run} epoch{'s' if epochs_run != 1 else ''}{kept}"


@dataclass
class TrainResult:
    """What training produced. ``model`` holds the best-validation weights (eval mode)."""

    model: Any
    model_config: Any
    preprocessor: Preprocessor
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    metrics: dict[str, float]
    stopped: str
    steps: int
    elapsed_s: float
    train_summary: dict[str, Any]

    def how_it_ended(self) -> str:
        """:func:`how_it_ended` of this result."""
        return how_it_ended(self.stopped, len(self.history), self.best_epoch)

    def time_to_within(self, fraction: float = 0.05) -> float | None:
        """Seconds until the validation loss first came within ``fraction`` of the best."""
        if not math.isfinite(self.best_val_loss):
            return None
        for h in self.history:
            if h["val_loss"] <= self.best_val_loss * (1 + fraction):
                return h["elapsed_s"]
        return None


@dataclass(frozen=True)
class DoneEvent:
    """Training finished (``result.stopped`` says why)."""

    result: TrainResult


TrainEvent = NoticeEvent | PrepareEvent | StepEvent | EpochEvent | PreviewEvent | DoneEvent


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def validation_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Pearson r (after a least-squares scale/offset fit, which leaves r unchanged) and PSNR
    (data range = range of ``target``) of two equally shaped arrays, in float64."""
    p = np.asarray(pred, np.float64).ravel()
    t = np.asarray(target, np.float64).ravel()
    if p.size < 2:
        return {"pearson_r": float("nan"), "psnr": float("nan")}
    try:
        from .. import metrics as m  # the metrics helper's module, when present

        r = float(m.pearson_r(p[None, :], t[None, :]))
        psnr = float(m.psnr(p[None, :], t[None, :], data_range=float(t.max() - t.min())))
        return {"pearson_r": r, "psnr": psnr}
    except (ImportError, AttributeError, TypeError, ValueError):
        pass  # no metrics module (yet), or it wants other shapes: the float64 fallback below
    pc, tc = p - p.mean(), t - t.mean()
    denom = math.sqrt(float(pc @ pc) * float(tc @ tc))
    r = float(pc @ tc) / denom if denom > 0 else float("nan")
    mse = float(np.mean((p - t) ** 2))
    rng = float(t.max() - t.min())
    psnr = 10 * math.log10(rng**2 / mse) if mse > 0 and rng > 0 else float("inf")
    return {"pearson_r": r, "psnr": psnr}


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingItem:
    """One data set to train on: ``label`` ``(Ny, Nx)`` on its scan grid (NaN = unknown),
    ``label_mask`` the covered positions, ``split`` its training/validation regions
    (default: upper half trains), ``noise_free`` optional noise-free beam intensities
    ``(Ny, Nx, ky, kx)`` (fractions of the incident beam per detector pixel: simulations),
    which lets augmentation draw Poisson counts at any dose; ``name`` for reports."""

    dataset: Dataset4D
    label: np.ndarray
    label_mask: np.ndarray | None = None
    split: RegionSplit | None = None
    noise_free: Any = None
    name: str = ""


def _check_label(label: np.ndarray, label_mask: np.ndarray | None, scan_shape) -> tuple:
    label = np.asarray(label, dtype=np.float64)
    if label.shape != tuple(scan_shape):
        raise TrainError(
            f"label must be on the scan grid {tuple(scan_shape)} (register it first), "
            f"got shape {label.shape}"
        )
    cov = np.isfinite(label)
    if label_mask is not None:
        m = np.asarray(label_mask, bool)
        if m.shape != label.shape:
            raise TrainError(f"label_mask must have the scan shape {label.shape}, got {m.shape}")
        cov &= m
    return label, cov


def nonfinite_positions(dataset: Dataset4D) -> np.ndarray | None:
    """``(Ny, Nx)`` bool: positions whose pattern holds a NaN/inf value (one streaming pass,
    float data only), or ``None`` when there are none."""
    if dataset.dtype.kind != "f":
        return None
    from ..detectors.engine import virtual_images

    total = virtual_images(dataset.data, np.ones(dataset.detector_shape, np.float32))
    bad = ~np.isfinite(total)
    return bad if bad.any() else None


def _exclude_nonfinite(item: TrainingItem, k: int) -> tuple[TrainingItem, str | None, int]:
    """(the item with its NaN/inf patterns zeroed and the positions whose K×K cluster holds
    one left out of its label mask, notice text or None, number of bad positions)."""
    from dataclasses import replace

    from scipy.ndimage import binary_dilation

    dataset = item.dataset
    bad = nonfinite_positions(dataset)
    if bad is None:
        return item, None, 0
    n, total = int(bad.sum()), bad.size
    where = item.name or dataset.source or "the data"
    if n == total:
        raise TrainError(f"{where}: every diffraction pattern holds NaN/inf values; nothing to train on")
    import dask.array as da

    data = dataset.data
    if not type(data).__module__.startswith("dask"):
        data = da.from_array(data, chunks=(max(1, 2**26 // max(1, int(np.prod(data.shape[1:])) * 4)),
                                           -1, -1, -1))
    clean = da.where(bad[:, :, None, None], data.dtype.type(0), data)
    near = binary_dilation(bad, np.ones((k, k), bool)) if k > 1 else bad
    mask = ~near if item.label_mask is None else np.asarray(item.label_mask, bool) & ~near
    at = ", ".join(f"({y}, {x})" for y, x in zip(*np.nonzero(bad)))
    at = at if len(at) < 80 else at[:80].rsplit(",", 1)[0] + ", ..."
    text = (f"{where}: {n} positions of {total} hold NaN/inf values in their diffraction "
            f"patterns (at {at}); they and the positions whose {k}×{k} cluster includes them "
            f"({int(near.sum())} in all) are excluded from training and validation")
    return replace(item, dataset=replace(dataset, data=clean), label_mask=mask), text, n


def _check_label_variance(values: np.ndarray, name: str = "") -> None:
    """Refuse a label without variance over the training positions: nothing to learn."""
    v = np.asarray(values, np.float64)
    if v.size and (float(v.std()) <= 1e-12 * max(1.0, float(np.abs(v).max()))):
        raise TrainError(f"{name + ': ' if name else ''}the label has no variance over the "
                         f"{v.size} training positions (every value is {float(v[0]):.6g}): "
                         "there is nothing to learn")


def _check_finite_model(model) -> None:
    """Refuse to return a model whose weights are NaN/inf (training diverged)."""
    bad = [n for n, p in model.state_dict().items()
           if p.is_floating_point() and not bool(p.isfinite().all())]
    if bad:
        raise TrainError(f"training diverged: the weights {', '.join(bad[:4])} became NaN/inf; "
                         "no model is returned (try a smaller learning rate)")


def _model_masks(model) -> dict[str, np.ndarray]:
    from ..models.ensemble import Ensemble

    if isinstance(model, Ensemble):
        model = model.members[0]
    out = {}
    for name in ("detector_mask", "cluster_weights", "first_layer_filters"):
        fn = getattr(model, name, None)
        if callable(fn):
            out[name] = np.asarray(fn())
    return out


@dataclass
class _Prepared:
    """An item on the model's scan grid, ready for training."""

    item: TrainingItem
    pre: Preprocessor
    source: PatternSource
    label: np.ndarray  # label units, model grid, NaN where unknown
    target: np.ndarray  # standardised (this item's training statistics), 0 where unknown
    train_pos: np.ndarray
    val_pos: np.ndarray
    train_region: np.ndarray
    ty: np.ndarray
    tx: np.ndarray
    vy: np.ndarray
    vx: np.ndarray
    stats: tuple[float, float]
    linear: np.ndarray | None = None  # linear intensities for augmentation (Ny, Nx, oy, ox)
    noise_free_fraction: float | None = None


def _on_model_grid(grid, label, coverage, train_region, val_region):
    """Map data-grid label, coverage and regions onto the model's resampled scan grid."""
    if grid is None:
        return label, coverage, train_region, val_region
    lab = grid.to_model(np.where(coverage, label, np.nan))
    cov = np.isfinite(lab)

    def region(m):
        return grid.to_model(m.astype(np.float64), order=1) > 0.999

    return lab.astype(np.float64), cov, region(train_region), region(val_region)


def validation_positions(item: TrainingItem, k: int) -> np.ndarray:
    """``(Ny, Nx)`` bool: the validation cluster centres (cluster size ``k``) that training
    scores ``item`` on, for a scan that is not resampled — what its trust measurements read."""
    _, coverage = _check_label(item.label, item.label_mask, item.dataset.scan_shape)
    return (item.split or RegionSplit()).positions(item.dataset.scan_shape, k, coverage)[1]


def _prepare_item(item: TrainingItem, pre: Preprocessor, k: int, cfg: TrainConfig,
                  rng) -> _Prepared:
    """Positions, targets and the pattern source of ``item`` (nothing read in bulk yet)."""
    ds = item.dataset
    label, coverage = _check_label(item.label, item.label_mask, ds.scan_shape)
    split = item.split or RegionSplit()
    tr_region, va_region = split.region_masks(ds.scan_shape)
    source = PatternSource(ds, pre, cache_budget_bytes=cfg.cache_budget_bytes)
    label, coverage, tr_region, va_region = _on_model_grid(
        source.grid, label, coverage, tr_region, va_region)
    model_split = RegionSplit(train_mask=tr_region, val_mask=va_region)
    train_pos, val_pos = model_split.positions(source.scan_shape, k, coverage)
    ty, tx = np.nonzero(train_pos)
    vy, vx = np.nonzero(val_pos)
    if cfg.val_max_positions is not None and len(vy) > cfg.val_max_positions:
        pick = np.sort(rng.choice(len(vy), cfg.val_max_positions, replace=False))
        vy, vx = vy[pick], vx[pick]
    lab_train = label[ty, tx] if len(ty) else np.zeros(1)
    stats = (float(lab_train.mean()), float(lab_train.std()) or 1.0)
    target = ((np.where(coverage, label, 0.0) - stats[0]) / stats[1]).astype(np.float32)
    return _Prepared(item, pre, source, label, target, train_pos, val_pos, tr_region,
                     ty, tx, vy, vx, stats)


def _load_item(p: _Prepared, cfg: TrainConfig, augmenting: bool) -> Generator[TrainEvent, None, None]:
    """Fill the item's preprocessed cache (and, for augmentation, its linear intensities)."""
    ds = p.item.dataset
    name = p.item.name or (str(ds.source) if ds.source else "data")
    for q in p.source.fill_cache():
        yield PrepareEvent(f"preprocessing {name}", q.rows_done, q.rows_total)
    if not augmenting:
        return
    if p.item.noise_free is not None:
        p.linear, p.noise_free_fraction = _noise_free_field(p.item, p.pre, p.source)
    else:
        lin_src = PatternSource(ds, p.pre, cache_budget_bytes=cfg.cache_budget_bytes, stage="linear")
        for q in lin_src.fill_cache():
            yield PrepareEvent(f"linear intensities of {name}", q.rows_done, q.rows_total)
        p.linear = lin_src.cache
    if p.linear is None:
        raise TrainError(
            f"{name}: augmentation needs the preprocessed field in memory "
            f"({p.source.cache_nbytes / 1e9:.1f} GB > cache_budget_bytes)")


def _noise_free_field(item: TrainingItem, pre: Preprocessor, source: PatternSource):
    """Linear intensities of the item's noise-free patterns (normalised by their mean total,
    the mean detected fraction of the beam) on the model grid."""
    nf = np.asarray(item.noise_free, np.float32)
    if nf.shape != tuple(item.dataset.shape):
        raise TrainError(f"noise_free must have the data's shape {item.dataset.shape}, got {nf.shape}")
    frac = float(nf.sum(axis=(2, 3), dtype=np.float64).mean())
    if not frac > 0:
        raise TrainError(f"{item.name or 'item'}: noise-free intensities are all zero")
    ds_nf = replace(item.dataset, data=nf)
    pre_nf = replace(pre, mean_counts=frac)
    src = PatternSource(ds_nf, pre_nf, cache_budget_bytes=float("inf"), stage="linear")
    for _ in src.fill_cache():
        pass
    return src.cache, frac


def train(
    dataset: Dataset4D,
    label: np.ndarray,
    model_config: Any,
    preprocess_config: PreprocessConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    label_mask: np.ndarray | None = None,
    split: RegionSplit | None = None,
    preprocessor: Preprocessor | None = None,
    cancel: Any = None,
    init: Any = None,
    augment: Any = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a model mapping K×K pattern clusters of ``dataset`` to ``label`` ``(Ny, Nx)``.

    ``label`` is on the scan grid (NaN = unknown); ``label_mask`` ``(Ny, Nx)`` bool marks the
    covered positions. ``split`` (default: upper half trains, lower half validates).
    ``preprocessor``: a fitted one to reuse (else fitted with ``preprocess_config``).
    ``init``: a model (or a :class:`~.checkpoint.LoadedModel`) whose weights start training
    (fine-tuning; its preprocessor is reused unless ``preprocessor`` is given).
    ``augment``: an :class:`~.augment.AugmentConfig` (``None``: no augmentation).
    ``cancel``: optional object whose ``is_set()`` stops training between steps.
    See :func:`train_items` for several data sets at once.
    """
    item = TrainingItem(dataset, label, label_mask, split)
    return (yield from train_items([item], model_config, preprocess_config, train_config,
                                   preprocessor=preprocessor, cancel=cancel, init=init,
                                   augment=augment))


def train_items(
    items: list[TrainingItem],
    model_config: Any,
    preprocess_config: PreprocessConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    preprocessor: Preprocessor | None = None,
    cancel: Any = None,
    init: Any = None,
    augment: Any = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train one model on several data sets (:class:`TrainingItem`); see :func:`train`.

    The first item fits the preprocessor (its standardisation and, unless
    ``preprocess_config.scan_step_A`` says otherwise, the model's scan step) and names the
    label units of the result; the others are adapted to it (their detector geometry and
    dose refitted, their scans resampled onto the model's step). Each item's label is
    standardised with its own training statistics, so materials with different label scales
    train together. Previews show the first item.

    No validation pattern influences a training step: training positions' clusters lie
    entirely in the training region, and patch inputs have every pattern outside the training
    region zeroed (those only feed outputs that are left out of the loss).
    """
    import torch
    import torch.nn.functional as F

    from ..models import build_model
    from ..models.ensemble import Ensemble
    from .augment import AugmentConfig, sample_tile

    if not items:
        raise TrainError("nothing to train on: no training items")
    cfg = train_config or TrainConfig()
    aug = augment if augment is not None else AugmentConfig.off()
    augmenting = aug.enabled
    base_model = getattr(init, "model", init)
    if init is not None and preprocessor is None:
        preprocessor = getattr(init, "preprocessor", None)
    if base_model is not None and hasattr(init, "model_config"):
        model_config = init.model_config
    first = items[0].dataset
    k = check_cluster_size(int(model_config.cluster_size), first.scan_shape)
    checked, n_nonfinite = [], 0
    for it in items:  # data validation before any work
        it, notice, n = _exclude_nonfinite(it, k)
        n_nonfinite += n
        if notice:
            yield NoticeEvent(notice)
        checked.append(it)
    items = checked
    first = items[0].dataset
    sampling = cfg.sampling if cfg.sampling != "auto" else ("patches" if k > 1 else "clusters")
    if augmenting and sampling != "patches":
        raise TrainError("augmentation works with sampling='patches' (cluster size K > 1)")
    rng = np.random.default_rng(cfg.seed)

    t_start = time.perf_counter()
    if preprocessor is not None:
        alpha = first.calibration.convergence_mrad
        if alpha and _is_linear(model_config):
            # a linear model refitted at one α is kept on an α grid (see in_alpha_units)
            preprocessor = preprocessor.in_alpha_units(alpha)
        pre0 = preprocessor.adapt(first)
        # fine-tuning: the model's scan step becomes the training data's own
        pre0 = replace(pre0, scan_step_A=pre0.data_scan_step_A)
    else:
        pre0 = Preprocessor.fit(first, preprocess_config)
    prepared = [
        _prepare_item(item, pre0 if i == 0 else pre0.adapt(item.dataset), k, cfg, rng)
        for i, item in enumerate(items)
    ]
    if sum(len(p.ty) for p in prepared) == 0:
        raise TrainError(
            "no training positions: the training region holds no position whose whole "
            f"{k}×{k} cluster lies inside it and whose label is covered"
        )
    for p in prepared:
        if len(p.ty):
            _check_label_variance(p.label[p.ty, p.tx], p.item.name)
    for p in prepared:
        yield from _load_item(p, cfg, augmenting)
    main = prepared[0]
    pre = main.pre.with_label_stats(*main.stats)

    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.num_threads or os.cpu_count() or 1))
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(model_config, tuple(pre.output_shape))
        if base_model is not None:
            try:
                model.load_state_dict(base_model.state_dict())
            except RuntimeError as e:
                raise TrainError(f"the initial model does not fit the model configuration: {e}") from e
        model = model.to(device)
        anchor = ([q.detach().clone() for q in model.parameters()]
                  if base_model is not None and cfg.l2sp > 0 else None)
        is_ensemble = isinstance(model, Ensemble)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = torch.nn.MSELoss() if cfg.loss == "mse" else torch.nn.L1Loss()
        loss_sum = F.mse_loss if cfg.loss == "mse" else F.l1_loss
        pps = cfg.patches_per_step or max(1, math.ceil(cfg.batch_size / cfg.patch_size**2))

        def epoch_groups() -> list:
            """This epoch's steps: lists of (item, patch), or (item, sorted index arrays)."""
            if sampling == "patches":
                plan = [(i, pt) for i, p in enumerate(prepared) if len(p.ty)
                        for pt in patch_plan(p.train_pos, cfg.patch_size, rng)]
                order = rng.permutation(len(plan))
                plan = [plan[j] for j in order]
                groups = [plan[i : i + pps] for i in range(0, len(plan), pps)]
            else:
                groups = []
                for i, p in enumerate(prepared):
                    perm = rng.permutation(len(p.ty))
                    groups += [(i, np.sort(perm[j : j + cfg.batch_size]))
                               for j in range(0, len(perm), cfg.batch_size)]
                order = rng.permutation(len(groups))
                groups = [groups[j] for j in order]
            return groups[: cfg.steps_per_epoch] if cfg.steps_per_epoch is not None else groups

        if sampling == "patches":  # grid offsets vary per epoch: a close estimate of the count
            n_patches = sum(len(patch_plan(p.train_pos, cfg.patch_size, np.random.default_rng(0)))
                            for p in prepared)
            n_batches = math.ceil(n_patches / pps)
        else:
            n_batches = sum(math.ceil(len(p.ty) / cfg.batch_size) for p in prepared)
        if cfg.steps_per_epoch is not None:
            n_batches = min(n_batches, cfg.steps_per_epoch)
        total_steps = n_batches * cfg.epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        if cfg.schedule == "cosine":
            t_max, floor = max(1, total_steps), cfg.min_lr_fraction
            sched = torch.optim.lr_scheduler.LambdaLR(  # cosine to lr·floor, then flat
                opt, lambda i: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, t_max) / t_max))
            )
        elif cfg.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.5, patience=cfg.plateau_patience
            )
        else:
            sched = None

        def outputs(x: torch.Tensor) -> torch.Tensor:
            """(M, h, w) member outputs of a padded tile (M = 1 for a single model)."""
            if is_ensemble:
                return model.predict_field_members(x)
            return model.predict_field(x)[None]

        def penalty() -> torch.Tensor | None:
            if anchor is None:
                return None
            return cfg.l2sp * sum(((q - a) ** 2).sum() for q, a in zip(model.parameters(), anchor))

        def step_clusters(group) -> tuple[float, int]:
            """Forward/backward of the clusters at training positions ``idx`` of one item."""
            i, idx = group
            p = prepared[i]
            ys, xs = p.ty[idx], p.tx[idx]
            x = torch.from_numpy(np.ascontiguousarray(p.source.clusters(ys, xs, k))).to(device)
            y = torch.from_numpy(p.target[ys, xs]).to(device)
            out = model.forward_members(x) if is_ensemble else model(x)[None]
            loss = sum(loss_fn(o, y) for o in out)
            reg = penalty()
            (loss + reg if reg is not None else loss).backward()
            return float(loss.detach()) / len(out), len(idx)

        def patch_data(i: int, pt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            p = prepared[i]
            if augmenting:
                t = sample_tile(p.linear, p.target, p.train_region, pt.window, k, p.pre, rng, aug,
                                noise_free_fraction=p.noise_free_fraction)
                kept = t.keep & pt.kept(p.train_pos)
                return t.x, kept, t.y[kept]
            y0, y1, x0, x1 = pt.window
            m = pt.kept(p.train_pos)
            x = patch_input(p.source, pt.window, k, p.train_region)
            return x, m, p.target[y0:y1, x0:x1][m]

        def step_patches(group) -> tuple[float, int]:
            """Forward/backward of ``model.predict_field`` on each patch window, the loss the
            mean over the training positions of all their cells (one backward per patch
            bounds the memory)."""
            data = [patch_data(i, pt) for i, pt in group]
            n = int(sum(int(m.sum()) for _, m, _ in data))
            if n == 0:
                return float("nan"), 0
            total = 0.0
            reg = penalty()
            for j, (x, m, yv) in enumerate(data):
                out = outputs(torch.from_numpy(np.ascontiguousarray(x)).to(device))
                mt = torch.from_numpy(m).to(device)
                y = torch.from_numpy(np.ascontiguousarray(yv, np.float32)).to(device)
                loss = sum(loss_sum(o[mt], y, reduction="sum") for o in out) / n
                if j == 0 and reg is not None:
                    loss = loss + reg
                loss.backward()
                total += float(loss.detach()) - (float(reg.detach()) if j == 0 and reg is not None else 0.0)
            return total / (len(model) if is_ensemble else 1), n

        def evaluate() -> tuple[float, dict[str, float]]:
            """Validation loss (pooled over items) and the first item's metrics (label
            units), plus every item's Pearson r. Uses the fully convolutional
            ``predict_field`` on tiles of the rows holding validation positions, of the
            members alone (an ensemble's mirror averaging is how it is applied, not how the
            epoch to keep is chosen)."""
            model.eval()
            losses, counts, metrics = [], 0, {}
            rs = []
            with torch.no_grad(), getattr(model, "single_view", contextlib.nullcontext)():
                for i, p in enumerate(prepared):
                    if len(p.vy) == 0:
                        continue
                    pred = np.empty(len(p.vy), np.float32)
                    tile = default_tile_rows(p.source, k, budget_bytes=64e6)
                    rows = np.unique(p.vy)
                    lo, hi = int(rows[0]), int(rows[-1]) + 1
                    for y0 in range(lo, hi, tile):
                        y1 = min(hi, y0 + tile)
                        sel = (p.vy >= y0) & (p.vy < y1)
                        if not sel.any():
                            continue
                        x = torch.from_numpy(np.ascontiguousarray(p.source.padded_tile(y0, y1, k)))
                        out = model.predict_field(x.to(device)).float().cpu().numpy()
                        pred[sel] = out[p.vy[sel] - y0, p.vx[sel]]
                    t = p.target[p.vy, p.vx]
                    losses.append(float(loss_fn(torch.from_numpy(pred), torch.from_numpy(t))) * len(t))
                    counts += len(t)
                    lab = p.label[p.vy, p.vx]
                    m = validation_metrics(pred * p.stats[1] + p.stats[0], lab)
                    if i == 0:
                        metrics = m
                    rs.append(m["pearson_r"])
            model.train()
            if counts == 0:
                return float("nan"), {}
            if len(prepared) > 1 and rs:
                metrics = dict(metrics, mean_item_r=float(np.nanmean(rs)))
            return float(sum(losses) / counts), metrics

        def preview(step: int) -> PreviewEvent:
            img = finish(iter_predict_source(model, main.source))
            if main.source.grid is not None:
                img = main.source.grid.to_data(img)
            return PreviewEvent(step, img, _model_masks(model))

        main.source.preprocessor = pre  # previews in the first item's label units
        history: list[dict[str, Any]] = []
        best = (math.inf, -1, None, {})  # (val loss, epoch, state, metrics)
        step = 0
        stopped = "completed"
        epochs_since_best = 0
        first_epoch = 0
        linear_members = (list(model.members) if is_ensemble else [model])
        if cfg.linear_init == "als" and hasattr(linear_members[0], "cluster_weights"):
            # The linear model is bilinear: its least-squares optimum on the training
            # positions is epoch 0; Adam epochs (for L1, or further polish) follow. Ensemble
            # members are fitted on bootstrap resamples of the training positions.
            from ..models.linear_solve import fit_radial_linear_items

            members = "member" if len(linear_members) == 1 else "members"
            yield PrepareEvent("least-squares fit of the linear model", 0, len(linear_members), members)
            mse = []
            for j, member in enumerate(linear_members):
                boot = None if j == 0 else np.random.default_rng(cfg.seed + j)
                res = fit_radial_linear_items(
                    member, [(p.source, p.target, p.ty, p.tx) for p in prepared], bootstrap=boot,
                    prior=None if base_model is None else cfg.l2sp)
                mse.append(res.mse[-1])
                yield PrepareEvent("least-squares fit of the linear model", j + 1, len(linear_members),
                                   members)
            val_loss, metrics = evaluate()
            best = (val_loss, 0, copy.deepcopy(model.state_dict()), metrics)
            ev = EpochEvent(epoch=0, train_loss=float(np.mean(mse)), val_loss=val_loss,
                            metrics=metrics, lr=0.0, elapsed_s=time.perf_counter() - t_start,
                            step=0, is_best=True)
            history.append(asdict(ev))
            yield ev
            if cfg.preview_every is None:
                yield preview(0)
            first_epoch = 1
            if cancel is not None and cancel.is_set():
                stopped, first_epoch = "cancelled", cfg.epochs
            elif cfg.loss == "mse":  # already the least-squares optimum: nothing to refine
                stopped, first_epoch = "least_squares", cfg.epochs
        model.train()
        n_seen = 0
        t_steps = 0.0
        for epoch in range(first_epoch, cfg.epochs):
            losses = []
            for group in epoch_groups():
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                if sampling == "patches":
                    lv, n_pos = step_patches(group)
                else:
                    lv, n_pos = step_clusters(group)
                if n_pos:
                    opt.step()
                if cfg.schedule == "cosine":
                    sched.step()
                t_steps += time.perf_counter() - t0
                step += 1
                n_seen += n_pos
                if n_pos:
                    losses.append(lv)
                yield StepEvent(step, epoch, lv, time.perf_counter() - t_start, n_pos, total_steps)
                if cfg.preview_every and step % cfg.preview_every == 0:
                    yield preview(step)
                if cancel is not None and cancel.is_set():
                    stopped = "cancelled"
                elif cfg.max_steps is not None and step >= cfg.max_steps:
                    stopped = "max_steps"
                elif cfg.time_limit_s is not None and time.perf_counter() - t_start >= cfg.time_limit_s:
                    stopped = "time_limit"
                if stopped != "completed":
                    break
            val_loss, metrics = evaluate()
            if cfg.schedule == "plateau" and math.isfinite(val_loss):
                sched.step(val_loss)
            is_best = (not math.isfinite(best[0]) and not math.isfinite(val_loss)) or (
                math.isfinite(val_loss) and val_loss < best[0]
            )
            if is_best or best[2] is None:
                best = (val_loss, epoch, copy.deepcopy(model.state_dict()), metrics)
                epochs_since_best = 0
            else:
                epochs_since_best += 1
            ev = EpochEvent(
                epoch=epoch,
                train_loss=float(np.mean(losses)) if losses else float("nan"),
                val_loss=val_loss,
                metrics=metrics,
                lr=float(opt.param_groups[0]["lr"]),
                elapsed_s=time.perf_counter() - t_start,
                step=step,
                is_best=bool(is_best),
            )
            history.append(asdict(ev))
            yield ev
            if cfg.preview_every is None:
                yield preview(step)
            if stopped != "completed":
                break
            if cfg.patience is not None and math.isfinite(val_loss) and epochs_since_best >= cfg.patience:
                stopped = "early_stopping"
                break

        model.load_state_dict(best[2])
        model.eval()
        _check_finite_model(model)
        # the validation rows read once for every measurement below; with them, whether the
        # ensemble's mirrored views help on this data (else they are switched off)
        slabs = [_validation_slab(model, p) for p in prepared]
        mirror = _choose_mirror_average(model, prepared, slabs)
        if mirror is not None and not mirror["kept"]:
            model_config = replace(model_config, mirror_average=False)
        ds0 = first
        result = TrainResult(
            model=model,
            model_config=model_config,
            preprocessor=pre,
            history=history,
            best_epoch=best[1],
            best_val_loss=best[0],
            metrics=dict(best[3]),
            stopped=stopped,
            steps=step,
            elapsed_s=time.perf_counter() - t_start,
            train_summary={
                "source": str(ds0.source) if ds0.source else None,
                "data_shape": list(ds0.shape),
                "calibration": ds0.calibration.to_dict(),
                "split": (items[0].split or RegionSplit()).to_dict(),
                "n_train": int(sum(len(p.ty) for p in prepared)),
                "n_val": int(sum(len(p.vy) for p in prepared)),
                "nonfinite_positions": n_nonfinite,
                "cluster_size": k,
                "sampling": sampling,
                "positions_trained": int(n_seen),
                "train_step_s": float(t_steps),
                "label_mean": pre.label_mean,
                "label_std": pre.label_std,
                "train_config": cfg.to_dict(),
                "augment": aug.to_dict(),
                "items": [
                    {"name": p.item.name or (str(p.item.dataset.source) if p.item.dataset.source else None),
                     "data_shape": list(p.item.dataset.shape),
                     "calibration": p.item.dataset.calibration.to_dict(),
                     "n_train": int(len(p.ty)), "n_val": int(len(p.vy)),
                     "noise_free": p.noise_free_fraction is not None,
                     "resampled_scan": p.source.grid is not None}
                    for p in prepared
                ],
                # what the checkpoint states about where it can be trusted
                **_trust_summary(model, model_config, prepared, slabs, items, aug, init, cfg),
                "mirror_average": mirror,
                "init": (getattr(init, "info", None) or {}).get("provenance")
                if init is not None else None,
                "best_epoch": best[1],
                "epochs_run": len(history),
                "steps": step,
                "stopped": stopped,
                "device": str(device),
            },
        )
        yield DoneEvent(result)
        return result
    finally:
        torch.set_num_threads(old_threads)


def _trust_summary(model: Any, model_config: Any, prepared: list[_Prepared], slabs: list[Any],
                   items: list[TrainingItem], aug: Any, init: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The trained model's domain, as stored in ``train_summary``: ``domain`` (calibration
    ranges), ``init_domain`` (the initial model's), the pattern domains (own, and kept from
    the initial model), the ``error_model`` and the measured ``reach_floor``.

    The domain is that of the data these weights were last fitted to. A linear model is
    refitted whole (least squares) on the user's data: its domain is that data's alone. A
    network fine-tuned from a base model is held near the base's weights (L2-SP), so it keeps
    the base library's ranges and pattern domains too."""
    domain = training_domain(items, aug)
    init_summary = ((getattr(init, "info", None) or {}).get("train_summary") or {}
                    if init is not None else {})
    init_domain = init_summary.get("domain")
    if init_domain:  # (a base written before the scan step in λ/α was a quantity)
        init_domain = TrainingDomain.from_dict(init_domain).with_probe_steps(
            [it.get("calibration") or {} for it in init_summary.get("items") or []]).to_dict()
    keeps_init = init is not None and not _is_linear(model_config) and cfg.l2sp > 0
    if init_domain and keeps_init:
        domain = TrainingDomain.from_dict(init_domain).union(domain)
    kept: list[dict[str, Any]] = []
    if keeps_init:
        from ..pattern_domain import summary_pattern_domains

        kept = summary_pattern_domains(init_summary)
    many = len(prepared) > 1
    # the patterns' own statistics (train regions; threshold on the val regions), each with
    # whether the model beat ADF and iCoM on that data set's val region (``slabs``)
    versus = [_versus_classical(model, p, slab) for p, slab in zip(prepared, slabs)]
    if many:
        own, per_item = None, _fit_pattern_domains([p.item for p in prepared])
        by_name = {p.item.name: vc for p, vc in zip(prepared, versus)}
        for d in per_item:
            if by_name.get(d.get("name")) is not None:
                d["versus_classical"] = by_name[d["name"]]
    else:
        own, per_item = _fit_pattern_domain([p.item for p in prepared]), []
        if own is not None and versus[0] is not None:
            own["versus_classical"] = versus[0]
    return {
        "domain": domain.to_dict(),
        "init_domain": init_domain,
        "pattern_domain": own,
        "pattern_domains": per_item,
        "pattern_domains_kept": kept,
        "versus_classical": versus[0],
        # the uncertainty map's model of the local error (the first item's val region)
        "error_model": _fit_error_model(model, prepared[0], slabs[0]),
        # the shortest detector it tolerates, measured on the same region
        "reach_floor": _measure_reach_floor(model, prepared[0], slabs[0]),
    }


def _choose_mirror_average(model: Any, prepared: list[_Prepared], slabs: list[Any]
                           ) -> dict[str, Any] | None:
    """:func:`~.trust.choose_mirror_average` on the validation slabs (a failed measurement
    warns and keeps the views as configured)."""
    from .trust import choose_mirror_average

    scored = [(p.pre, slab) for p, slab in zip(prepared, slabs) if slab is not None]
    return _guarded("the mirrored views were not measured",
                    lambda: choose_mirror_average(model, scored))


def _is_linear(config: Any) -> bool:
    from ..models.config import LinearConfig, member_config

    return isinstance(member_config(config), LinearConfig)


def training_domain(items: list[TrainingItem], augment: Any = None) -> TrainingDomain:
    """The :class:`~..domain.TrainingDomain` of ``items`` (dose widened by dose augmentation
    for items with noise-free intensities)."""
    sigs = [DataSignature.from_dataset(it.dataset) for it in items]
    dose = None
    if augment is not None and getattr(augment, "dose_range", None) and any(
        it.noise_free is not None for it in items
    ):
        dose = augment.dose_range
    return TrainingDomain.from_signatures(sigs, dose)


def _fit_pattern_domain(items: list[TrainingItem]) -> dict[str, Any] | None:
    """:func:`~..pattern_domain.fit_items_pattern_domain` (``None`` where it cannot be fitted)."""
    from ..pattern_domain import fit_items_pattern_domain

    return fit_items_pattern_domain(items)


def _fit_pattern_domains(items: list[TrainingItem]) -> list[dict[str, Any]]:
    """Several training items: :func:`~..pattern_domain.fit_items_pattern_domains` (one
    domain per item)."""
    from ..pattern_domain import fit_items_pattern_domains

    return fit_items_pattern_domains(items)


def _fit_error_model(model: Any, p: _Prepared, slab: Any) -> dict[str, Any] | None:
    """The :class:`~..error_model.ErrorModel` of ``model``, fitted against ``p``'s label on
    its validation slab (the image and the ensemble's spread the other trust measurements
    share); ``None`` without a slab or with too few positions."""
    from ..error_model import ErrorModel

    if slab is None:
        return None
    try:  # never at the cost of the trained model: without it, no error model
        rec = slab.reconstruction(model, p.pre)
        em = ErrorModel.fit(rec.image, slab.label, spread=rec.uncertainty, region=slab.region)
    except Exception as exc:  # noqa: BLE001 - reported, training goes on
        import warnings

        warnings.warn(f"no error model fitted: {exc}", stacklevel=2)
        return None
    return em.to_dict()


def _validation_slab(model: Any, p: _Prepared) -> Any:
    """``p``'s :class:`~.trust.ValidationSlab`, read once for both measurements below
    (``None`` where the scan is resampled or there is no validation region)."""
    from .trust import ValidationSlab

    if p.source.grid is not None or not p.val_pos.any():
        return None
    return _guarded("the validation region could not be read for the trust measurements",
                    lambda: ValidationSlab.take(model, p.item.dataset, p.label, p.val_pos))


def _guarded(what: str, fn: Any) -> Any:
    """``fn()``, or ``None`` with a warning: a measurement never costs the trained model."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported, training goes on
        import warnings

        warnings.warn(f"{what}: {exc}", stacklevel=3)
        return None


def _versus_classical(model: Any, p: _Prepared, slab: Any) -> dict[str, Any] | None:
    """:func:`~.trust.versus_classical` on ``p``'s validation slab (``None`` without one)."""
    from .trust import versus_classical

    if slab is None:
        return None
    vc = _guarded("the model was not compared with ADF and iCoM",
                  lambda: versus_classical(model, p.pre, p.item.dataset, p.label, p.val_pos,
                                           slab=slab))
    return None if vc is None else vc.to_dict()


def _measure_reach_floor(model: Any, p: _Prepared, slab: Any) -> dict[str, Any] | None:
    """:func:`~.trust.measure_reach_floor` on ``p``'s validation slab (``None`` without one
    or where the model's grid reach is unknown)."""
    from .trust import measure_reach_floor

    reach = p.pre.grid_reach_alpha(p.item.dataset.calibration.convergence_mrad)
    if slab is None or reach is None:
        return None
    floor = _guarded("the detector reach the model tolerates was not measured",
                     lambda: measure_reach_floor(model, p.pre, p.item.dataset, p.label,
                                                 p.val_pos, model_reach_alpha=reach, slab=slab))
    return None if floor is None else floor.to_dict()


def run_training(*args: Any, on_event: Any = None, **kwargs: Any) -> TrainResult:
    """Run :func:`train` to the end (same arguments); ``on_event(event)`` sees every event."""
    return finish(train(*args, **kwargs), on_event)
