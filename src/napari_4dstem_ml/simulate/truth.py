"""The ground truth of a simulated file at any resolution, blurred *before* it is sampled.

A file's ``/ground_truth/potential`` is the projected potential at the scan positions. A
Gaussian applied to that grid afterwards (:func:`napari_4dstem_ml.metrics.label_resolution`)
equals the blurred potential only when the potential has no detail beyond the scan's Nyquist
frequency; atomic potentials have plenty, so at coarse steps the sampled grid is aliased
(whether a column falls on a scan position or between two sets its sampled height) and the
blur keeps the aliasing: at a 0.4 Å step the two references correlate at r 0.91 only (CeO2
[001]). :func:`ground_truth` rebuilds the file's potential on the simulation's fine grid from
the configuration the file stores (no multislice: seconds), checks it against the stored
``/ground_truth/potential``, and :meth:`.groundtruth.GroundTruth.at` blurs it there and
samples it at the scan positions. Files written by :mod:`.engine` (suites, library,
simulate-train) and the two bundled samples (:mod:`.mos2`, :mod:`.prsco3`) are understood.
Needs abTEM (the ``[sim]`` extra).

The generators also store the two references scores need
(:func:`.groundtruth.reference_datasets`: ``LABEL_REFERENCE`` and ``LOWPASS_REFERENCE``), so
that reading them (``samples.load_sample``, napari's Compare dock) needs neither abTEM nor the
structure; this module is for files written before they did.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .groundtruth import GroundTruth

__all__ = ["ground_truth"]

#: the rebuilt potential must reproduce the stored one to this fraction of its range
MATCH_RTOL = 1e-3


def _restore(cls, d: dict):
    """A frozen config dataclass from its JSON dict (lists back to tuples; the detector)."""
    from .detector import DetectorModel

    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = (DetectorModel(**{k: tup(x) for k, x in v.items()})
                          if f.name == "detector" else tup(v))
    return cls(**kw)


def _grid(path: Path):
    import h5py

    from . import engine, mos2, prsco3

    cfg = engine.existing_config(path)
    if cfg is not None:
        return engine.ground_truth_grid(cfg)
    with h5py.File(path, "r") as f:
        text = f.attrs.get("config")
    d = json.loads(str(text)) if text is not None else {}
    if "a_A" in d and "cells" in d:
        return mos2.ground_truth_grid(_restore(mos2.MoS2Config, d))
    if "lattice_A" in d and "thickness_cells" in d:
        return prsco3.ground_truth_grid(_restore(prsco3.PrScO3Config, d))
    raise ValueError(f"{path}: no simulation configuration this package wrote (neither a "
                     "'simulation_config' nor a MoS2/PrScO3 sample 'config' attribute)")


def ground_truth(path: str | Path) -> GroundTruth:
    """The ground truth of the simulated file ``path``, rebuilt from its stored configuration
    and checked against its ``/ground_truth/potential`` (``ValueError`` naming the file when
    they differ by more than :data:`MATCH_RTOL` of the range: the structure code changed since
    the file was written)."""
    import h5py

    p = Path(path)
    with h5py.File(p, "r") as f:
        if "ground_truth/potential" not in f:
            raise ValueError(f"{p}: no /ground_truth/potential")
        stored = np.asarray(f["ground_truth/potential"], np.float64)
    proj, sampling, y_A, x_A = _grid(p)
    gt = GroundTruth(np.asarray(proj, np.float64), (float(sampling[0]), float(sampling[1])),
                     np.asarray(y_A, float), np.asarray(x_A, float))
    again = gt.at(0.0)
    if again.shape != stored.shape:
        raise ValueError(f"{p}: the rebuilt ground truth has shape {again.shape}, the file "
                         f"{stored.shape}")
    diff = float(np.abs(again - stored).max())
    span = float(np.ptp(stored)) or 1.0
    if diff > MATCH_RTOL * span:
        raise ValueError(f"{p}: the ground truth rebuilt from the stored configuration differs "
                         f"from /ground_truth/potential by {diff / span:.1e} of its range "
                         "(the structure code changed since the file was written)")
    return gt
