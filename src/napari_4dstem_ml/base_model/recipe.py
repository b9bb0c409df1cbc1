"""How the shipped base models are trained: the recipe, runnable on this repository's library.

``python -m napari_4dstem_ml.base_model [--library DIR] [--out DIR]`` trains

- ``base_conv4d.pt``: a deep ensemble (3 members) of the 4D CNN, and
- ``base_linear.pt``: the radially symmetric linear model,

on every data set of the simulated training library (``napari_4dstem_ml.simulate.suites.
library()``; ``python benchmarks/make_library.py`` writes it to ``benchmarks/_data/library``),
against each data set's exact projected potential low-passed to 0.4 Å (the label ptychography
cannot give for thick samples). Inputs are on a physical grid: the detector in units of the
convergence semi-angle α (48 × 48 pixels to 2.4 α), scan clusters on each data set's own
scan grid (0.2–0.4 Å; not resampled: bilinear interpolation between patterns left stripes,
see ``PreprocessConfig.scan_resample``), every pattern divided by its data set's dose. The CNN trains with on-the-fly
augmentation (Poisson noise redrawn at 5·10³–5·10⁵ e⁻/pattern from the noise-free patterns,
joint rotations/mirrors, scan-step, centre, descan, calibration and detector-reach changes).
Each data set trains on its upper 80 % of scan rows and validates on the rest. The linear
model reads an mrad grid (48 × 48 to 51.4 mrad): on held-out library items it transferred
better so (the CNN better in units of α; see the README's transfer section).

The checkpoints' ``provenance`` holds this recipe and every library item's parameters; their
``train_summary.domain`` the ranges of energy, α, detector sampling, scan step, dose and
dark-field fraction they cover. None of the held-out transfer-suite materials (WS2, hBN,
SrTiO3, Si, PrScO3) is in the library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RECIPE", "Recipe", "attach_pattern_domains", "library_items", "train_base_models"]


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a base model besides its data."""

    angle_units: str = "alpha"
    max_angle: float = 2.4
    grid: int = 48
    scan_step_A: float = 0.25
    scan_resample: bool = False
    label: str = "ground truth projected potential, low-passed to 0.4 A (10 % transfer)"
    train_fraction: float = 0.8
    cnn: dict[str, Any] = field(default_factory=lambda: {
        "cluster_size": 5, "channels": [8, 16], "dropout": 0.1, "ensemble": 3})
    cnn_train: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 16, "lr": 2e-3, "batch_size": 64, "steps_per_epoch": 400, "patience": 4,
        "seed": 0, "val_max_positions": 4000})
    linear: dict[str, Any] = field(default_factory=lambda: {
        "cluster_size": 5, "angle_units": "mrad", "max_angle": 51.36, "grid": 48})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPE = Recipe()


def _default_library() -> Path:
    return Path(__file__).resolve().parents[3] / "benchmarks" / "_data" / "library"


def library_items(library: str | Path, recipe: Recipe = RECIPE) -> tuple[list, list[dict], list]:
    """(training items, their provenance records, open HDF5 files to close) for every
    ``*.h5`` of ``library`` written by the simulator."""
    import h5py
    import numpy as np

    from ..io import load
    from ..training.clusters import RegionSplit
    from ..training.loop import TrainingItem

    files = sorted(Path(library).glob("*.h5"))
    if not files:
        raise FileNotFoundError(
            f"no simulated library in {library}: write it first with 'python benchmarks/make_library.py'"
        )
    items, records, handles = [], [], []
    for path in files:
        ds = load(path, dataset="datacube/data")
        f = h5py.File(path, "r")
        handles.append(f)
        if "noise_free" not in f or "ground_truth" not in f:
            raise ValueError(f"{path}: not a library item (no noise-free patterns or ground truth)")
        low = [k for k in f["ground_truth"] if k.startswith("potential_lowpass_")]
        label = np.asarray(f[f"ground_truth/{low[0]}"], np.float64)
        items.append(TrainingItem(ds, label, split=RegionSplit(train_fraction=recipe.train_fraction),
                                  noise_free=f["noise_free/patterns"], name=path.stem))
        cfg = f.attrs.get("simulation_config")
        records.append({"file": path.name, "config": json.loads(cfg) if cfg is not None else None})
    return items, records, handles


