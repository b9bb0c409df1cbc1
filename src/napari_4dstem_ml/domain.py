"""Is this data set like the data the model was trained on? The domain check.

A model's checkpoint states its *training domain*: for every quantity that changes what the
patterns look like, the range it saw in training. Before a prediction, the input's
:class:`DataSignature` is compared with it; every quantity outside its range (with a
tolerance) becomes a :class:`DomainIssue` that names the quantity, the input's value, the
training range and how far outside it lies. ``stemml predict`` prints them, napari shows a
notification, and the output's metadata records them.

Quantities (per data set): beam energy (keV), convergence semi-angle α (mrad), detector
pixel (mrad and fractions of α), how far the detector reaches (in α), scan step (Å, and in
units of the probe's diffraction limit λ/α, which is what a cluster of patterns samples), dose
(mean counts per pattern) and the dark-field fraction of the mean pattern (the share of the
detected intensity beyond 1.2 α: it grows with thickness and atomic number, so it flags a
much thicker or heavier sample than any in training).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .dataset import Dataset4D, electron_wavelength_A

__all__ = ["DataSignature", "DomainIssue", "TrainingDomain", "QUANTITIES"]

#: quantity -> (what it is, unit, tolerance kind, tolerance): "ratio" allows values within
#: [low / t, high · t]; "above" only flags values above high · t (more is worse only);
#: "below" only flags values below low / t.
QUANTITIES: dict[str, tuple[str, str, str, float]] = {
    "energy_kev": ("beam energy", "keV", "ratio", 1.15),
    "alpha_mrad": ("convergence semi-angle α", "mrad", "ratio", 1.15),
    "detector_pixel_alpha": ("detector pixel", "α", "above", 1.3),
    "reach_alpha": ("detector reach", "α", "below", 1.05),
    "scan_step_A": ("scan step", "Å", "ratio", 1.2),
    "scan_step_probe": ("scan step in units of the probe size λ/α", "λ/α", "ratio", 1.3),
    # every model divides a pattern by its dose: more counts only mean less noise
    "dose": ("dose (mean counts per pattern)", "e⁻", "below", 2.0),
    "dark_field_fraction": ("dark-field fraction of the mean pattern (thickness, Z)", "", "ratio", 1.5),
}


def probe_steps(step_A: tuple[float, float] | None, alpha_mrad: float | None,
                energy_ev: float | None) -> float | None:
    """The scan step (geometric mean of its two axes, Å) in units of the probe's diffraction
    limit λ/α; ``None`` where a quantity is unknown."""
    if step_A is None or not alpha_mrad or not energy_ev:
        return None
    return math.sqrt(step_A[0] * step_A[1]) / (electron_wavelength_A(energy_ev) / (alpha_mrad * 1e-3))


@dataclass(frozen=True)
class DataSignature:
    """What a data set looks like to a model; ``None`` where the data set does not say."""

    energy_kev: float | None = None
    alpha_mrad: float | None = None
    detector_pixel_alpha: float | None = None
    reach_alpha: float | None = None
    scan_step_A: float | None = None
    scan_step_probe: float | None = None
    dose: float | None = None
    dark_field_fraction: float | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset4D, *, max_patterns: int = 1024,
                     sample: Any = None) -> DataSignature:
        """Measure ``dataset`` on a subsample of its patterns (never a full pass): ``sample``,
        the job's patterns already read (a ``PatternSample`` or ``(n, ky, kx)`` array), else
        about ``max_patterns`` read here."""
        from .detectors import bf_disk, max_radius_px
        from .preprocess import sample_patterns

        cal = dataset.calibration
        sample = (sample_patterns(dataset, max_patterns) if sample is None
                  else np.asarray(getattr(sample, "patterns", sample)))
        mean = sample.mean(0)
        dose = float(sample.sum(axis=(1, 2), dtype=np.float64).mean())
        centre, r_bf = bf_disk(mean, cal)
        ky, kx = dataset.detector_shape
        yy, xx = np.mgrid[:ky, :kx]
        r = np.hypot(yy - centre[0], xx - centre[1])
        total = float(mean.sum())
        df = float(mean[r > 1.2 * r_bf].sum() / total) if total > 0 else None
        px = cal.detector_pixel_mrad
        alpha = cal.convergence_mrad
        step = cal.scan_step_A
        reach = max_radius_px((ky, kx), centre) / r_bf if r_bf > 0 else None
        probe = probe_steps(step, alpha, cal.energy_ev)
        return cls(
            energy_kev=None if cal.energy_ev is None else cal.energy_ev / 1e3,
            alpha_mrad=alpha,
            detector_pixel_alpha=(math.sqrt(px[0] * px[1]) / alpha) if (px and alpha) else 1.0 / r_bf,
            reach_alpha=reach,
            scan_step_A=None if step is None else math.sqrt(step[0] * step[1]),
            scan_step_probe=probe,
            dose=dose,
            dark_field_fraction=df,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSignature:
        return cls(**{k: (None if d.get(k) is None else float(d[k])) for k in QUANTITIES})


@dataclass(frozen=True)
class DomainIssue:
    """One quantity of the input outside the training range."""

    quantity: str
    value: float
    low: float
    high: float

    @property
    def factor(self) -> float:
        """How far outside: value / high (above) or low / value (below), >= 1."""
        if self.value > self.high:
            return self.value / self.high if self.high > 0 else math.inf
        return self.low / self.value if self.value > 0 else math.inf

    def message(self) -> str:
        what, unit, _, _ = QUANTITIES[self.quantity]
        u = f" {unit}" if unit else ""
        rng = (f"{_fmt(self.low)}{u}" if math.isclose(self.low, self.high, rel_tol=1e-6)
               else f"{_fmt(self.low)}–{_fmt(self.high)}{u}")
        side = "above" if self.value > self.high else "below"
        if not math.isfinite(self.factor):  # a zero (or negative) value or range: no ratio
            return f"{what} {_fmt(self.value)}{u} is outside the training range ({rng})"
        return (f"{what} {_fmt(self.value)}{u} is {self.factor:.2g}× {side} the training range "
                f"({rng})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message()}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"


@dataclass(frozen=True)
class TrainingDomain:
    """Per-quantity [low, high] over the training data sets (missing quantities unchecked)."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_datasets: int = 0

    @classmethod
    def from_signatures(cls, signatures: list[DataSignature],
                        dose_range: tuple[float, float] | None = None) -> TrainingDomain:
        """The ranges covered by ``signatures``; ``dose_range`` (augmentation) widens the dose."""
        ranges: dict[str, tuple[float, float]] = {}
        for q in QUANTITIES:
            vals = [getattr(s, q) for s in signatures if getattr(s, q) is not None]
            if vals:
                ranges[q] = (float(min(vals)), float(max(vals)))
        if dose_range is not None and "dose" in ranges:
            lo, hi = ranges["dose"]
            ranges["dose"] = (min(lo, float(dose_range[0])), max(hi, float(dose_range[1])))
        return cls(ranges, len(signatures))

    def union(self, other: TrainingDomain) -> TrainingDomain:
        keys = set(self.ranges) | set(other.ranges)
        out = {}
        for k in keys:
            a, b = self.ranges.get(k), other.ranges.get(k)
            out[k] = a if b is None else b if a is None else (min(a[0], b[0]), max(a[1], b[1]))
        return TrainingDomain(out, self.n_datasets + other.n_datasets)

    def with_probe_steps(self, calibrations: list[dict[str, Any]]) -> TrainingDomain:
        """This domain with the scan step in units of λ/α filled in from the training data
        sets' ``calibrations`` (``Calibration.to_dict()``) where it lacks it: checkpoints
        written before the quantity existed state every calibration it derives from."""
        from .dataset import Calibration

        if "scan_step_probe" in self.ranges:
            return self
        vals = []
        for d in calibrations:
            try:
                cal = Calibration.from_dict(d)
            except (TypeError, ValueError, KeyError):
                continue
            v = probe_steps(cal.scan_step_A, cal.convergence_mrad, cal.energy_ev)
            if v is not None:
                vals.append(v)
        if not vals:
            return self
        return TrainingDomain({**self.ranges, "scan_step_probe": (min(vals), max(vals))},
                              self.n_datasets)

    def check(self, signature: DataSignature, *, model_reach_alpha: float | None = None) -> list[DomainIssue]:
        """The quantities of ``signature`` outside this domain. ``model_reach_alpha``: the
        largest angle (in α) the model's detector grid reads; a detector that does not reach
        it leaves part of the model's input empty."""
        issues = []
        for q, (lo, hi) in self.ranges.items():
            v = getattr(signature, q)
            if v is None:
                continue
            _, _, kind, t = QUANTITIES[q]
            if q == "reach_alpha":
                lo = min(lo, model_reach_alpha) if model_reach_alpha else lo
            low_ok = kind == "above" or v >= lo / t
            high_ok = kind == "below" or v <= hi * t
            if not (low_ok and high_ok):
                issues.append(DomainIssue(q, float(v), float(lo), float(hi)))
        if model_reach_alpha and signature.reach_alpha is not None and \
                signature.reach_alpha < model_reach_alpha / QUANTITIES["reach_alpha"][3] and \
                not any(i.quantity == "reach_alpha" for i in issues):
            issues.append(DomainIssue("reach_alpha", float(signature.reach_alpha),
                                      float(model_reach_alpha), float(model_reach_alpha)))
        return issues

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "n_datasets": self.n_datasets}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainingDomain:
        if not d:
            return cls()
        ranges = {}
        for k, v in (d.get("ranges") or {}).items():
            if k in QUANTITIES and isinstance(v, (list, tuple)) and len(v) == 2:
                lo, hi = float(v[0]), float(v[1])
                if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
                    ranges[k] = (lo, hi)
        return cls(ranges, int(d.get("n_datasets", 0) or 0))
