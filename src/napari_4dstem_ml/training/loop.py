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

import copy
import math
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..preprocess import PreprocessConfig, Preprocessor
from .clusters import PatternSource, RegionSplit, check_cluster_size, default_tile_rows
from .inference import iter_predict_source, resolve_device
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
    "run_training",
    "train",
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
    ``cache_budget_bytes`` for the preprocessed field.
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
    """Preprocessing the field into memory: ``done`` of ``total`` scan rows."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class StepEvent:
    """One optimiser step: the batch's training loss (standardised label units) over
    ``positions`` training positions."""

    step: int
    epoch: int
    train_loss: float
    elapsed_s: float
    positions: int = 0


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


@dataclass(frozen=True)
class PreviewEvent:
    """Reconstruction ``image`` ``(Ny, Nx)`` of the whole field (label units) at ``step``;
    ``masks`` holds model-specific views (linear: ``detector_mask`` (oy, ox),
    ``cluster_weights`` (K, K))."""

    step: int
    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)


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


def _exclude_nonfinite(dataset: Dataset4D, coverage: np.ndarray, k: int):
    """(data set with NaN/inf patterns zeroed, coverage without the positions whose K×K
    cluster holds one, notice text or None, number of bad positions)."""
    from dataclasses import replace

    from scipy.ndimage import binary_dilation

    bad = nonfinite_positions(dataset)
    if bad is None:
        return dataset, coverage, None, 0
    n, total = int(bad.sum()), bad.size
    where = dataset.source or "the data"
    if n == total:
        raise TrainError(f"{where}: every diffraction pattern holds NaN/inf values; nothing to train on")
    import dask.array as da

    data = dataset.data
    if not type(data).__module__.startswith("dask"):
        data = da.from_array(data, chunks=(max(1, 2**26 // max(1, int(np.prod(data.shape[1:])) * 4)),
                                           -1, -1, -1))
    clean = da.where(bad[:, :, None, None], data.dtype.type(0), data)
    near = binary_dilation(bad, np.ones((k, k), bool)) if k > 1 else bad
    coverage = coverage & ~near
    at = ", ".join(f"({y}, {x})" for y, x in zip(*np.nonzero(bad)))
    at = at if len(at) < 80 else at[:80].rsplit(",", 1)[0] + ", ..."
    text = (f"{where}: {n} positions of {total} hold NaN/inf values in their diffraction "
            f"patterns (at {at}); they and the positions whose {k}×{k} cluster includes them "
            f"({int(near.sum())} in all) are excluded from training and validation")
    return replace(dataset, data=clean), coverage, text, n


def _check_label_variance(values: np.ndarray) -> None:
    """Refuse a label without variance over the training positions: nothing to learn."""
    v = np.asarray(values, np.float64)
    if v.size and (float(v.std()) <= 1e-12 * max(1.0, float(np.abs(v).max()))):
        raise TrainError(f"the label has no variance over the {v.size} training positions "
                         f"(every value is {float(v[0]):.6g}): there is nothing to learn")


def _check_finite_model(model) -> None:
    """Refuse to return a model whose weights are NaN/inf (training diverged)."""
    bad = [n for n, p in model.state_dict().items()
           if p.is_floating_point() and not bool(p.isfinite().all())]
    if bad:
        raise TrainError(f"training diverged: the weights {', '.join(bad[:4])} became NaN/inf; "
                         "no model is returned (try a smaller learning rate)")


def _model_masks(model) -> dict[str, np.ndarray]:
    out = {}
    for name in ("detector_mask", "cluster_weights"):
        fn = getattr(model, name, None)
        if callable(fn):
            out[name] = np.asarray(fn())
    return out


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
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a model mapping K×K pattern clusters of ``dataset`` to ``label`` ``(Ny, Nx)``.

    ``label`` is on the scan grid (NaN = unknown); ``label_mask`` ``(Ny, Nx)`` bool marks the
    covered positions. ``split`` (default: upper half trains, lower half validates).
    ``preprocessor``: a fitted one to reuse (else fitted with ``preprocess_config``).
    ``cancel``: optional object whose ``is_set()`` stops training between steps.

    No validation pattern influences a training step: training positions' clusters lie
    entirely in the training region, and patch inputs have every pattern outside the training
    region zeroed (those only feed outputs that are left out of the loss).
    """
    import torch
    import torch.nn.functional as F

    from ..models import build_model

    cfg = train_config or TrainConfig()
    split = split or RegionSplit()
    scan_shape = dataset.scan_shape
    label, coverage = _check_label(label, label_mask, scan_shape)
    k = check_cluster_size(int(model_config.cluster_size), scan_shape)
    dataset, coverage, notice, n_nonfinite = _exclude_nonfinite(dataset, coverage, k)
    if notice:
        yield NoticeEvent(notice)
    train_pos, val_pos = split.positions(scan_shape, k, coverage)
    train_region = split.region_masks(scan_shape)[0]
    sampling = cfg.sampling if cfg.sampling != "auto" else ("patches" if k > 1 else "clusters")
    ty, tx = np.nonzero(train_pos)
    vy, vx = np.nonzero(val_pos)
    if len(ty) == 0:
        raise TrainError(
            "no training positions: the training region holds no position whose whole "
            f"{k}×{k} cluster lies inside it and whose label is covered"
        )
    _check_label_variance(label[ty, tx])
    rng = np.random.default_rng(cfg.seed)
    if cfg.val_max_positions is not None and len(vy) > cfg.val_max_positions:
        pick = np.sort(rng.choice(len(vy), cfg.val_max_positions, replace=False))
        vy, vx = vy[pick], vx[pick]

    t_start = time.perf_counter()
    pre = preprocessor.adapt(dataset) if preprocessor is not None else Preprocessor.fit(
        dataset, preprocess_config
    )
    lab_train = label[ty, tx]
    pre = pre.with_label_stats(float(lab_train.mean()), float(lab_train.std()))
    target = pre.label_to_model(np.where(coverage, label, 0.0))

    source = PatternSource(dataset, pre, cache_budget_bytes=cfg.cache_budget_bytes)
    for p in source.fill_cache():
        yield PrepareEvent("preprocessing", p.rows_done, p.rows_total)

    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.num_threads or os.cpu_count() or 1))
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(model_config, tuple(pre.output_shape)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = torch.nn.MSELoss() if cfg.loss == "mse" else torch.nn.L1Loss()
        loss_sum = F.mse_loss if cfg.loss == "mse" else F.l1_loss
        pps = cfg.patches_per_step or max(1, math.ceil(cfg.batch_size / cfg.patch_size**2))

        def epoch_groups() -> list:
            """This epoch's steps: lists of patches, or sorted index arrays into (ty, tx)."""
            if sampling == "patches":
                plan = patch_plan(train_pos, cfg.patch_size, rng)
                groups = [plan[i : i + pps] for i in range(0, len(plan), pps)]
            else:
                perm = rng.permutation(len(ty))
                groups = [np.sort(perm[i : i + cfg.batch_size]) for i in range(0, len(perm), cfg.batch_size)]
            return groups[: cfg.steps_per_epoch] if cfg.steps_per_epoch is not None else groups

        if sampling == "patches":  # grid offsets vary per epoch: a close estimate of the count
            n_patches = len(patch_plan(train_pos, cfg.patch_size, np.random.default_rng(0)))
            n_batches = math.ceil(n_patches / pps)
        else:
            n_batches = math.ceil(len(ty) / cfg.batch_size)
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

        val_target = target[vy, vx]
        val_label = label[vy, vx]

        def step_clusters(idx) -> tuple[float, int]:
            """Forward/backward of the clusters at training positions ``idx``."""
            ys, xs = ty[idx], tx[idx]
            x = torch.from_numpy(np.ascontiguousarray(source.clusters(ys, xs, k))).to(device)
            y = torch.from_numpy(target[ys, xs]).to(device)
            loss = loss_fn(model(x), y)
            loss.backward()
            return float(loss.detach()), len(idx)

        def step_patches(patches) -> tuple[float, int]:
            """Forward/backward of ``model.predict_field`` on each patch window, the loss the
            mean over the training positions of all their cells (one backward per patch
            bounds the memory)."""
            kept = [p.kept(train_pos) for p in patches]
            n = int(sum(int(m.sum()) for m in kept))
            total = 0.0
            for p, m in zip(patches, kept):
                y0, y1, x0, x1 = p.window
                x = torch.from_numpy(patch_input(source, p.window, k, train_region))
                out = model.predict_field(x.to(device))
                mt = torch.from_numpy(m).to(device)
                y = torch.from_numpy(target[y0:y1, x0:x1][m]).to(device)
                loss = loss_sum(out[mt], y, reduction="sum") / n
                loss.backward()
                total += float(loss.detach())
            return total, n

        val_rows = np.unique(vy)

        def evaluate() -> tuple[float, dict[str, float]]:
            """Validation loss and metrics. Uses the fully convolutional ``predict_field`` on
            tiles of the rows holding validation positions (each pattern's features computed
            once, instead of once per cluster it belongs to); equal to ``forward``."""
            if len(vy) == 0:
                return float("nan"), {}
            model.eval()
            p = np.empty(len(vy), np.float32)
            tile = default_tile_rows(source, k, budget_bytes=64e6)
            with torch.no_grad():
                lo, hi = int(val_rows[0]), int(val_rows[-1]) + 1
                for y0 in range(lo, hi, tile):
                    y1 = min(hi, y0 + tile)
                    sel = (vy >= y0) & (vy < y1)
                    if not sel.any():
                        continue
                    x = torch.from_numpy(np.ascontiguousarray(source.padded_tile(y0, y1, k)))
                    out = model.predict_field(x.to(device)).float().cpu().numpy()
                    p[sel] = out[vy[sel] - y0, vx[sel]]
            model.train()
            loss = float(loss_fn(torch.from_numpy(p), torch.from_numpy(val_target)))
            return loss, validation_metrics(pre.model_to_label(p), val_label)

        def preview(step: int) -> PreviewEvent:
            gen = iter_predict_source(model, source)
            img = None
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    img = stop.value
                    break
            return PreviewEvent(step, img, _model_masks(model))

        history: list[dict[str, Any]] = []
        best = (math.inf, -1, None, {})  # (val loss, epoch, state, metrics)
        step = 0
        stopped = "completed"
        epochs_since_best = 0
        first_epoch = 0
        if cfg.linear_init == "als" and hasattr(model, "cluster_weights"):
            # The linear model is bilinear: its least-squares optimum on the training
            # positions is epoch 0; Adam epochs (for L1, or further polish) follow.
            from ..models.linear_solve import fit_radial_linear

            yield PrepareEvent("least-squares fit of the linear model", 0, 1)
            als = fit_radial_linear(model, source, target[ty, tx], ty, tx)
            val_loss, metrics = evaluate()
            best = (val_loss, 0, copy.deepcopy(model.state_dict()), metrics)
            ev = EpochEvent(epoch=0, train_loss=als.mse[-1], val_loss=val_loss, metrics=metrics,
                            lr=0.0, elapsed_s=time.perf_counter() - t_start, step=0, is_best=True)
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
                opt.step()
                if cfg.schedule == "cosine":
                    sched.step()
                t_steps += time.perf_counter() - t0
                step += 1
                n_seen += n_pos
                losses.append(lv)
                yield StepEvent(step, epoch, lv, time.perf_counter() - t_start, n_pos)
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
                "source": str(dataset.source) if dataset.source else None,
                "data_shape": list(dataset.shape),
                "calibration": dataset.calibration.to_dict(),
                "split": split.to_dict(),
                "n_train": int(len(ty)),
                "n_val": int(len(vy)),
                "nonfinite_positions": n_nonfinite,
                "cluster_size": k,
                "sampling": sampling,
                "positions_trained": int(n_seen),
                "train_step_s": float(t_steps),
                "label_mean": pre.label_mean,
                "label_std": pre.label_std,
                "train_config": cfg.to_dict(),
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


def run_training(*args: Any, on_event: Any = None, **kwargs: Any) -> TrainResult:
    """Run :func:`train` to the end (same arguments); ``on_event(event)`` sees every event."""
    gen = train(*args, **kwargs)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
