"""A calibrated model of a reconstruction's local error: the uncertainty map that ranks it.

A deep ensemble's spread is small where the members agree, and on data unlike their training
they can agree and be wrong together; measured on held-out materials its rank correlation
with the actual error was 0.03–0.41. :class:`ErrorModel` predicts the *local RMS error* of an
image (label units, scan axes ``(scan_y, scan_x)``) from features of the prediction itself,
fitted post hoc on the training label's validation region, where the error is known:

- ``spread``: the ensemble members' standard deviation (when the model is an ensemble);
- ``gradient``: the image's gradient magnitude (Gaussian derivative, σ = 1 scan step);
- ``detail``: |image − image blurred by 2 scan steps| (fine structure: where atoms are);
- ``distance``: the pattern-space distance of each position from the training patterns
  (when the checkpoint has pattern statistics; see :mod:`napari_4dstem_ml.pattern_domain`).

Every feature is smoothed like the error (local RMS over a Gaussian window of one scan step),
taken as a logarithm and, except ``distance``, centred on its own median over the image, so the
model compares positions *within* an image (what ranking needs) and does not depend on the
image's units. ``log(error / median(spread or |image - median|))`` is then a least-squares
linear function of the features. The map's level is set by the spread's (or, without an
ensemble, the image's detail's) median, in label units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ErrorModel", "error_features", "local_rms_error"]

FEATURES = ("spread", "gradient", "detail", "distance")
_EPS = 1e-6


def _local_rms(a: np.ndarray, window: float) -> np.ndarray:
    return np.sqrt(ndimage.gaussian_filter(np.asarray(a, np.float64) ** 2, window, mode="nearest"))


def local_rms_error(image: np.ndarray, reference: np.ndarray, window: float = 1.0) -> np.ndarray:
    """Local RMS of ``image − reference`` after a scale/offset fit of the image to the
    reference (label units of the reference), Gaussian window ``window`` scan steps."""
    from .metrics import fit_scale_offset

    _, _, fitted = fit_scale_offset(image, reference)
    return _local_rms(fitted - np.asarray(reference, np.float64), window)


def _level(image: np.ndarray, spread: np.ndarray | None) -> float:
    """The map's unit: the median spread, else the median fine detail of the image."""
    if spread is not None and np.isfinite(spread).any() and np.nanmedian(spread) > 0:
        return float(np.nanmedian(spread))
    z = np.asarray(image, np.float64)
    d = np.abs(z - ndimage.gaussian_filter(z, 2.0, mode="nearest"))
    m = float(np.nanmedian(d))
    return m if m > 0 else float(np.nanstd(z)) or 1.0


def error_features(image: np.ndarray, spread: np.ndarray | None = None,
                   distance: np.ndarray | None = None, *, window: float = 1.0) -> dict[str, np.ndarray]:
    """The features (see the module docstring) of an image ``(scan_y, scan_x)``: each a map of
    the image's shape, float64, in log units; ``spread``/``distance`` omitted when ``None``."""
    z = np.asarray(image, np.float64)
    sd = float(np.nanstd(z)) or 1.0
    z = (z - float(np.nanmean(z))) / sd
    grad = np.hypot(ndimage.gaussian_filter(z, 1.0, order=(0, 1), mode="nearest"),
                    ndimage.gaussian_filter(z, 1.0, order=(1, 0), mode="nearest"))
    detail = z - ndimage.gaussian_filter(z, 2.0, mode="nearest")
    out = {"gradient": _local_rms(grad, window), "detail": _local_rms(detail, window)}
    if spread is not None:
        out["spread"] = _local_rms(spread, window)
    feats = {}
    for k, v in out.items():
        lv = np.log(v + _EPS * (np.nanmedian(v) + _EPS))
        feats[k] = lv - np.nanmedian(lv)
    if distance is not None:
        feats["distance"] = np.log1p(np.clip(np.asarray(distance, np.float64), 0, None))
    return feats


@dataclass(frozen=True)
class ErrorModel:
    """``log(local RMS error / level) = intercept + Σ coef · feature`` (see the module
    docstring); ``rho_validation``: Spearman ρ of the map with the actual error on the
    validation region it was fitted on; ``n_fit``: positions used."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    window: float = 1.0
    rho_validation: float = float("nan")
    n_fit: int = 0

    @classmethod
    def fit(cls, image: np.ndarray, reference: np.ndarray, *, spread: np.ndarray | None = None,
            distance: np.ndarray | None = None, region: np.ndarray | None = None,
            window: float = 1.0, crop: int = 2) -> ErrorModel:
        """Fit on one image and its reference (the label) over ``region`` (bool mask of the
        image's shape: the validation region; ``None``: all), ``crop`` edge pixels left out."""
        from scipy.stats import spearmanr

        image = np.asarray(image, np.float64)
        reference = np.asarray(reference, np.float64)
        if image.shape != reference.shape:
            raise ValueError(f"ErrorModel.fit: image {image.shape} and reference "
                             f"{reference.shape} differ in shape")
        use = np.ones(image.shape, bool) if region is None else np.asarray(region, bool).copy()
        if crop:
            edge = np.zeros(image.shape, bool)
            edge[crop:-crop, crop:-crop] = True
            use &= edge
        use &= np.isfinite(image) & np.isfinite(reference)
        if use.sum() < 32:
            raise ValueError(f"ErrorModel.fit: {int(use.sum())} usable positions, need >= 32")
        err = local_rms_error(np.where(use, image, np.nanmean(image[use])),
                              np.where(use, reference, np.nanmean(reference[use])), window)
        feats = error_features(image, spread, distance, window=window)
        names = tuple(k for k in FEATURES if k in feats)
        level = _level(image, spread)
        y = np.log(err[use] / level + _EPS)
        x = np.stack([feats[k][use] for k in names] + [np.ones(int(use.sum()))], axis=1)
        # a little ridge: features are correlated (spread and detail both peak on atoms)
        lam = 1e-3 * len(y)
        a = x.T @ x + lam * np.diag([1.0] * len(names) + [0.0])
        beta = np.linalg.solve(a, x.T @ y)
        pred = x @ beta
        rho = float(spearmanr(pred, err[use]).statistic)
        return cls(names, tuple(float(b) for b in beta[:-1]), float(beta[-1]), float(window),
                   rho, int(use.sum()))

    def predict(self, image: np.ndarray, spread: np.ndarray | None = None,
                distance: np.ndarray | None = None) -> np.ndarray:
        """The predicted local RMS error of ``image`` (label units), float32, the image's
        shape. A feature the model uses but not given here (e.g. no pattern distance) is taken
        at its typical value (0 after centring)."""
        feats = error_features(image, spread, distance, window=self.window)
        log_e = np.full(np.shape(image), self.intercept, np.float64)
        for name, c in zip(self.features, self.coef):
            if name in feats:
                log_e += c * np.nan_to_num(feats[name])
        return (np.exp(log_e) * _level(image, spread)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"], d["coef"] = list(self.features), list(self.coef)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ErrorModel | None:
        """``None`` for a missing or malformed entry (an older checkpoint)."""
        if not d:
            return None
        try:
            feats = tuple(str(f) for f in d["features"])
            coef = tuple(float(c) for c in d["coef"])
            if len(feats) != len(coef) or not set(feats) <= set(FEATURES):
                return None
            m = cls(feats, coef, float(d["intercept"]), float(d.get("window", 1.0)),
                    float(d.get("rho_validation", math.nan)), int(d.get("n_fit", 0)))
        except (KeyError, TypeError, ValueError):
            return None
        return m if all(math.isfinite(c) for c in (*m.coef, m.intercept)) else None
