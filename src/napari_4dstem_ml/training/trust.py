"""What a trained model's validation region says about where to trust it.

Two measurements, at the end of training, on the validation rows (where the label is known and
no training step looked):

* **the detector reach it tolerates** (:func:`measure_reach_floor`). A detector that ends
  before the model's grid does leaves the outer part of the model's input empty. Whether that
  matters depends on the model (a network trained with reach-crop augmentation has seen such
  inputs; a linear model's outer masks may carry much of its output), so it is measured, not
  assumed: the validation rows are cut to detectors whose inscribed circle reaches R α (the
  preprocessor refitted to each, as it is on a user's data) and the model's Pearson r against
  the label is compared with its r on the full detector. The *reach floor* is the smallest R
  down to which no cut loses more than :data:`REACH_R_LOSS` in r; the domain check fires below
  it.
* **whether it beats the classical images** (:func:`versus_classical`): r of the model, of the
  ADF annulus the detector reaches and of iCoM against the label on the same positions. A lead
  counts when it is larger than the noise of the comparison (:data:`LEAD_Z` standard errors of
  Fisher's z over the positions scored; :attr:`VersusClassical.clearly_beats`). Patterns like
  those of a training set where the model was not clearly better than ADF or iCoM do not count
  as "like the training data" for the pattern check (:mod:`napari_4dstem_ml.pattern_domain`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..dataset import Dataset4D

__all__ = ["LEAD_Z", "REACH_R_LOSS", "REACH_STEPS_ALPHA", "ReachFloor", "ValidationSlab", "VersusClassical",
           "crop_to_reach", "measure_reach_floor", "versus_classical"]

#: r lost against the label (validation region) that still counts as "no loss"
REACH_R_LOSS = 0.01
#: the reaches tried (α), walked down from the largest the data and the model's grid allow
REACH_STEPS_ALPHA = (2.2, 2.0, 1.8, 1.6, 1.4, 1.2)
#: a model's lead in r over the better classical image counts when it exceeds this many
#: standard errors: (atanh r_model − atanh r_classical) / sqrt(2 / (n − 3)), n positions scored
#: (Fisher's z for two independent correlations: conservative for two images scored against
#: the same label, optimistic in that neighbouring positions are not independent)
LEAD_Z = 2.0


@dataclass(frozen=True)
class ReachFloor:
    """The measurement: ``reach_alpha[i]`` (α) gave ``r[i]`` against the label on the
    validation region (``r_full`` on the whole detector, reaching ``full_reach_alpha``);
    ``floor_alpha``: the smallest reach down to which every cut lost at most ``tolerance_r``."""

    full_reach_alpha: float
    r_full: float
    reach_alpha: tuple[float, ...]
    r: tuple[float, ...]
    floor_alpha: float
    tolerance_r: float = REACH_R_LOSS
    n_positions: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reach_alpha"], d["r"] = list(self.reach_alpha), list(self.r)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReachFloor:
        return cls(float(d["full_reach_alpha"]), float(d["r_full"]),
                   tuple(float(v) for v in d["reach_alpha"]), tuple(float(v) for v in d["r"]),
                   float(d["floor_alpha"]), float(d.get("tolerance_r", REACH_R_LOSS)),
                   int(d.get("n_positions", 0)))


def _bf(dataset: Dataset4D) -> tuple[tuple[float, float], float]:
    from ..detectors import bf_disk
    from ..preprocess import sample_patterns

    return bf_disk(sample_patterns(dataset, 512).mean(0), dataset.calibration)


def crop_to_reach(dataset: Dataset4D, reach_alpha: float, *, rows: tuple[int, int] | None = None,
                  cols: tuple[int, int] | None = None,
                  bf: tuple[tuple[float, float], float] | None = None) -> Dataset4D | None:
    """``dataset`` (scan rows ``rows``, columns ``cols`` only) with its detector cut to the square about the
    bright-field disk whose inscribed circle reaches ``reach_alpha`` α, in memory; ``None``
    where the detector does not reach that far. ``bf``: the disk's centre (px) and radius (px)
    when already known."""
    (cy, cx), r_bf = bf or _bf(dataset)
    half = float(reach_alpha) * r_bf
    y0, y1 = int(np.ceil(cy - half + 0.5)), int(np.floor(cy + half - 0.5)) + 1
    x0, x1 = int(np.ceil(cx - half + 0.5)), int(np.floor(cx + half - 0.5)) + 1
    ky, kx = dataset.detector_shape
    if y0 < 0 or x0 < 0 or y1 > ky or x1 > kx or y1 - y0 < 4 or x1 - x0 < 4:
        return None
    r0, r1 = rows or (0, dataset.scan_shape[0])
    c0, c1 = cols or (0, dataset.scan_shape[1])
    data = np.ascontiguousarray(np.asarray(dataset.data[r0:r1, c0:c1, y0:y1, x0:x1]))
    return Dataset4D(data, dataset.calibration, source=None, reader="array",
                     metadata={"cropped_from": str(dataset.source) if dataset.source else None})


def _r(image: np.ndarray, label: np.ndarray, region: np.ndarray) -> float:
    """:func:`~..metrics.pearson_r` over ``region`` (NaN where under 16 positions are finite)."""
    from ..metrics import pearson_r

    ok = region & np.isfinite(image) & np.isfinite(label)
    if ok.sum() < 16:
        return float("nan")
    return pearson_r(image[ok][None], label[ok][None])


@dataclass
class ValidationSlab:
    """The middle ``max_rows`` × ``max_cols`` positions of a validation region with the
    clusters' margin, read once into memory (``data``: scan rows ``rows``, columns ``cols`` of
    ``source``), their ``label`` and the ``region`` scored: positions whose whole cluster is
    real data (none reflected at the data set's edges, none cut at the slab's). The model's r on
    it and the classical images' are computed once and shared by both measurements."""

    source: Dataset4D
    data: Dataset4D
    label: np.ndarray
    region: np.ndarray
    rows: tuple[int, int]
    cols: tuple[int, int]
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def take(cls, model: Any, dataset: Dataset4D, label: np.ndarray, region: np.ndarray, *,
             max_rows: int = 32, max_cols: int = 64) -> ValidationSlab | None:
        """``None`` where the region is empty."""
        rows = np.nonzero(np.asarray(region).any(axis=1))[0]
        if rows.size == 0:
            return None
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        if r1 - r0 > max_rows:
            mid = (r0 + r1) // 2
            r0, r1 = mid - max_rows // 2, mid - max_rows // 2 + max_rows
        ny, nx = dataset.scan_shape
        c0, c1 = 0, nx
        if nx > max_cols:
            c0 = (nx - max_cols) // 2
            c1 = c0 + max_cols
        k = int(getattr(model, "cluster_size", 1))
        a0, a1 = max(0, r0 - k), min(ny, r1 + k)  # the clusters' margin
        e = k // 2 + 1
        top, bottom = max(r0, e), min(r1, ny - e)
        left, right = (c0 + k if c0 > 0 else e), (c1 - k if c1 < nx else nx - e)
        reg = np.zeros(region.shape, bool)
        if bottom > top and right > left:
            reg[top:bottom, left:right] = region[top:bottom, left:right]
        data = Dataset4D(np.ascontiguousarray(np.asarray(dataset.data[a0:a1, c0:c1])),
                         dataset.calibration, source=None, reader="array")
        return cls(dataset, data, np.asarray(label, np.float64)[a0:a1, c0:c1], reg[a0:a1, c0:c1],
                   (a0, a1), (c0, c1))

    def r_of(self, model: Any, pre: Any, ds: Dataset4D) -> float:
        """r of ``model`` on ``ds`` (this slab's positions, any detector) with ``pre`` already
        adapted to it."""
        from ..predict.events import finish
        from ..predict.local import model_pass

        return _r(np.asarray(finish(model_pass(model, pre, ds)).image), self.label, self.region)

    def reconstruction(self, model: Any, pre: Any) -> Any:
        """``model``'s :class:`~..predict.events.Reconstruction` of the slab (image and, for an
        ensemble, its spread; label units) as it is applied to the whole data set (``pre``
        fitted on all of it); computed once and shared by every measurement."""
        from ..predict.events import finish
        from ..predict.local import model_pass

        key = ("model", id(model), bool(getattr(model, "mirror_average", False)))
        if key not in self._cache:
            self._cache[key] = finish(model_pass(model, pre.adapt(self.source), self.data))
        return self._cache[key]

    def r_model(self, model: Any, pre: Any) -> float:
        """r of ``model`` as it is applied to the whole data set (``pre`` fitted on all of it)."""
        return _r(np.asarray(self.reconstruction(model, pre).image), self.label, self.region)

    def r_classical(self) -> tuple[float | None, float]:
        """(ADF's r or ``None`` without a dark-field ring, iCoM's r): the classical images of
        the whole data set (iCoM integrates the whole scan), cut to the slab."""
        if "classical" not in self._cache:
            from ..baselines import classical_baselines

            base = classical_baselines(self.source)
            cut = (slice(*self.rows), slice(*self.cols))
            r_adf = None if base.adf is None else _r(np.asarray(base.adf)[cut], self.label, self.region)
            self._cache["classical"] = (r_adf, _r(np.asarray(base.icom)[cut], self.label, self.region))
        return self._cache["classical"]


