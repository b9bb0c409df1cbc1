"""The session's models: loading checkpoints into a session, and describing models.

A model trained in the training widget, or loaded from a ``.pt`` checkpoint (the widget's
"Load model…" button, or dropping the file onto napari: the plugin's ``.pt`` reader), becomes
a :class:`~napari_4dstem_ml.widgets.session.SessionModel` that Apply can run on any loaded 4D
data set. Loading uses the core's :func:`~napari_4dstem_ml.training.checkpoint.load_checkpoint`
(no pickled code runs).
"""

from __future__ import annotations

import math
from pathlib import Path

from .session import Session, SessionModel


def model_kind(model_config) -> str:
    """"linear" or "conv4d" for a model configuration (an ensemble: its members' kind)."""
    kind = getattr(model_config, "kind", None)
    if kind == "ensemble":
        kind = getattr(model_config.member, "kind", None)
    if kind is None:
        kind = "linear" if "linear" in type(model_config).__name__.lower() else "conv4d"
    return "linear" if kind == "linear" else "conv4d"


def load_model_file(session: Session, path) -> SessionModel:
    """Load checkpoint ``path`` into ``session`` (a ``CheckpointError`` names a bad file)."""
    from ..training.checkpoint import load_checkpoint

    path = Path(path)
    loaded = load_checkpoint(path)
    entry = SessionModel(
        name=path.name,
        kind=model_kind(loaded.model_config),
        model=loaded.model,
        model_config=loaded.model_config,
        preprocessor=loaded.preprocessor,
        info=dict(loaded.info),
        source=str(path),
        path=str(path),
    )
    session.add_model(entry)
    return entry


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def describe(entry: SessionModel) -> str:
    """A few lines for the user: model, training data, calibrations, metrics, origin."""
    cfg = entry.model_config
    info = entry.info or {}
    ts = info.get("train_summary") or {}
    k = getattr(cfg, "cluster_size", None) or getattr(getattr(cfg, "member", None), "cluster_size", "?")
    lines = [f"{entry.name}: {entry.kind} model, cluster K = {k}"]
    pre = entry.preprocessor
    grid = f"{pre.output_shape[0]}×{pre.output_shape[1]} detector grid"
    if pre.grid_units == "mrad":
        grid += f", {_fmt(float(pre.output_pixel))} mrad/px"
    elif pre.grid_units == "alpha":
        grid += f", {_fmt(float(pre.output_pixel))} α/px (in units of the convergence angle)"
    size = getattr(cfg, "size", None)
    if getattr(cfg, "kind", None) == "ensemble" and size:
        grid += f"; ensemble of {size}"
    lines.append(grid)
    if ts:
        src = ts.get("source") or "a data set in memory"
        shape = ts.get("data_shape")
        lines.append(f"trained on {Path(str(src)).name}" + (f" {tuple(shape)}" if shape else ""))
        cal = ts.get("calibration") or {}
        bits = []
        if cal.get("scan_step"):
            bits.append(f"scan step {_fmt(float(cal['scan_step'][0]))} {cal.get('scan_units', '')}")
        if cal.get("detector_pixel"):
            bits.append(
                f"detector {_fmt(float(cal['detector_pixel'][0]))} {cal.get('detector_units', '')}/px"
            )
        if cal.get("energy_ev"):
            bits.append(f"{_fmt(float(cal['energy_ev']) / 1e3)} keV")
        if cal.get("convergence_mrad"):
            bits.append(f"α {_fmt(float(cal['convergence_mrad']))} mrad")
        if bits:
            lines.append(", ".join(bits))
        split = ts.get("split") or {}
        if split.get("train"):
            lines.append(f"train region {split['train']}, validation {split.get('val')}")
        lines.append(
            f"{ts.get('n_train', '?')} training / {ts.get('n_val', '?')} validation positions, "
            f"{ts.get('epochs_run', '?')} epochs ({ts.get('stopped', '?')})"
        )
    metrics = info.get("metrics") or {}
    if metrics:
        lines.append(
            "validation: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                                       if isinstance(v, (int, float)))
        )
    if info.get("created"):
        lines.append(f"saved {info['created']} (package {info.get('package_version', '?')})")
    lines.append(f"from: {entry.source}")
    return "\n".join(lines)
