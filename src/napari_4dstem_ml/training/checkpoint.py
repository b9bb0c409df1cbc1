"""One-file model checkpoints, saved atomically and loaded safely.

A checkpoint is a ``torch.save`` file of ``{"format": FORMAT, "version": VERSION,
"config_json": str, "state_dict": {name: tensor}}``. ``config_json`` holds the model
configuration, the fitted preprocessor (detector angular grid, normalisation, label
normalisation), a training-data summary, metrics and the package version. Loading uses
``torch.load(weights_only=True)``: no pickled code runs.

Saving goes through :func:`napari_4dstem_ml.export.output_file`: a temporary file beside the
target, fsynced, then linked into place only if the target is still absent (replaced only with
``overwrite=True``); a failed or killed save leaves the old file intact. A model with
non-finite weights is never saved. Loading validates the description against sane limits
(:data:`LIMITS`) before building anything, and the stored weights against the description:
their names and shapes against those the description implies (:func:`expected_state_shapes`,
worked out without allocating the model; every member of an ensemble alike) *before* the model
is built, so a small file cannot make the loader allocate a large model; the archive itself
must hold its tensors uncompressed, as ``torch.save`` writes them (no zip bomb).

(a training run's ``--init`` is resolved by :func:`napari_4dstem_ml.base_model.initial_model`)
and refuses a model of another kind than the one being trained (a CNN, or an ensemble of
CNNs, given to ``--model linear``) before any work.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..preprocess import Preprocessor

__all__ = ["FORMAT", "LIMITS", "VERSION", "CheckpointError", "LoadedModel",
           "expected_state_shapes", "load_checkpoint", "model_kind",
           "save_checkpoint"]

FORMAT = "napari-4dstem-ml-checkpoint"
VERSION = 2  # 2: ensembles, detector grids in units of α, scan steps, training domains
#: sane upper limits of a checkpoint's description, checked before anything is allocated
LIMITS = {
    "file_bytes": 4 * 2**30,  # the whole checkpoint file
    "config_json_chars": 16 * 2**20,
    "detector_grid": 2048,  # model detector grid, pixels per side
    "cluster_size": 63,
    "n_radial_bins": 4096,
    "channels": 1024,
    "kernel": 31,  # kernel_scan, kernel_det, input_pool, pool_det
}


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
    overwrite: bool = False,
    inputs: tuple = (),
) -> Path:
    """Write ``model`` and its description to ``path`` through
    :func:`~napari_4dstem_ml.export.output_file` (an existing file is replaced only with
    ``overwrite``; never one of ``inputs``); returns the written path. A model with NaN/inf
    weights raises :class:`CheckpointError` and nothing is written.

    ``provenance``: where the model comes from (e.g. a base model's training recipe and
    simulated library), kept in the description and carried into models fine-tuned from it.
    """
    import torch

    from .. import __version__
    from ..export import OutputError, output_file, prepare_output, writing

    path = Path(path)
    prepare_output(path, overwrite=overwrite, inputs=inputs)
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(
            f"{path}: not saved: the model's weights are not finite ({', '.join(bad[:4])} hold "
            "NaN/inf values); training diverged or the data held NaN/inf values")
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

    with output_file(path, overwrite=overwrite, inputs=inputs) as tmp, writing(path), \
            open(tmp, "xb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # PyTorch's zip writer reports a failed write this way
            raise OutputError(f"output {path}: could not be written ({e})", path) from e
    return path


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or inf values."""
    import torch

    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    this version cannot use, raises :class:`CheckpointError` naming the file and the problem.

    Checked before anything is built: a regular file of at most ``LIMITS["file_bytes"]``,
    the format tag and version, the description within :data:`LIMITS` and with finite
    statistics; then the stored tensors against the model the description builds (names,
    shapes, the index tables derived from the description) and for finite values."""
    import pickle  # noqa: F401 - pickle errors are among those caught below

    import torch

    from ..models import build_model, config_from_dict

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror})") from e
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (expected a .pt checkpoint)")
    if st.st_size > LIMITS["file_bytes"]:
        raise CheckpointError(f"{path}: {st.st_size / 2**30:.1f} GiB is far larger than any "
                              "napari-4dstem-ml checkpoint")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from e
    if magic != b"PK\x03\x04":  # torch.save's zip format, which save_checkpoint writes
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (not a readable "
                              "torch file: no zip signature)")
    _check_archive(path, st.st_size)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as e:
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (it claims more "
                              "memory than is available)") from e
    except Exception as e:  # noqa: BLE001 - any failure to parse a foreign or broken file
        raise CheckpointError(
            f"{path} is not a napari-4dstem-ml checkpoint ({_load_failure_reason(e)})"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (it holds a "
                              f"{type(obj).__name__}, not a checkpoint)")
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (format tag "
                              f"{obj.get('format')!r})")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-4dstem-ml (checkpoint version {version}); "
            f"this one reads up to version {VERSION}: upgrade the package"
        )
    for key in ("config_json", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    text, state = obj["config_json"], obj["state_dict"]
    if not isinstance(text, str) or len(text) > LIMITS["config_json_chars"]:
        raise CheckpointError(f"{path}: invalid description (config_json must be a JSON text "
                              f"of at most {LIMITS['config_json_chars']} characters)")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: invalid state_dict (expected names mapped to tensors)")
    try:
        config = json.loads(text)
        model_config = config_from_dict(config["model"])
        pre = Preprocessor.from_dict(config["preprocessor"])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: incomplete or invalid description ({e!r})") from e
    check_description(model_config, pre, path)
    _check_shapes_before_build(model_config, tuple(pre.output_shape), state, path)
    try:
        model = build_model(model_config, tuple(pre.output_shape))
    except (RuntimeError, ValueError, TypeError, MemoryError) as e:
        raise CheckpointError(f"{path}: the stored model description cannot be built ({e})") from e
    _check_state(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: the stored weights do not fit the stored model description ({e})"
        ) from e
    model.to(device)
    model.eval()
    info = {k: v for k, v in config.items() if k not in ("model", "preprocessor")} \
        if isinstance(config, dict) else {}
    return LoadedModel(model=model, model_config=model_config, preprocessor=pre, info=info)


def check_description(model_config: Any, pre: Preprocessor, path: str | os.PathLike = "") -> None:
    """A model description within :data:`LIMITS` and with finite, positive statistics (so that
    building the model allocates a bounded amount of memory and its output is not NaN)."""
    problems = []
    size = getattr(model_config, "size", 1)  # an ensemble: checks apply to its member
    if not 1 <= int(size) <= 32:
        problems.append(f"ensemble size {size} (expected 1..32)")
    model_config = getattr(model_config, "member", model_config)
    grid = tuple(pre.output_shape)
    if len(grid) != 2 or not all(1 <= int(n) <= LIMITS["detector_grid"] for n in grid):
        problems.append(f"detector grid {grid} (expected 1..{LIMITS['detector_grid']} per side)")
    det = tuple(pre.detector_shape)
    if len(det) != 2 or not all(1 <= int(n) <= 65536 for n in det):
        problems.append(f"detector shape {det}")
    k = getattr(model_config, "cluster_size", 1)
    if not 1 <= int(k) <= LIMITS["cluster_size"]:
        problems.append(f"cluster size {k} (expected at most {LIMITS['cluster_size']})")
    bins = getattr(model_config, "n_radial_bins", None)
    if bins is not None and int(bins) > LIMITS["n_radial_bins"]:
        problems.append(f"{bins} radial bins (expected at most {LIMITS['n_radial_bins']})")
    for c in getattr(model_config, "channels", ()) or ():
        if int(c) > LIMITS["channels"]:
            problems.append(f"{c} channels (expected at most {LIMITS['channels']})")
    for name in ("kernel_scan", "kernel_det", "input_pool", "pool_det"):
        v = getattr(model_config, name, None)
        if v is not None and int(v) > LIMITS["kernel"]:
            problems.append(f"{name} {v} (expected at most {LIMITS['kernel']})")
    positive = {"output_pixel": pre.output_pixel, "mean_counts": pre.mean_counts,
                "input_std": pre.input_std, "label_std": pre.label_std,
                "detector_pixel": min(pre.detector_pixel)}
    for name, v in positive.items():
        if not (math.isfinite(float(v)) and float(v) > 0):
            problems.append(f"{name} {v!r} (expected a positive number)")
    for name in ("scan_step_A", "data_scan_step_A"):
        v = getattr(pre, name, None)
        if v is not None and not all(math.isfinite(float(x)) and 1e-3 <= float(x) <= 1e3 for x in v):
            problems.append(f"{name} {v!r} (expected 0.001..1000 Å)")
    alpha = getattr(pre, "alpha_mrad", None)
    if alpha is not None and not (math.isfinite(float(alpha)) and float(alpha) > 0):
        problems.append(f"alpha_mrad {alpha!r} (expected a positive number)")
    for name, v in {"input_mean": pre.input_mean, "label_mean": pre.label_mean,
                    "centre": sum(pre.centre)}.items():
        if not math.isfinite(float(v)):
            problems.append(f"{name} {v!r} (expected a finite number)")
    if problems:
        raise CheckpointError(f"{path}: invalid model description: {'; '.join(problems)}")


def _check_state(model: Any, state: dict, path: Path) -> None:
    """Stored tensors against the freshly built model: same names and shapes, the buffers
    derived from the description (index tables, interpolation matrices; not learned running
    statistics) equal to the rebuilt ones, and no NaN/inf weights."""
    import torch

    own = model.state_dict()
    derived = {n for n, _ in model.named_buffers()
               if "running_" not in n and "num_batches_tracked" not in n}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{path}: the stored weights do not fit the stored model description (missing "
            f"{missing[:4]}, unexpected {extra[:4]})")
    for name, ref in own.items():
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: the stored weights do not fit the stored model description "
                f"({name}: shape {tuple(got.shape)}, expected {tuple(ref.shape)})")
        if name in derived:
            same = (torch.allclose(got.to(ref.dtype), ref, rtol=1e-5, atol=1e-6, equal_nan=False)
                    if ref.is_floating_point() else torch.equal(got.to(ref.dtype), ref))
            if not same:
                raise CheckpointError(f"{path}: corrupt checkpoint: the stored table {name!r} "
                                      "does not match the model description")
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{path}: corrupt checkpoint: {', '.join(bad[:4])} hold NaN/inf "
                              "values")


def _check_archive(path: Path, size: int) -> None:
    """The zip archive holds its entries uncompressed (as ``torch.save`` writes them) and no
    more bytes than the file: nothing in it can unpack into more memory than it occupies."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (not a readable "
                              f"torch file: truncated or corrupt archive: {e})") from e
    packed = [i.filename for i in entries
              if i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size]
    if packed:
        raise CheckpointError(f"{path} is not a napari-4dstem-ml checkpoint (compressed archive "
                              f"entries, e.g. {packed[0]!r}; torch.save stores them uncompressed)")
    if sum(i.file_size for i in entries) > size:
        raise CheckpointError(f"{path}: corrupt checkpoint (its archive claims more bytes than "
                              "the file holds)")


