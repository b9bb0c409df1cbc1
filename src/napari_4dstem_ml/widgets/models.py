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

from ..workflow import trust_line
from .session import Session, SessionModel


def model_kind(model_config) -> str:
    """"linear" or "conv4d" for a model configuration (an ensemble: its members' kind)."""
    kind = getattr(model_config, "kind", None)
    if kind == "ensemble":
        kind = getattr(model_config.member, "kind", None)
    if kind is None:
        kind = "linear" if "linear" in type(model_config).__name__.lower() else "conv4d"
    return "linear" if kind == "linear" else "conv4d"


def file_stamp(path) -> tuple[str, int, int] | None:
    """(resolved path, size, modification time in ns) of a file, or ``None``."""
    try:
        p = Path(path).resolve()
        st = p.stat()
    except OSError:
        return None
    return (str(p), st.st_size, st.st_mtime_ns)


def mark_saved(entry: SessionModel, path) -> None:
    """``entry`` was just written to ``path``: it is that file's model from now on."""
    entry.path = str(path)
    entry.source = str(path)
    entry.info = {**(entry.info or {}), "file_stamp": file_stamp(path)}


def find_loaded(session: Session, path) -> SessionModel | None:
    """The session's model that is checkpoint ``path`` as it is on disk now (loaded from it,
    or saved to it and not changed since), else ``None``."""
    stamp = file_stamp(path)
    if stamp is None:
        return None
    for entry in session.models.values():
        info = entry.info or {}
        if info.get("file_stamp") is not None and tuple(info["file_stamp"]) == stamp:
            return entry
    return None


def load_model_file(session: Session, path) -> SessionModel:
    """Load checkpoint ``path`` into ``session`` (a ``CheckpointError`` names a bad file). A
    file that is already the session's model (loaded or saved here, unchanged on disk) is not
    added a second time: that model is returned."""
    from ..training.checkpoint import load_checkpoint

    path = Path(path)
    known = find_loaded(session, path)
    if known is not None:
        return known
    loaded = load_checkpoint(path)
    entry = SessionModel(
        name=path.name,
        kind=model_kind(loaded.model_config),
        model=loaded.model,
        model_config=loaded.model_config,
        preprocessor=loaded.preprocessor,
        info={**dict(loaded.info), "file_stamp": file_stamp(path)},
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
    from ..training.loop import how_it_ended

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
        ended = (how_it_ended(ts["stopped"], int(ts["epochs_run"]), ts.get("best_epoch"))
                 if "stopped" in ts and "epochs_run" in ts else "")
        lines.append(
            f"{ts.get('n_train', '?')} training / {ts.get('n_val', '?')} validation positions"
            + (f", {ended}" if ended else "")
        )
    metrics = info.get("metrics") or {}
    if metrics:
        lines.append(
            "validation: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                                       if isinstance(v, (int, float)))
        )
    trust = trust_line(ts)
    if trust:
        lines.append(trust)
    if info.get("created"):
        lines.append(f"saved {info['created']} (package {info.get('package_version', '?')})")
    lines.append(f"from: {entry.source}")
    return "\n".join(lines)
