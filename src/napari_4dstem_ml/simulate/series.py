"""A series of simulations of one structure over ranges of thickness, defocus, dose, tilt,
energy, convergence and scan step: the simulation half of ``stemml simulate-train``.

:func:`expand_series` turns the ranges into ``n_items`` :class:`SimulationConfig` (a Latin
hypercube: every range is split into ``n_items`` strata, each used once, in an order drawn
from ``seed``; deterministic). :func:`simulate_series` yields a :class:`SeriesPlanEvent`
with the time estimate before any simulation starts, then one :class:`SeriesEvent` per
progress event of each item, skipping finished files, and ends with
:class:`SeriesDoneEvent`. Cancellable between chunks; a rerun resumes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .scene import SimulationConfig, make_plan
from .structures import StructureSpec, build_unit_cell

#: thicker than this (Å), a bulk crystal gets frozen phonons by default
THICK_A = 20.0


@dataclass(frozen=True)
class SeriesRanges:
    """Ranges to sample, each (min, max); a single value fixes the parameter.

    ``thickness_A``: None keeps the structure's own (2D layers: always one layer).
    ``dose_e_per_pattern`` is sampled log-uniformly, the others uniformly. ``tilt_mrad`` is
    the largest tilt magnitude (random direction). ``energy_ev``: the energies to cycle
    through. ``frozen_phonons``: None = 2 for bulk crystals thicker than 2 nm, else 0."""

    thickness_A: tuple[float, float] | None = None
    defocus_A: tuple[float, float] = (0.0, 0.0)
    dose_e_per_pattern: tuple[float, float] = (3e4, 3e4)
    tilt_mrad: float = 0.0
    energy_ev: tuple[float, ...] = (80e3,)
    convergence_mrad: tuple[float, float] = (21.4, 21.4)
    scan_step_A: tuple[float, float] = (0.25, 0.25)
    frozen_phonons: int | None = None

    def __post_init__(self) -> None:
        for name in ("thickness_A", "defocus_A", "dose_e_per_pattern", "convergence_mrad",
                     "scan_step_A"):
            v = getattr(self, name)
            if v is None:
                continue
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"SeriesRanges.{name} = {v!r}: expected (min, max) with min <= max")
        if self.thickness_A is not None and self.thickness_A[0] <= 0:
            raise ValueError("SeriesRanges.thickness_A: thicknesses must be > 0 (Å)")
        if self.dose_e_per_pattern[0] <= 0:
            raise ValueError("SeriesRanges.dose_e_per_pattern: doses must be > 0")
        if not self.energy_ev or min(self.energy_ev) <= 0:
            raise ValueError("SeriesRanges.energy_ev: at least one energy > 0 (eV)")
        if self.tilt_mrad < 0:
            raise ValueError("SeriesRanges.tilt_mrad: a magnitude >= 0 (mrad)")


@dataclass(frozen=True)
class SeriesPlanEvent:
    """Before any simulation: the configurations, their files, per-item and total estimates
    (s, one core) and which files are already finished."""

    configs: tuple[SimulationConfig, ...]
    paths: tuple[str, ...]
    estimates_s: tuple[float, ...]
    total_estimate_s: float
    finished: tuple[bool, ...]


@dataclass(frozen=True)
class SeriesEvent:
    """Item ``index`` (of ``n_items``) reports ``event`` (an engine ``SimulationEvent``);
    ``elapsed_s`` and ``eta_s`` are for the whole series (the ETA scales the remaining
    estimates by the measured/estimated ratio so far)."""

    index: int
    n_items: int
    event: Any
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class SeriesDoneEvent:
    """The series finished (``cancelled`` False) or was cancelled; ``paths`` are the files
    written or found finished."""

    paths: tuple[str, ...]
    elapsed_s: float
    cancelled: bool = False


def _strata(rng: np.random.Generator, n: int) -> np.ndarray:
    """Latin-hypercube fractions in [0, 1): one per stratum, strata in random order."""
    return (rng.permutation(n) + rng.random(n)) / n


def _spec(structure: str | Path | StructureSpec) -> StructureSpec:
    if isinstance(structure, StructureSpec):
        return structure
    return StructureSpec(str(structure))


def expand_series(structure: str | Path | StructureSpec, ranges: SeriesRanges, n_items: int,
                  base: SimulationConfig | None = None, seed: int = 0) -> list[SimulationConfig]:
    """``n_items`` configurations of ``structure`` (a material name, a structure file or a
    :class:`StructureSpec`; the spec's zone axis and defects are kept) sampled from
    ``ranges``; everything else (detector, scan shape, ADF, source size) from ``base``."""
    if n_items < 1:
        raise ValueError(f"n_items = {n_items}: at least one item")
    spec = _spec(structure)
    base = base or SimulationConfig()
    crystal = build_unit_cell(spec)  # validates the structure (file readable, zone axis)
    if crystal.is_2d and ranges.thickness_A is not None:
        raise ValueError(f"{spec.name} is a monolayer: leave the thickness range unset")
    rng = np.random.default_rng([seed, 4242])
    u = {k: _strata(rng, n_items) for k in ("t", "df", "dose", "alpha", "step", "tilt")}
    phi = rng.uniform(0, 2 * np.pi, n_items)
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(spec.name).stem if spec.is_file else spec.name)
    out = []
    def lin(r, key, i):
        return float(r[0] + (r[1] - r[0]) * u[key][i])

    for i in range(n_items):
        thick = None if ranges.thickness_A is None else lin(ranges.thickness_A, "t", i)
        d0, d1 = ranges.dose_e_per_pattern
        dose = float(math.exp(math.log(d0) + (math.log(d1) - math.log(d0)) * u["dose"][i]))
        tilt = ranges.tilt_mrad * math.sqrt(u["tilt"][i])
        s = replace(spec, thickness_A=thick if thick is not None else spec.thickness_A,
                    cells=None if thick is not None else spec.cells)
        t_eff = thick if thick is not None else crystal.thickness_A
        fp = ranges.frozen_phonons
        if fp is None:
            fp = 2 if (not crystal.is_2d and t_eff > THICK_A) else 0
        out.append(replace(
            base, structure=s, name=f"{stem}_{i:03d}",
            energy_ev=float(ranges.energy_ev[i % len(ranges.energy_ev)]),
            convergence_mrad=round(lin(ranges.convergence_mrad, "alpha", i), 3),
            defocus_A=round(lin(ranges.defocus_A, "df", i), 2),
            tilt_mrad=(round(tilt * math.sin(phi[i]), 3), round(tilt * math.cos(phi[i]), 3)),
            scan_step_A=round(lin(ranges.scan_step_A, "step", i), 4),
            dose_e_per_pattern=round(dose, 1), frozen_phonons=int(fp),
            seed=int(seed * 1000 + i), store_noise_free=True))
    return out


def simulate_series(structure: str | Path | StructureSpec, ranges: SeriesRanges, n_items: int,
                    out_dir: str | Path, base: SimulationConfig | None = None, seed: int = 0,
                    cancel: Any = None) -> Iterator[SeriesPlanEvent | SeriesEvent | SeriesDoneEvent]:
    """Simulate the series of :func:`expand_series` into ``out_dir/<name>.h5``."""
    from .engine import existing_config, simulate

    configs = expand_series(structure, ranges, n_items, base=base, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{c.name}.h5" for c in configs]
    est = [make_plan(c).estimate_s for c in configs]
    finished = []
    for c, p in zip(configs, paths):
        old = existing_config(p)
        finished.append(old is not None and old.to_json() == c.to_json())
    remaining = [e for e, f in zip(est, finished) if not f]
    yield SeriesPlanEvent(tuple(configs), tuple(str(p) for p in paths), tuple(est),
                          float(sum(remaining)), tuple(finished))
    t0 = time.time()
    spent_est = 0.0  # estimated seconds of the items finished in this run
    for i, (c, p) in enumerate(zip(configs, paths)):
        t_item = time.time()
        for ev in simulate(c, p, cancel=cancel):
            elapsed = time.time() - t0
            if ev.stage == "cancelled":
                yield SeriesEvent(i, n_items, ev, elapsed, None)
                yield SeriesDoneEvent(tuple(str(q) for q in paths[:i]), elapsed, cancelled=True)
                return
            rest = sum(e for e, f in zip(est[i + 1:], finished[i + 1:]) if not f)
            item_left = ev.eta_s if ev.eta_s is not None else est[i]
            ratio = (elapsed - (time.time() - t_item)) / spent_est if spent_est > 0 else 1.0
            yield SeriesEvent(i, n_items, ev, elapsed, item_left + rest * ratio)
        if not finished[i]:
            spent_est += est[i]
    yield SeriesDoneEvent(tuple(str(p) for p in paths), time.time() - t0)
