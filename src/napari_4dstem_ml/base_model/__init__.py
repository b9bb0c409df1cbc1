"""The base models shipped with the plugin, and the recipe that trains them.

``load_base_model("conv4d" | "linear")`` returns the shipped checkpoint as a
:class:`~napari_4dstem_ml.training.checkpoint.LoadedModel`. They were trained on this
repository's simulated library of materials (``python -m napari_4dstem_ml.base_model``, see
:mod:`.recipe`); each checkpoint's ``provenance`` holds the recipe and the list of simulated
data sets (structure, energy, convergence angle, thickness, defocus, dose range). ``stemml
train`` and the napari training widget fine-tune them on the user's label by default
(:func:`initial_model` resolves a run's ``--init``: "base", "scratch" or a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BASE_MODEL_FILES", "base_model_path", "initial_model", "load_base_model"]

BASE_MODEL_FILES = {"conv4d": "base_conv4d.pt", "linear": "base_linear.pt"}


def base_model_path(kind: str) -> Path:
    """Where the shipped base model of ``kind`` lies."""
    if kind not in BASE_MODEL_FILES:
        raise ValueError(f"no base model of kind {kind!r}; there are {sorted(BASE_MODEL_FILES)}")
    return Path(__file__).with_name(BASE_MODEL_FILES[kind])


def load_base_model(kind: str = "conv4d"):
    """The shipped base model of ``kind`` (``"conv4d"`` or ``"linear"``)."""
    from ..training.checkpoint import load_checkpoint

    path = base_model_path(kind)
    if not path.is_file():
        raise FileNotFoundError(
            f"the base {kind} model is missing from this installation ({path}); train from "
            "scratch (--init scratch) or rebuild it with 'python -m napari_4dstem_ml.base_model'"
        )
    return load_checkpoint(path)


def initial_model(init: str | Path | None, kind: str):
    """The model a training run of ``kind`` ("linear" or "conv4d") starts from: ``None`` for
    ``"scratch"``, the shipped base model for ``"base"``, else the checkpoint at ``init``
    (a :class:`~napari_4dstem_ml.training.checkpoint.LoadedModel`). A model of another kind
    (also as an ensemble's members) is refused naming ``--init``."""
    from ..training.checkpoint import CheckpointError, load_checkpoint, model_kind

    if init is None or str(init) == "scratch":
        return None
    if str(init) == "base":
        loaded, what = load_base_model(kind), f"--init base ({base_model_path(kind)})"
    else:
        p = Path(init)
        if not p.exists():
            raise CheckpointError(f"--init {init}: no such checkpoint (expected 'base', "
                                  "'scratch' or a checkpoint written by 'stemml train')")
        loaded, what = load_checkpoint(p), f"--init {init}"
    got = model_kind(loaded.model_config)
    if got != kind:
        size = getattr(loaded.model_config, "size", None)
        held = f"an ensemble of {size} {got} models" if size else f"a {got} model"
        raise CheckpointError(
            f"{what}: it holds {held}, not a {kind} model; give a {kind} checkpoint, 'base' or "
            f"'scratch', or train --model {got}")
    return loaded