def _scored_slab(model: Any, pre: Any, dataset: Dataset4D, label: np.ndarray, region: np.ndarray,
                 slab: ValidationSlab | None) -> tuple[ValidationSlab, float] | None:
    """``slab`` (else taken here) and the model's r on it; ``None`` where the region is empty
    or r is not finite."""
    slab = slab or ValidationSlab.take(model, dataset, label, region)
    if slab is None:
        return None
    r = slab.r_model(model, pre)
    return (slab, r) if np.isfinite(r) else None


def measure_reach_floor(model: Any, pre: Any, dataset: Dataset4D, label: np.ndarray,
                        region: np.ndarray, *, model_reach_alpha: float,
                        slab: ValidationSlab | None = None) -> ReachFloor | None:
    """Measure the reach floor of ``model`` (with its fitted ``pre``) on ``dataset``'s
    validation ``region`` (bool ``(Ny, Nx)``, data grid) against ``label`` (``(Ny, Nx)``), on
    its :class:`ValidationSlab` (``slab``, else taken here; a few hundred MB at most for a 128²
    detector). Returns ``None`` where there are too few validation positions or r on the full
    detector is not finite."""
    from ..domain import DataSignature

    scored = _scored_slab(model, pre, dataset, label, region, slab)
    if scored is None:
        return None
    slab, r_full = scored
    bf = _bf(dataset)
    full_reach = DataSignature.from_dataset(slab.data).reach_alpha or float(model_reach_alpha)
    top = min(full_reach, float(model_reach_alpha))
    reaches, rs = [], []
    floor = top
    for reach in REACH_STEPS_ALPHA:
        if reach >= top / 1.02:
            continue
        ds = crop_to_reach(dataset, reach, rows=slab.rows, cols=slab.cols, bf=bf)
        if ds is None:
            break
        r = slab.r_of(model, pre.adapt(ds), ds)
        reaches.append(float(reach))
        rs.append(float(r))
        if not (np.isfinite(r) and r_full - r <= REACH_R_LOSS):
            break
        floor = float(reach)
    return ReachFloor(float(full_reach), float(r_full), tuple(reaches), tuple(rs), floor,
                      REACH_R_LOSS, int(slab.region.sum()))


