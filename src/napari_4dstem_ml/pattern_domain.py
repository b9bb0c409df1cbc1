"""Do the patterns look like the training patterns? The domain check on the patterns themselves.

:mod:`.domain` compares calibrations; a sample whose patterns look unlike the training data
(a thick crystal, another α than the calibration claims, aberrations, tilt) passes it and a
model then fails silently. Here every pattern gets a short feature vector in units that
transfer between data sets, the training patterns' features are summarised
(:class:`PatternDomain`, stored in the checkpoint's ``train_summary["pattern_domain"]``) and
a data set's patterns are scored against it (:class:`PatternVerdict`: a distance map over the
scan in units of the threshold).

Features (per pattern, one pass of the virtual-detector engine with a stack of masks drawn
about the bright-field disk of the mean pattern, :func:`~.detectors.bf_disk`):

* radial profile: the counts in rings of ``bin_alpha`` (0.125 α) from 0 to ``reach_alpha``
  (2.5 α, or less where the training detectors reach less), as ``sqrt((S_r + 3g/8) / T)``
  (``S_r`` ring counts, ``T`` the pattern's total counts, ``g`` counts per electron): ring
  *sums*, not means, so the feature is the physical share of the beam in the annulus whatever
  the detector pixel;
* anisotropy: in the rings 0.5–1, 1–1.5 and 1.5–2.5 α, the two halves of each m = 2 harmonic
  (``cos 2θ`` ≥ 0 vs < 0 and ``sin 2θ`` ≥ 0 vs < 0) as
  ``(sqrt(A + 3g/8) - sqrt(B + 3g/8)) / sqrt(2 T)``; the fit also counts the training
  patterns turned by 90° and mirrored (training augments them), so their size counts, not
  their direction.

With the square root every feature carries Poisson noise of variance ``g / (4 T)`` (Anscombe),
the same for all features. ``g`` is measured on each data set from two interleaved
(checkerboard) halves of three annuli: ``var(C1 - C2) / mean(C1 + C2)`` over the scan (the
smallest of the three; structure only adds to it).

Distance: ``mean`` and a PCA basis of ``n_components`` components (variances ``λ_k``) of the
training features, and the mean squared residual per remaining dimension ``s²``. For a
pattern with total ``T``: ``δ = max(0, g / (4 T) - noise_train)`` is the noise it carries
beyond the training patterns' mean noise, and
``d² = (Σ_k z_k² / (λ_k + δ) + |r|² / (s² + δ)) / D`` (``z`` the projections, ``r`` the
residual, ``D`` the number of features): about 1 for a training pattern at any dose.
Threshold: ``MARGIN`` (1.5) × the ``QUANTILE`` (0.99) of ``d`` over the held-out (validation)
patterns. The verdict's map is ``d / threshold``; it *fires* when more than
``FIRE_FRACTION`` (10 %) of the positions lie above 1: by construction ≤ 1 % of held-out
training patterns do, a local defect (a vacancy, an edge) covers a few percent and is shown
in the map without condemning the image, while a sample, α or aberration unlike training
moves most positions.

Measured (fit on MoS2 scan rows 0-31, threshold on rows 32-63; medians in threshold units):
MoS2 rows 32-63 0.49 (0 % above 1), the same at 1/4, 1/10, 1/30 of the dose 0.46-0.50 (0 %);
PrScO3 4.0 (100 %, fires); the MoS2 patterns widened 1.05× / 1.1× / 1.4× with the old α
claimed 3.1 / 5.6 / 14 (fire); small abTEM runs: MoS2 at the sample's settings 0.77 (1 %),
WS2 0.79 (2 %), 6 mrad tilt 0.77 (2 %: a monolayer barely changes), 10 nm defocus 1.1 (67 %,
fires), α = 28 mrad with its own calibration 0.87 (17 %, fires).

Several training data sets: one Gaussian each (:func:`fit_items_pattern_domains`, all read to
:data:`MIXTURE_REACH_ALPHA` so one pass serves them), and a pattern's distance is to the nearest
(``train_summary["pattern_domains"]``; the shipped base models carry their library's). A network
fine-tuned near its base (L2-SP) keeps the base's domains beside its own
(``pattern_domains_kept``): it keeps what the base learnt (within 0.02 in r on 18 of the 20
library items, ``benchmarks/kept_knowledge.py``), so a pattern like any of them is not "unlike
the training data".

Each domain may state whether the model beat ADF and iCoM on that data set's validation region
(``versus_classical``, :mod:`napari_4dstem_ml.training.trust`); one where it was not clearly
better (a lead under :data:`~.training.trust.LEAD_Z` standard errors: the base CNN's Cu [001]
20 nm, r 0.229 vs ADF 0.103, Au [001] 2 nm, 0.979 vs 0.970, and MoTe2 at 60 keV, 0.906 vs
0.904) is left out of the check
(patterns like it are not "like the data the model is good on"), and a model that was not
clearly better on any of its training sets is warned about on every image.

Limits: one Gaussian (mean + PCA) per training data set; the disk centre is the mean
pattern's (descan is not followed: it moves the features as it moves the model's input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PatternDomain", "PatternVerdict", "PatternGeometry", "pattern_features",
           "fit_pattern_domain", "fit_items_pattern_domain", "fit_items_pattern_domains", "check_patterns", "rings_for",
           "clearly_beats_classical", "summary_pattern_domains", "verdict_from_summary"]

#: ring width (α) of the radial profile
BIN_ALPHA = 0.125
#: largest angle (α) the profile reaches (less where the detector reaches less)
REACH_ALPHA = 2.5
#: rings (α) holding the m = 2 anisotropy features
ANISO_RINGS: tuple[tuple[float, float], ...] = ((0.5, 1.0), (1.0, 1.5), (1.5, 2.5))
#: annuli (α) split in checkerboard halves for the counts-per-electron estimate
GAIN_RINGS: tuple[tuple[float, float], ...] = ((0.0, 0.9), (1.1, 1.8), (1.8, 2.5))
N_COMPONENTS = 6
QUANTILE = 0.99
MARGIN = 1.5
#: the verdict fires above this fraction of positions beyond the threshold
FIRE_FRACTION = 0.10
#: a detector that ends before the training patterns' reach is checked on the rings it holds,
#: down to this reach (α)
MIN_PARTIAL_REACH = 1.5
#: several training data sets (the base library) get one domain each, all read to this reach
#: (α): 17 of the 20 library items' detectors reach it (their reaches: 1.27-2.78 α)
MIXTURE_REACH_ALPHA = 1.75
#: at most this many positions for the fit (a random subset beyond it)
MAX_FIT_POSITIONS = 50_000


@dataclass(frozen=True)
class PatternGeometry:
    """Where the features are read: BF-disk ``centre`` (cy, cx) and ``radius_px`` on a
    detector of ``shape`` (ky, kx), rings of ``bin_alpha`` up to ``reach_alpha``."""

    centre: tuple[float, float]
    radius_px: float
    shape: tuple[int, int]
    bin_alpha: float = BIN_ALPHA
    reach_alpha: float = REACH_ALPHA

    @property
    def detector_reach_alpha(self) -> float:
        from .detectors import max_radius_px

        return max_radius_px(self.shape, self.centre) / self.radius_px

    @classmethod
    def measure(cls, data: Any, calibration: Any = None, *, reach_alpha: float = REACH_ALPHA,
                bin_alpha: float = BIN_ALPHA, max_positions: int = 4096,
                mean: np.ndarray | None = None) -> PatternGeometry:
        """The BF disk of ``data`` (scan_y, scan_x, ky, kx) measured on ``mean`` (a mean
        pattern already at hand) or the mean of about ``max_positions`` patterns (radius from
        the calibration when it gives α and pixel)."""
        from .detectors import bf_disk, mean_pattern

        if mean is None:
            ny, nx = int(data.shape[0]), int(data.shape[1])
            step = max(1, int(math.ceil(math.sqrt(ny * nx / max_positions))))
            mean = mean_pattern(data, step=step)
        centre, radius = bf_disk(mean, calibration)
        return cls((float(centre[0]), float(centre[1])), float(radius),
                   (int(data.shape[2]), int(data.shape[3])), float(bin_alpha), float(reach_alpha))

    @property
    def n_rings(self) -> int:
        return int(round(self.reach_alpha / self.bin_alpha))

    def masks(self) -> tuple[np.ndarray, dict[str, slice]]:
        """The mask stack ``(n, ky, kx)`` float32 (0/1) and which slice holds what: ``rings``,
        ``aniso`` (per ring: cos+, cos-, sin+, sin-), ``gain`` (per annulus: even, odd),
        ``total`` (the whole detector)."""
        ky, kx = self.shape
        y = np.arange(ky, dtype=np.float64)[:, None] - self.centre[0]
        x = np.arange(kx, dtype=np.float64)[None, :] - self.centre[1]
        r = np.hypot(y, x) / self.radius_px
        th = np.arctan2(y, x)
        c2, s2 = np.cos(2 * th), np.sin(2 * th)
        out: list[np.ndarray] = []
        edges = np.arange(self.n_rings + 1) * self.bin_alpha
        for a, b in zip(edges[:-1], edges[1:]):
            out.append((r >= a) & (r < b))
        n_r = len(out)
        for a, b in ANISO_RINGS:
            ring = (r >= a) & (r < min(b, self.reach_alpha))
            out += [ring & (c2 >= 0), ring & (c2 < 0), ring & (s2 >= 0), ring & (s2 < 0)]
        n_a = len(out)
        checker = (np.arange(ky)[:, None] + np.arange(kx)[None, :]) % 2 == 0
        for a, b in GAIN_RINGS:
            ring = (r >= a) & (r < min(b, self.reach_alpha))
            out += [ring & checker, ring & ~checker]
        n_g = len(out)
        out.append(np.ones((ky, kx), bool))
        slices = {"rings": slice(0, n_r), "aniso": slice(n_r, n_a), "gain": slice(n_a, n_g),
                  "total": slice(n_g, n_g + 1)}
        return np.stack(out).astype(np.float32), slices


def _gain(sums: np.ndarray, ok: np.ndarray) -> float:
    """Counts per electron from the checkerboard halves ``sums`` (n_annuli*2, n positions)."""
    est = []
    for i in range(0, len(sums), 2):
        c1, c2 = sums[i][ok], sums[i + 1][ok]
        m = float(np.mean(c1 + c2))
        if m > 0 and len(c1) > 2:
            est.append(float(np.var(c1 - c2)) / m)
    est = [e for e in est if e > 0 and math.isfinite(e)]
    return min(est) if est else 1.0


@dataclass
class Features:
    """Per-position features ``x`` (n, D) float64, totals ``total`` (n,), the gain ``g``
    (counts per electron) and the scan shape; positions whose pattern sums to ≤ 0 or is
    not finite are NaN rows."""

    x: np.ndarray
    total: np.ndarray
    gain: float
    scan_shape: tuple[int, int]


def pattern_features(data: Any, geometry: PatternGeometry, *, step: int = 1,
                     gain: float | None = None) -> Features:
    """The features of every pattern of ``data`` (scan_y, scan_x, ky, kx) in one pass of
    :func:`~.detectors.virtual_images` (every ``step``-th row and column); see the module
    docstring. ``gain``: counts per electron (measured on these patterns when ``None``)."""
    from .detectors import virtual_images

    masks, sl = geometry.masks()
    v = virtual_images(data, masks, step=step).astype(np.float64)
    scan_shape = (int(v.shape[1]), int(v.shape[2]))
    v = v.reshape(len(masks), -1)
    total = v[sl["total"]][0]
    ok = np.isfinite(v).all(axis=0) & (total > 0)
    g = _gain(v[sl["gain"]], ok) if gain is None else float(gain)
    off = 0.375 * g
    tsafe = np.where(ok, total, 1.0)
    rings = np.sqrt(np.clip(v[sl["rings"]], 0, None) + off) / np.sqrt(tsafe)
    an = np.sqrt(np.clip(v[sl["aniso"]], 0, None) + off)
    aniso = (an[0::2] - an[1::2]) / np.sqrt(2 * tsafe)
    x = np.concatenate([rings, aniso]).T
    x[~ok] = np.nan
    return Features(x, np.where(ok, total, np.nan), g, scan_shape)


@dataclass(frozen=True)
class PatternDomain:
    """Statistics of the training patterns' features (see the module docstring): ``mean``
    (D,), ``components`` (K, D) orthonormal, ``variances`` (K,), ``residual_var`` (per
    residual dimension), ``noise_var`` (the training patterns' mean Poisson variance per
    feature, ``g / (4 T)``), ``threshold`` (on the distance), and how the features are read
    (``bin_alpha``, ``reach_alpha``)."""

    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]
    variances: tuple[float, ...]
    residual_var: float
    noise_var: float
    threshold: float
    bin_alpha: float = BIN_ALPHA
    reach_alpha: float = REACH_ALPHA
    n_fit: int = 0
    n_val: int = 0
    quantile: float = QUANTILE
    margin: float = MARGIN
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "components": [list(c) for c in self.components],
                "variances": list(self.variances), "residual_var": self.residual_var,
                "noise_var": self.noise_var, "threshold": self.threshold,
                "bin_alpha": self.bin_alpha, "reach_alpha": self.reach_alpha,
                "n_fit": self.n_fit, "n_val": self.n_val, "quantile": self.quantile,
                "margin": self.margin, "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatternDomain:
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            components=tuple(tuple(float(v) for v in c) for c in d["components"]),
            variances=tuple(float(v) for v in d["variances"]),
            residual_var=float(d["residual_var"]), noise_var=float(d["noise_var"]),
            threshold=float(d["threshold"]), bin_alpha=float(d.get("bin_alpha", BIN_ALPHA)),
            reach_alpha=float(d.get("reach_alpha", REACH_ALPHA)),
            n_fit=int(d.get("n_fit", 0)), n_val=int(d.get("n_val", 0)),
            quantile=float(d.get("quantile", QUANTILE)), margin=float(d.get("margin", MARGIN)),
            version=int(d.get("version", 1)))

    def raw_distance(self, feats: Features, valid: np.ndarray | None = None) -> np.ndarray:
        """``d`` (n,) for ``feats`` (NaN where a pattern has no features); not thresholded.
        ``valid`` (D,) bool: only these features were read (a detector that ends before the
        domain's reach): the distance is then taken in the *marginal* of the training model
        over them (its covariance ``Vᵀ Λ V + s² (I − Vᵀ V)`` restricted to the valid rows and
        columns), normalised by their number, so a training pattern still scores about 1."""
        if valid is not None and not np.all(valid):
            return self._marginal_distance(feats, np.asarray(valid, bool))
        mu = np.asarray(self.mean)
        v = np.asarray(self.components).reshape(-1, len(mu))
        lam = np.asarray(self.variances)
        xc = feats.x - mu
        z = xc @ v.T
        r2 = np.sum(xc * xc, axis=1) - np.sum(z * z, axis=1)
        noise = feats.gain / (4.0 * feats.total)
        delta = np.clip(noise - self.noise_var, 0.0, None)[:, None]
        d2 = np.sum(z * z / (lam[None, :] + delta), axis=1) + \
            np.clip(r2, 0, None) / (self.residual_var + delta[:, 0])
        return np.sqrt(d2 / len(mu))


    def _marginal_distance(self, feats: Features, valid: np.ndarray) -> np.ndarray:
        mu = np.asarray(self.mean)
        v = np.asarray(self.components).reshape(-1, len(mu))
        lam = np.asarray(self.variances)
        cov = v.T @ (lam[:, None] * v) + self.residual_var * (np.eye(len(mu)) - v.T @ v)
        sub = cov[np.ix_(valid, valid)]
        w, u = np.linalg.eigh(0.5 * (sub + sub.T))
        w = np.clip(w, self.noise_var * 1e-3 + 1e-15, None)
        z = (feats.x[:, valid] - mu[valid]) @ u
        noise = feats.gain / (4.0 * feats.total)
        delta = np.clip(noise - self.noise_var, 0.0, None)[:, None]
        return np.sqrt(np.sum(z * z / (w[None, :] + delta), axis=1) / int(valid.sum()))


def _symmetrised(x: np.ndarray) -> np.ndarray:
    """``x`` (n, D) and its copies with the patterns turned by 90° and mirrored: the m = 2
    features (the last ``2 * len(ANISO_RINGS)`` columns, cos and sin per ring) change sign."""
    n_a = 2 * len(ANISO_RINGS)
    out = [x]
    for sc, ss in ((-1, -1), (1, -1), (-1, 1)):
        y = x.copy()
        y[:, -n_a::2] *= sc
        y[:, -n_a + 1::2] *= ss
        out.append(y)
    return np.concatenate(out)


def fit_pattern_domain(train: list[Features], val: list[Features], *,
                       n_components: int = N_COMPONENTS, quantile: float = QUANTILE,
                       margin: float = MARGIN, bin_alpha: float = BIN_ALPHA,
                       reach_alpha: float = REACH_ALPHA, symmetrise: bool = True,
                       seed: int = 0) -> PatternDomain:
    """Fit on the ``train`` features (all positions pooled), threshold on ``val``.
    ``symmetrise``: the patterns turned by 90° and mirrored count as training patterns too
    (the anisotropy is then judged by its size, not its direction, as training augments
    rotations and mirrors)."""
    x = np.concatenate([f.x for f in train])
    noise = np.concatenate([f.gain / (4.0 * f.total) for f in train])
    keep = np.isfinite(x).all(axis=1)
    x, noise = x[keep], noise[keep]
    n_patterns = len(x)
    if len(x) < 3:
        raise ValueError(f"need at least 3 training patterns with features, got {len(x)}")
    if len(x) > MAX_FIT_POSITIONS:
        pick = np.random.default_rng(seed).choice(len(x), MAX_FIT_POSITIONS, replace=False)
        x, noise = x[pick], noise[pick]
    if symmetrise:
        x, noise = _symmetrised(x), np.tile(noise, 4)
    mu = x.mean(0)
    xc = x - mu
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    d = x.shape[1]
    k = int(max(1, min(n_components, d - 1, len(x) - 2)))
    lam = s[:k] ** 2 / (len(x) - 1)
    resid = float(np.sum(s[k:] ** 2) / (len(x) - 1) / max(1, d - k))
    noise_var = float(np.mean(noise))
    floor = max(noise_var, 1e-12)
    dom = PatternDomain(tuple(mu), tuple(tuple(c) for c in vt[:k]),
                        tuple(float(max(v, floor)) for v in lam), max(resid, floor), noise_var,
                        1.0, float(bin_alpha), float(reach_alpha), int(n_patterns), 0,
                        float(quantile), float(margin))
    dv = np.concatenate([dom.raw_distance(f) for f in val]) if val else np.zeros(0)
    dv = dv[np.isfinite(dv)]
    if len(dv) < 10:  # too few held-out patterns: calibrate on the training patterns
        dv = dom.raw_distance(Features(x, np.asarray(train[0].gain / (4 * noise)), train[0].gain,
                                       (len(x), 1)))
        dv = dv[np.isfinite(dv)]
    thr = float(margin * np.quantile(dv, quantile))
    from dataclasses import replace

    return replace(dom, threshold=thr, n_val=int(len(dv)))


@dataclass
class PatternVerdict:
    """A data set's patterns against the training patterns: ``distance`` (scan_y, scan_x)
    float32 in units of the threshold (NaN where a pattern has no counts), the ``fraction``
    of positions above 1, the ``median`` distance, ``fired`` (``fraction`` >
    :data:`FIRE_FRACTION`) and a one-line ``message``; ``step``: the map was measured on every
    ``step``-th row and column and repeated to the scan's shape."""

    distance: np.ndarray = field(repr=False)
    fraction: float
    median: float
    fired: bool
    message: str
    step: int = 1

    def add_detail(self, text: str) -> None:
        """Add ``text`` to the message's closing bracket (``; ``-separated), or open one:
        "… (median distance 0.5× the threshold; the nearest of 16 training sets)", not
        "… (…) (…)"."""
        if self.message.endswith(")"):
            self.message = f"{self.message[:-1]}; {text})"
        else:
            self.message = f"{self.message} ({text})"

    @classmethod
    def from_distance(cls, distance: np.ndarray, step: int = 1) -> PatternVerdict:
        dist = np.asarray(distance, np.float32)
        finite = dist[np.isfinite(dist)]
        if finite.size == 0:
            return cls(dist, float("nan"), float("nan"), False,
                       "pattern check: no pattern with counts to compare", step)
        frac = float(np.mean(finite > 1.0))
        med = float(np.median(finite))
        fired = frac > FIRE_FRACTION
        pct = f"{100 * frac:.0f} %" if frac >= 0.01 or frac == 0 else "< 1 %"
        if fired:
            msg = (f"patterns unlike the training data at {pct} of positions (median distance "
                   f"{med:.2g}× the threshold): do not trust this image")
        elif frac > 0.01:
            msg = (f"patterns unlike the training data at {pct} of positions (median distance "
                   f"{med:.2g}× the threshold): check the distance map there")
        else:
            msg = (f"patterns like the training data ({pct} of positions above the threshold, "
                   f"median distance {med:.2g}× the threshold)")
        return cls(dist, frac, med, fired, msg, step)

    def to_dict(self) -> dict[str, Any]:
        """For metadata: everything but the map."""
        return {"fraction_above": self.fraction, "median_distance": self.median,
                "fired": self.fired, "message": self.message, "step": self.step,
                "fire_fraction": FIRE_FRACTION}


def check_patterns(domain: PatternDomain | list[PatternDomain], data: Any, calibration: Any = None, *,
                   max_positions: int | None = None,
                   mean: np.ndarray | None = None) -> PatternVerdict:
    """Score every pattern of ``data`` (scan_y, scan_x, ky, kx) against ``domain`` (or several:
    a pattern's distance is then its distance to the nearest, each in units of its own
    threshold — a network fine-tuned near its base keeps the base library's patterns);
    ``max_positions``: read every ``step``-th row and column so that at most about this many
    are scored (the map is repeated back to the scan's shape); ``mean``: a mean pattern at hand
    (the job's sample) for the BF disk. A detector that ends before a domain's
    ``reach_alpha`` is checked on the rings it holds (the training model's marginal over
    them; the message says so); one that ends before :data:`MIN_PARTIAL_REACH` raises
    :class:`ValueError` (too little to read). Domains read the same way share one pass."""
    domains = [domain] if isinstance(domain, PatternDomain) else list(domain)
    if not domains:
        raise ValueError("no pattern domain to check against")
    ny, nx = int(data.shape[0]), int(data.shape[1])
    step = 1 if not max_positions else max(1, int(math.ceil(math.sqrt(ny * nx / max_positions))))
    groups: dict[tuple[float, float], list[PatternDomain]] = {}
    for dom in domains:
        groups.setdefault((dom.bin_alpha, dom.reach_alpha), []).append(dom)
    best, partial, errors = None, None, []
    for (bin_alpha, reach_alpha), doms in groups.items():
        geo = PatternGeometry.measure(data, calibration, reach_alpha=reach_alpha,
                                      bin_alpha=bin_alpha, mean=mean)
        reach = geo.detector_reach_alpha
        valid = None
        if reach < reach_alpha - 1e-6:
            if reach < MIN_PARTIAL_REACH:
                errors.append(f"the detector reaches {reach:.2f} α, the pattern check needs "
                              f"{MIN_PARTIAL_REACH:.2f} α")
                continue
            valid = _features_within(geo, reach)
            partial = (reach, reach_alpha)
        feats = pattern_features(data, geo, step=step)
        for dom in doms:
            d = dom.raw_distance(feats, valid).reshape(feats.scan_shape) / dom.threshold
            best = d if best is None else np.fmin(best, d)
    if best is None:
        raise ValueError(errors[0])
    if step > 1:
        best = np.repeat(np.repeat(best, step, 0), step, 1)[:ny, :nx]
    verdict = PatternVerdict.from_distance(best.astype(np.float32), step)
    if len(domains) > 1:
        verdict.add_detail(f"the nearest of {len(domains)} training sets")
    if partial is not None:
        verdict.add_detail(f"partial check: the detector reaches {partial[0]:.2f} α, the "
                           f"training patterns were read to {partial[1]:.2f} α")
    return verdict


def _features_within(geo: PatternGeometry, reach: float) -> np.ndarray:
    """Which features (rings, then the m = 2 pairs) lie wholly within ``reach`` (α)."""
    edges = np.arange(geo.n_rings + 1) * geo.bin_alpha
    rings = edges[1:] <= reach + 1e-9
    aniso = np.repeat([min(b, geo.reach_alpha) <= reach + 1e-9 for _, b in ANISO_RINGS], 2)
    return np.concatenate([rings, aniso])


def rings_for(geos: list[PatternGeometry]) -> tuple[float, float]:
    """(ring width, reach) in α for data sets of these geometries: :data:`BIN_ALPHA`, wider
    (in steps of 0.025 α) where the disk is so small that a ring would be under a pixel wide;
    :data:`REACH_ALPHA`, or the least the detectors reach (whole rings)."""
    width = max([BIN_ALPHA] + [1.0 / g.radius_px for g in geos])
    width = math.ceil(width / 0.025 - 1e-9) * 0.025
    reach = min([REACH_ALPHA] + [g.detector_reach_alpha for g in geos])
    reach = math.floor(reach / width + 1e-9) * width
    if reach < 1.5:
        raise ValueError(f"the detector reaches only {reach:.2f} α: too little for a pattern check")
    return width, reach


def fit_items_pattern_domain(items: list[Any], *, reach_alpha: float | None = None
                             ) -> dict[str, Any] | None:
    """``PatternDomain.to_dict()`` fitted on the training items' (anything with ``dataset``
    and ``split``, as ``TrainingItem``) train regions and thresholded on their validation
    regions, or ``None`` (with a warning) where it cannot be fitted: training never fails for
    it. ``reach_alpha``: read the rings to at most this reach (α)."""
    import warnings

    try:
        from .training.clusters import RegionSplit

        geos = [PatternGeometry.measure(it.dataset.data, it.dataset.calibration) for it in items]
        width, reach = rings_for(geos)
        if reach_alpha is not None:
            reach = min(reach, math.floor(reach_alpha / width + 1e-9) * width)
        train, val = [], []
        for it, geo in zip(items, geos):
            geo = PatternGeometry(geo.centre, geo.radius_px, geo.shape, width, reach)
            f = pattern_features(it.dataset.data, geo)
            tr, va = (it.split or RegionSplit()).region_masks(it.dataset.scan_shape)
            for region, out in ((tr, train), (va, val)):
                sel = np.asarray(region, bool).ravel()
                out.append(Features(f.x[sel], f.total[sel], f.gain, (int(sel.sum()), 1)))
        return fit_pattern_domain(train, val, bin_alpha=width, reach_alpha=reach).to_dict()
    except Exception as exc:  # noqa: BLE001 - a missing check must not lose a trained model
        warnings.warn(f"no pattern domain fitted: {exc}", stacklevel=2)
        return None


def fit_items_pattern_domains(items: list[Any], *, reach_alpha: float = MIXTURE_REACH_ALPHA
                              ) -> list[dict[str, Any]]:
    """One ``PatternDomain.to_dict()`` per item (a mixture: a pattern belongs to the training
    data when it is near any one item's patterns), every one read to ``reach_alpha`` (α) so
    that one pass of the data serves them all; items whose detector ends earlier, or that
    cannot be fitted, are left out (with a warning)."""
    import warnings

    out = []
    for it in items:
        try:
            geo = PatternGeometry.measure(it.dataset.data, it.dataset.calibration)
        except Exception as exc:  # noqa: BLE001 - reported, the others go on
            warnings.warn(f"no pattern domain for {getattr(it, 'name', None)}: {exc}", stacklevel=2)
            continue
        if geo.detector_reach_alpha < reach_alpha:
            warnings.warn(f"no pattern domain for {getattr(it, 'name', None)}: its detector "
                          f"reaches {geo.detector_reach_alpha:.2f} α, the mixture reads "
                          f"{reach_alpha:.2f} α", stacklevel=2)
            continue
        d = fit_items_pattern_domain([it], reach_alpha=reach_alpha)
        if d is not None:
            out.append({**d, "name": getattr(it, "name", None)})
    return out


def summary_pattern_domains(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The pattern domains a checkpoint's ``train_summary`` states: its own
    (``pattern_domain``, the data its weights were last fitted to; ``pattern_domains`` where
    that was several data sets, one per set) and those it keeps
    (``pattern_domains_kept``: a network fine-tuned near its base keeps the base library's)."""
    summary = summary or {}
    own = summary.get("pattern_domain")
    return ([own] if own else []) + [d for d in summary.get("pattern_domains") or [] if d] + \
        [d for d in summary.get("pattern_domains_kept") or [] if d]


def clearly_beats_classical(domain: dict[str, Any]) -> bool:
    """Whether the model was clearly better than ADF and iCoM on the validation region of the
    data set this domain describes (``domain["versus_classical"]``,
    :attr:`~.training.trust.VersusClassical.clearly_beats`: a lead of at least
    :data:`~.training.trust.LEAD_Z` standard errors); True where it was not measured."""
    from .training.trust import VersusClassical

    vc = domain.get("versus_classical") if isinstance(domain, dict) else None
    if not isinstance(vc, dict):
        return True
    try:
        return VersusClassical.from_dict(vc).clearly_beats
    except (KeyError, TypeError, ValueError):
        return vc.get("beats") is not False


def verdict_from_summary(summary: dict[str, Any] | None, data: Any, calibration: Any = None, *,
                         max_positions: int | None = None,
                         mean: np.ndarray | None = None) -> tuple[PatternVerdict | None, str]:
    """The verdict for ``data`` when the checkpoint's ``train_summary`` holds a pattern
    domain, and the line to show: ``(None, note)`` when it holds none or the check cannot
    be made."""
    dicts = summary_pattern_domains(summary)
    if not dicts:
        return None, "note: the checkpoint holds no pattern domain: patterns not checked"
    try:
        trusted = [d for d in dicts if clearly_beats_classical(d)]
        verdict = check_patterns([PatternDomain.from_dict(d) for d in (trusted or dicts)], data,
                                 calibration, max_positions=max_positions, mean=mean)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"note: patterns not checked against the training data: {exc}"
    left_out = len(dicts) - len(trusted)
    if not trusted:
        verdict.fired = True
        verdict.message = ("on its own training data's validation region this model was not "
                           "clearly better than ADF or iCoM: do not trust this image (" +
                           verdict.message + ")")
    elif left_out:
        verdict.add_detail(f"{left_out} training set{'s' if left_out > 1 else ''} where the "
                           "model was not clearly better than ADF or iCoM left out")
    prefix = "warning: " if verdict.fired else ""
    return verdict, prefix + verdict.message