def model_kind(model_config: Any) -> str:
    """"linear" or "conv4d": the kind of a model, or of an ensemble's members."""
    return getattr(getattr(model_config, "member", model_config), "kind", "unknown")


def expected_state_shapes(model_config: Any, grid: tuple[int, int]) -> dict[str, tuple]:
    """The ``state_dict`` names and shapes that ``build_model(model_config, grid)`` gives,
    worked out without allocating the model (the CNN built on PyTorch's ``meta`` device, the
    linear model's tables from its formulas; an ensemble's members alike)."""
    import torch

    size = getattr(model_config, "size", None)
    member = getattr(model_config, "member", model_config)
    ky, kx = (int(n) for n in grid)
    if member.kind == "linear":
        from ..models.linear import cluster_distance_groups

        k = int(member.cluster_size)
        n_groups = len(cluster_distance_groups(k)[1])
        bins = int(member.n_radial_bins)
        one = {"group_index": (k, k), "cluster_r2": (n_groups,), "interp": (ky * kx, bins),
               "r_nodes": (bins,), "w": (n_groups,), "m": (bins,), "bias": ()}
    else:
        from ..models import build_model

        with torch.device("meta"):
            net = build_model(member, (ky, kx))
        one = {n: tuple(t.shape) for n, t in net.state_dict().items()}
    if size is None:
        return one
    return {f"members.{i}.{n}": shape for i in range(int(size)) for n, shape in one.items()}


def _check_shapes_before_build(model_config: Any, grid: tuple[int, int], state: dict,
                               path: Path) -> None:
    """The stored tensors have the names and shapes the description implies: checked before
    the model is built, so that building allocates no more than the file holds."""
    try:
        expected = expected_state_shapes(model_config, grid)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: the stored model description cannot be built ({e})") from e
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:4]}, unexpected {extra[:4]}"
    else:
        name = next(n for n in expected if expected[n] != got[n])
        detail = f"{name}: shape {got[name]}, expected {expected[name]}"
    raise CheckpointError(
        f"{path}: the stored weights do not fit the stored model description ({detail})")


def _load_failure_reason(e: BaseException) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)`` (PyTorch's own message
    spans many lines; the original exception stays chained)."""
    text = str(e)
    if "Unsupported global" in text:
        return "it holds pickled Python objects, which are never loaded"
    if "Weights only load failed" in text or not text.strip():
        return "not a readable torch file"
    if "PytorchStreamReader" in text or "central directory" in text:
        return "not a readable torch file: truncated or corrupt archive"
    first = text.strip().splitlines()[0]
    return f"not a readable torch file: {first[:120]}"