def fisher_lead_z(r_a: float, r_b: float, n: int) -> float:
    """How far ``r_a`` leads ``r_b`` (both measured on ``n`` positions), in standard errors of
    Fisher's z: (atanh r_a − atanh r_b) / sqrt(2 / (n − 3)), see :data:`LEAD_Z`; NaN where
    either r is not finite or ``n`` ≤ 3."""
    if n <= 3 or not (np.isfinite(r_a) and np.isfinite(r_b)):
        return float("nan")
    lim = 1.0 - 1e-9
    dz = np.arctanh(np.clip(r_a, -lim, lim)) - np.arctanh(np.clip(r_b, -lim, lim))
    return float(dz / np.sqrt(2.0 / (n - 3)))


@dataclass(frozen=True)
class VersusClassical:
    """Pearson r against the label on the validation positions: the model's, the ADF
    annulus's (``None`` where the detector holds none) and iCoM's."""

    r_model: float
    r_adf: float | None
    r_icom: float | None
    n_positions: int = 0

    @property
    def r_classical(self) -> float:
        vals = [v for v in (self.r_adf, self.r_icom) if v is not None and np.isfinite(v)]
        return max(vals) if vals else float("nan")

    @property
    def beats(self) -> bool:
        """The model's r ≥ the better classical image's (True where there is none)."""
        rc = self.r_classical
        return bool(not np.isfinite(rc) or self.r_model >= rc)

    @property
    def lead_z(self) -> float:
        """The model's lead over the better classical image in standard errors of Fisher's z
        (see :data:`LEAD_Z`); NaN where there is no classical image or too few positions."""
        return fisher_lead_z(self.r_model, self.r_classical, self.n_positions)

    @property
    def clearly_beats(self) -> bool:
        """The model's lead is at least :data:`LEAD_Z` standard errors (where the positions'
        count is unknown, as in older checkpoints: :attr:`beats`)."""
        z = self.lead_z
        if np.isfinite(z):
            return bool(z >= LEAD_Z)
        return self.beats

    def to_dict(self) -> dict[str, Any]:
        z = self.lead_z
        return {**asdict(self), "beats": self.beats, "lead_z": z if np.isfinite(z) else None,
                "clearly_beats": self.clearly_beats}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersusClassical:
        def opt(v):
            return None if v is None else float(v)

        return cls(float(d["r_model"]), opt(d.get("r_adf")), opt(d.get("r_icom")),
                   int(d.get("n_positions", 0)))


