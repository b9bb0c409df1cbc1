"""One-file model checkpoints, saved atomically and loaded safely.

A checkpoint is a ``torch.save`` file of ``{"format": FORMAT, "version": VERSION,
"config_json": str, "state_dict": {name: tensor}}``. ``config_json`` holds the model
configuration, the fitted preprocessor (detector angular grid, normalisation, label
normalisation), a training-data summary, metrics and the package version. Loading uses
``torch.load(weights_only=True)``: no pickled code runs.

Saving writes a temporary file in the target's directory, flushes and fsyncs it, then
``os.replace``s it onto the target: the target is never touched until the new file is
complete, and a failed save leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..preprocess import Preprocessor

__all__ = ["FORMAT", "VERSION", "CheckpointError", "LoadedModel", "load_checkpoint", "save_checkpoint"]

FORMAT = "napari-4dstem-ml-checkpoint"
VERSION = 2  # 2: ensembles, detector grids in units of α, scan steps, training domains


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt or incompatible."""


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint (eval mode, on the CPU) with its preprocessor and the
    rest of the stored description in ``info`` (``train_summary``, ``metrics``,
    ``package_version``, ``created``, ...)."""

    model: Any
    model_config: Any
    preprocessor: Preprocessor
    info: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    model,
    model_config,
    preprocessor: Preprocessor,
    *,
    train_summary: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its description to ``path`` atomically; returns the path.

    ``provenance``: where the model comes from (e.g. a base model's training recipe and
    simulated library), kept in the description and carried into models fine-tuned from it.
    """
    import torch

    from .. import __version__

    path = Path(path)
    config = {
        "model": model_config.to_dict(),
        "preprocessor": preprocessor.to_dict(),
        "detector_grid": {
            "shape": list(preprocessor.output_shape),
            "pixel": preprocessor.output_pixel,
            "units": preprocessor.grid_units,
        },
        "label_normalisation": {"mean": preprocessor.label_mean, "std": preprocessor.label_std},
        "train_summary": train_summary or {},
        "metrics": metrics or {},
        "provenance": provenance or {},
        "package_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        config_json = json.dumps(config, allow_nan=True, default=_json_default)
    except TypeError as e:
        raise CheckpointError(f"{path}: the description cannot be stored as JSON: {e}") from e
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "config_json": config_json, "state_dict": state}

    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def load_checkpoint(path: str | os.PathLike, *, device: Any = "cpu") -> LoadedModel:
    """Read a checkpoint written by :func:`save_checkpoint`; a file that is not one, or one
    this version cannot use, raises :class:`CheckpointError` naming the file and the problem."""
    import pickle
    import zipfile

    import torch

    from ..models import build_model, config_from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a napari-4dstem-ml checkpoint ({_load_failure_reason(e)})"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        tag = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (format tag {tag!r})")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-4dstem-ml (checkpoint version {version}); "
            f"this one reads up to version {VERSION}: upgrade the package"
        )
    for key in ("config_json", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    try:
        config = json.loads(obj["config_json"])
        model_config = config_from_dict(config["model"])
        pre = Preprocessor.from_dict(config["preprocessor"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: incomplete or invalid description ({e!r})") from e
    try:
        model = build_model(model_config, tuple(pre.output_shape))
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: the stored weights do not fit the stored model description ({e})"
        ) from e
    model.to(device)
    model.eval()
    info = {k: v for k, v in config.items() if k not in ("model", "preprocessor")}
    return LoadedModel(model=model, model_config=model_config, preprocessor=pre, info=info)


def _load_failure_reason(e: BaseException) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)`` (PyTorch's own message
    spans many lines; the original exception stays chained)."""
    text = str(e)
    if "Unsupported global" in text:
        return "it holds pickled Python objects, which are never loaded"
    if "Weights only load failed" in text or not text.strip():
        return "not a readable torch file"
    first = text.strip().splitlines()[0]
    return f"not a readable torch file: {first[:120]}"
