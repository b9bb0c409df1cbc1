"""The held-out transfer suite and the training library, as lists of :class:`SimulationConfig`.

The transfer suite's materials (WS2, hBN, SrTiO3, Si) and the repository's thick test sample
(PrScO3) never appear in the training library; :func:`library` checks it. Both are written
smallest first by :func:`write_suite` (resumable: finished files are skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .detector import DetectorModel
from .scene import SimulationConfig, estimate_seconds
from .structures import Defect, StructureSpec

#: materials the training library must never contain
HELD_OUT_MATERIALS = frozenset({"WS2", "hBN", "SrTiO3", "Si", "PrScO3"})


def transfer_suite() -> list[SimulationConfig]:
    """The held-out test materials (see sample_data/README.md, "Simulation library and
    transfer suite")."""
    sto = dict(energy_ev=300e3, convergence_mrad=21.4, defocus_A=0.0, scan_shape=(64, 64),
               scan_step_A=0.4, scan_offset_A=(0.52, 0.37), dose_e_per_pattern=5e4,
               frozen_phonons=3, adf_inner_mrad=60.0, adf_outer_mrad=120.0,
               detector=DetectorModel(shape=(128, 128), pixel_mrad=0.8, centre_offset_px=(0.9, 1.6),
                                      descan_y_px=(-0.5, 0.4), descan_x_px=(0.3, -0.7)),
               store_noise_free=True)
    return [
        SimulationConfig(
            name="ws2_vacancy", seed=9101,
            structure=StructureSpec("WS2", defects=(Defect("vacancy", "S", (0.75, 0.5), layer="exit"),)),
            energy_ev=80e3, convergence_mrad=24.0, scan_shape=(64, 64), scan_step_A=0.2,
            scan_offset_A=(0.23, 0.41), dose_e_per_pattern=1e5, adf_inner_mrad=60.0,
            adf_outer_mrad=200.0,
            detector=DetectorModel(shape=(96, 96), pixel_mrad=1.1, centre_offset_px=(-1.2, 0.8),
                                   descan_y_px=(0.6, 0.2), descan_x_px=(-0.3, 0.7))),
        SimulationConfig(
            name="hbn_vacancy", seed=9102,
            structure=StructureSpec("hBN", defects=(Defect("vacancy", "B", (0.7, 0.45)),)),
            energy_ev=60e3, convergence_mrad=25.0, scan_shape=(64, 64), scan_step_A=0.2,
            scan_offset_A=(0.37, 0.12), dose_e_per_pattern=1e5, adf_inner_mrad=60.0,
            adf_outer_mrad=200.0,
            detector=DetectorModel(shape=(128, 128), pixel_mrad=0.9, centre_offset_px=(1.1, 1.2),
                                   descan_y_px=(-0.4, 0.6), descan_x_px=(0.5, 0.3))),
        SimulationConfig(name="srtio3_5nm", seed=9103,
                         structure=StructureSpec("SrTiO3", thickness_A=50.0), **sto),
        SimulationConfig(
            name="si110_120kev", seed=9105,
            structure=StructureSpec("Si", zone_axis=(1, 1, 0), thickness_A=100.0),
            energy_ev=120e3, convergence_mrad=25.0, scan_shape=(64, 64), scan_step_A=0.3,
            scan_offset_A=(0.44, 0.29), dose_e_per_pattern=5e4, frozen_phonons=3,
            adf_inner_mrad=60.0, adf_outer_mrad=120.0,
            detector=DetectorModel(shape=(128, 128), pixel_mrad=0.9, centre_offset_px=(-0.7, -1.3),
                                   descan_y_px=(0.3, 0.5), descan_x_px=(0.6, -0.2))),
        SimulationConfig(name="srtio3_20nm", seed=9104,
                         structure=StructureSpec("SrTiO3", thickness_A=200.0), **sto),
    ]


@dataclass(frozen=True)
class SuiteEvent:
    """Progress of a whole suite: item ``index`` of ``n_items`` (``name``) and its event."""

    index: int
    n_items: int
    name: str
    event: Any


def write_suite(configs: list[SimulationConfig], out_dir: str | Path, cancel: Any = None,
                order_by_cost: bool = True) -> Iterator[SuiteEvent]:
    """Simulate ``configs`` into ``out_dir/<name>.h5`` one at a time (cheapest first when
    ``order_by_cost``), skipping finished files; yields :class:`SuiteEvent`."""
    from .engine import simulate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if order_by_cost:
        configs = sorted(configs, key=estimate_seconds)
    for i, cfg in enumerate(configs):
        if not cfg.name:
            raise ValueError("every suite item needs a name (its file name)")
        for ev in simulate(cfg, out_dir / f"{cfg.name}.h5", cancel=cancel):
            yield SuiteEvent(i, len(configs), cfg.name, ev)
            if ev.stage == "cancelled":
                return


def log_suite(events: Iterator[SuiteEvent], log: Callable[[str], None] = print) -> dict[str, float]:
    """Log suite events one line each; returns the seconds each item took this run."""
    took: dict[str, float] = {}
    t0 = time.time()
    for s in events:
        ev = s.event
        eta = "" if ev.eta_s is None else f" ETA {ev.eta_s:.0f} s"
        log(f"{time.strftime('%H:%M:%S')} [{s.index + 1}/{s.n_items} {s.name}] {ev.stage} "
            f"{ev.done}/{ev.total} {ev.elapsed_s:.0f} s{eta} {ev.message}")
        if ev.stage == "done":
            took[s.name] = ev.elapsed_s
    log(f"suite finished in {time.time() - t0:.0f} s")
    return took


def library() -> list[SimulationConfig]:
    """The training library (filled in below)."""
    raise NotImplementedError