def versus_classical(model: Any, pre: Any, dataset: Dataset4D, label: np.ndarray,
                     region: np.ndarray, *, slab: ValidationSlab | None = None
                     ) -> VersusClassical | None:
    """r of ``model`` (with its fitted ``pre``), of ADF and of iCoM against ``label`` on
    ``dataset``'s validation ``region``, on its :class:`ValidationSlab` (``slab``, else taken
    here; the same positions as :func:`measure_reach_floor`); ``None`` where the region is
    empty or the model's r is not finite."""
    scored = _scored_slab(model, pre, dataset, label, region, slab)
    if scored is None:
        return None
    slab, r_model = scored
    r_adf, r_icom = slab.r_classical()
    return VersusClassical(float(r_model), r_adf, r_icom, int(slab.region.sum()))


def choose_mirror_average(model: Any, scored: list[tuple[Any, ValidationSlab]]
                          ) -> dict[str, Any] | None:
    """Whether an ensemble's mirrored views (``mirror_average``) may stay on for this data: its
    r against the label on each ``(preprocessor, slab)`` with and without them, averaged over
    the data sets. They were chosen on our development set (r and the spread's ρ up on all of
    it), so they are switched off on ``model`` only where they *clearly* lower r — by
    :data:`LEAD_Z` standard errors of Fisher's z over the positions scored — as on a sample
    whose tilt or asymmetry the model learnt one way round (the library's BaTiO3 30 nm tilted
    by 1.5 mrad lost 0.08 in r with them, 0.918 → 0.839: 3.6 standard errors). Returns
    ``{r_members, r_mirrored, n_sets, n_positions, loss_z, kept}``; ``None`` where the model
    has no mirrored views or no finite r was measured."""
    if not getattr(model, "mirror_average", False):
        return None
    rows = []
    for pre, slab in scored:
        r_mirrored = slab.r_model(model, pre)
        with model.single_view():
            r_members = slab.r_model(model, pre)
        if np.isfinite(r_members) and np.isfinite(r_mirrored):
            rows.append((r_members, r_mirrored, int(np.asarray(slab.region).sum())))
    if not rows:
        return None
    r_members, r_mirrored = (float(np.mean([row[i] for row in rows])) for i in (0, 1))
    n = sum(row[2] for row in rows)
    loss_z = fisher_lead_z(r_members, r_mirrored, n)
    kept = not (loss_z >= LEAD_Z)
    if not kept:
        model.mirror_average = False
    return {"r_members": r_members, "r_mirrored": r_mirrored, "n_sets": len(rows),
            "n_positions": n, "loss_z": loss_z, "kept": kept}