def train_base_models(
    library: str | Path | None = None,
    out_dir: str | Path | None = None,
    recipe: Recipe = RECIPE,
    kinds: tuple[str, ...] = ("linear", "conv4d"),
) -> Generator[Any, None, dict[str, Path]]:
    """Train the base models of ``kinds`` on ``library``; yields training events and returns
    {kind: checkpoint path}."""
    from .. import __version__
    from ..models import CNN4dConfig, EnsembleConfig, LinearConfig
    from ..preprocess import PreprocessConfig
    from ..training.augment import AugmentConfig
    from ..training.checkpoint import save_checkpoint
    from ..training.loop import DoneEvent, TrainConfig, train_items
    from . import BASE_MODEL_FILES

    library = Path(library) if library else _default_library()
    out_dir = Path(out_dir) if out_dir else Path(__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)  # before training, not after it
    items, records, handles = library_items(library, recipe)
    out = {}
    try:
        for kind in kinds:
            linear = kind == "linear"
            units, reach, grid = recipe.angle_units, recipe.max_angle, recipe.grid
            if linear:  # measured: the linear model transfers better on an mrad grid
                units, reach, grid = (recipe.linear["angle_units"], recipe.linear["max_angle"],
                                      recipe.linear["grid"])
            pre_cfg = PreprocessConfig(
                angle_units=units, max_angle=reach, output_shape=(grid, grid),
                output_pixel=2 * reach / grid, compression="none" if linear else "power",
                scan_step_A=recipe.scan_step_A, scan_resample=recipe.scan_resample)
            if linear:
                model_cfg = LinearConfig(cluster_size=recipe.linear["cluster_size"])
                train_cfg = TrainConfig(epochs=1, preview_every=0, seed=0)
                aug = None
            else:
                c = recipe.cnn
                member = CNN4dConfig(cluster_size=c["cluster_size"], channels=tuple(c["channels"]),
                                     dropout=c["dropout"])
                model_cfg = EnsembleConfig(member=member, size=c["ensemble"])
                train_cfg = TrainConfig(preview_every=0, **recipe.cnn_train)
                aug = AugmentConfig()
            t0 = time.time()
            result = None
            for ev in train_items(items, model_cfg, pre_cfg, train_cfg, augment=aug):
                yield ev
                if isinstance(ev, DoneEvent):
                    result = ev.result
            provenance = {
                "base_model": kind,
                "recipe": recipe.to_dict(),
                "library": records,
                "trained_seconds": round(time.time() - t0, 1),
                "package_version": __version__,
                "script": "python -m napari_4dstem_ml.base_model",
            }
            path = out_dir / BASE_MODEL_FILES[kind]
            save_checkpoint(path, result.model, result.model_config, result.preprocessor,
                            train_summary=result.train_summary, metrics=result.metrics,
                            provenance=provenance, overwrite=True)  # a rebuild replaces it
            out[kind] = path
    finally:
        for f in handles:
            f.close()
    return out


def attach_pattern_domains(library: str | Path | None = None, out_dir: str | Path | None = None,
                           kinds: tuple[str, ...] = ("linear", "conv4d")) -> dict[str, Path]:
    """Fit the library's pattern domains (one per item, as training on the library now does,
    :func:`~..pattern_domain.fit_items_pattern_domains`) and store them in the base
    checkpoints of ``kinds`` (in ``out_dir``, default the package) without retraining: the
    weights, preprocessing and every other field are kept, except that an ensemble's mirrored
    views are measured on the library's validation rows and kept or switched off as training
    does (:func:`~..training.trust.choose_mirror_average`) before its r against ADF and iCoM
    is measured. For base models trained before the pattern check existed."""
    from ..pattern_domain import fit_items_pattern_domains
    from ..training.checkpoint import load_checkpoint
    from . import BASE_MODEL_FILES

    library = Path(library) if library else _default_library()
    out_dir = Path(out_dir) if out_dir else Path(__file__).parent
    items, _, handles = library_items(library)
    out = {}
    try:
        domains = fit_items_pattern_domains(items)
        if not domains:
            raise ValueError(f"no pattern domain could be fitted on the library in {library}")
        for kind in kinds:
            path = out_dir / BASE_MODEL_FILES[kind]
            lm = load_checkpoint(path)
            slabs = _validation_slabs(lm, items)
            mirror = _choose_mirror(lm, slabs)
            out[kind] = _store_domains(path, lm, _with_versus(lm, slabs, domains), len(items), mirror)
    finally:
        for f in handles:
            f.close()
    return out


def _validation_slabs(lm: Any, items: list) -> dict[str, Any]:
    """Each library item's validation slab (:class:`~..training.trust.ValidationSlab`) on the
    positions training scored it on, by name."""
    from ..training.loop import validation_positions
    from ..training.trust import ValidationSlab

    k = lm.model.cluster_size
    return {it.name: ValidationSlab.take(lm.model, it.dataset, it.label, validation_positions(it, k))
            for it in items}


def _choose_mirror(lm: Any, slabs: dict[str, Any]) -> dict[str, Any] | None:
    """The mirrored views' record (``None`` without them), measured on the library."""
    from ..training.trust import choose_mirror_average

    scored = [(lm.preprocessor, s) for s in slabs.values() if s is not None]
    return choose_mirror_average(lm.model, scored)


def _with_versus(lm: Any, slabs: dict[str, Any], domains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``domains`` (one per library item, by name), each with the model's r against ADF's and
    iCoM's on that item's validation rows (:func:`~..training.trust.versus_classical`)."""
    from ..training.trust import versus_classical

    out = []
    for d in domains:
        slab = slabs.get(d.get("name"))
        vc = None
        if slab is not None:
            vc = versus_classical(lm.model, lm.preprocessor, slab.source, slab.label, slab.region,
                                  slab=slab)
        out.append({**d, "versus_classical": None if vc is None else vc.to_dict()})
    return out


def _store_domains(path: Path, lm: Any, domains: list[dict[str, Any]], n_items: int,
                   mirror: dict[str, Any] | None) -> Path:
    """Store ``domains`` and the mirrored views' record in the checkpoint at ``path`` (loaded
    as ``lm``), all else kept (the config's ``mirror_average`` follows the record)."""
    from dataclasses import replace

    from ..training.checkpoint import save_checkpoint

    info = lm.info
    summary = {**info.get("train_summary", {}), "pattern_domains": domains}
    provenance = {**info.get("provenance", {}),
                  "pattern_domains": f"fitted on the library ({len(domains)} of {n_items} "
                                     "items) by attach_pattern_domains"}
    config = lm.model_config
    if mirror is not None:
        summary["mirror_average"] = mirror
        config = replace(config, mirror_average=lm.model.mirror_average)
    save_checkpoint(path, lm.model, config, lm.preprocessor, train_summary=summary,
                    metrics=info.get("metrics"), provenance=provenance, overwrite=True)
    return path


def main(argv: list[str] | None = None) -> int:
    from ..training.loop import EpochEvent, PrepareEvent

    p = argparse.ArgumentParser(prog="python -m napari_4dstem_ml.base_model",
                                description="train the shipped base models on the simulated library")
    p.add_argument("--library", default=None, help="folder of simulated library items (*.h5)")
    p.add_argument("--out", default=None, help="where to write the checkpoints (default: the package)")
    p.add_argument("--kind", choices=("linear", "conv4d", "both"), default="both")
    p.add_argument("--pattern-domains-only", action="store_true",
                   help="no training: fit the library's pattern domains and store them in the "
                        "existing checkpoints")
    args = p.parse_args(argv)
    kinds = ("linear", "conv4d") if args.kind == "both" else (args.kind,)
    if args.pattern_domains_only:
        for kind, path in attach_pattern_domains(args.library, args.out, kinds).items():
            print(f"stored the library's pattern domains in {path} ({kind})")
        return 0
    gen = train_base_models(args.library, args.out, kinds=kinds)
    t0 = time.time()
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            for kind, path in stop.value.items():
                print(f"wrote {path} ({kind})")
            return 0
        if isinstance(ev, PrepareEvent) and ev.done in (0, ev.total):
            print(f"[{time.time() - t0:7.0f} s] {ev.stage} {ev.done}/{ev.total}", flush=True)
        elif isinstance(ev, EpochEvent):
            m = ", ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
            print(f"[{time.time() - t0:7.0f} s] epoch {ev.number}: train {ev.train_loss:.4f}, "
                  f"val {ev.val_loss:.4f}, {m}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
