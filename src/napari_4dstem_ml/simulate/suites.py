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
HELD_OUT_MATERIALS = frozenset({"WS2", "hBN", "SrTiO3", "Si", "PrScO3", "PtSe2", "BP3L", "CeO2",
                                "WSe2"})


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
        *transfer_suite_extended(),
    ]


def transfer_suite_extended() -> list[SimulationConfig]:
    """Issue 17's additions to the transfer suite: a 1T monolayer at 30 mrad (PtSe2 + Se
    vacancy), a multilayer (black phosphorus trilayer + P vacancy), a thick crystal at two
    thicknesses (CeO2 [001], 5 and 25 nm, one frozen-phonon configuration) and a monolayer with probe and scan errors (WSe2:
    defocus, astigmatism, 0.4 A source, position jitter). None is in :func:`library`."""
    ceo2 = dict(energy_ev=300e3, convergence_mrad=21.4, scan_shape=(48, 48), scan_step_A=0.4,
                scan_offset_A=(0.61, 0.27), dose_e_per_pattern=5e4, frozen_phonons=1,
                adf_inner_mrad=60.0, adf_outer_mrad=120.0, store_noise_free=True)
    return [
        SimulationConfig(
            name="ptse2_1t_vacSe_60kev", seed=9201,
            structure=StructureSpec("PtSe2", defects=(Defect("vacancy", "Se", (0.6, 0.45)),)),
            energy_ev=60e3, convergence_mrad=30.0, scan_shape=(48, 48), scan_step_A=0.2,
            scan_offset_A=(0.31, 0.18), dose_e_per_pattern=1e5, adf_inner_mrad=75.0,
            adf_outer_mrad=115.0, detector=_detector(96, 1.1, 9201)),
        SimulationConfig(
            name="bp_3layer_vacP_80kev", seed=9202,
            structure=StructureSpec("BP3L", defects=(Defect("vacancy", "P", (0.5, 0.55),
                                                            layer="exit"),)),
            energy_ev=80e3, convergence_mrad=25.0, scan_shape=(48, 48), scan_step_A=0.2,
            scan_offset_A=(0.22, 0.47), dose_e_per_pattern=1e5, adf_inner_mrad=62.5,
            adf_outer_mrad=102.5, detector=_detector(96, 1.0, 9202)),
        SimulationConfig(name="ceo2_5nm_300kev", seed=9203,
                         structure=StructureSpec("CeO2", thickness_A=50.0),
                         detector=_detector(96, 1.0, 9203), **ceo2),
        SimulationConfig(name="ceo2_25nm_300kev", seed=9204,
                         structure=StructureSpec("CeO2", thickness_A=250.0),
                         detector=_detector(96, 1.0, 9204), **ceo2),
        SimulationConfig(
            name="wse2_vacSe_aberrated_jitter", seed=9205,
            structure=StructureSpec("WSe2", defects=(Defect("vacancy", "Se", (0.4, 0.6)),)),
            energy_ev=80e3, convergence_mrad=25.0, defocus_A=20.0, astigmatism_A=10.0,
            astigmatism_angle_deg=30.0, source_fwhm_A=0.4, scan_jitter_A=0.1,
            scan_shape=(48, 48), scan_step_A=0.2, scan_offset_A=(0.14, 0.52),
            dose_e_per_pattern=1e5, adf_inner_mrad=62.5, adf_outer_mrad=102.5,
            detector=_detector(96, 1.0, 9205)),
    ]


def development_set() -> list[SimulationConfig]:
    """Our own development items for choosing methods (the transfer suite is never used for
    that): library materials at conditions that are in neither :func:`library` nor
    :func:`transfer_suite` — MoTe2 at 80 keV and 30 mrad with a Te vacancy, graphene at 20 mrad
    with a C vacancy, MoSe2 at 60 keV with 4 nm defocus, GaAs [110] 6 nm at 120 keV, BaTiO3
    8 nm at 200 keV (about 5 min of one core)."""
    V = Defect  # noqa: N806
    return [
        _item("dev_mote2_80kev_a30_vacTe", "MoTe2", 80, 30.0, (96, 1.1), 0.22, 4e4, 301,
              defects=(V("vacancy", "Te", (0.5, 0.5)),)),
        _item("dev_graphene_80kev_a20_vac", "graphene", 80, 20.0, (128, 0.8), 0.25, 1e5, 302,
              defects=(V("vacancy", "C", (0.4, 0.6)),)),
        _item("dev_mose2_60kev_a24_df", "MoSe2", 60, 24.0, (128, 0.9), 0.24, 3e4, 303,
              defocus_nm=4.0, defects=(V("vacancy", "Se", (0.55, 0.45)),)),
        _item("dev_gaas110_120kev_6nm", "GaAs", 120, 22.0, (128, 0.8), 0.25, 5e4, 304,
              thickness_nm=6, zone=(1, 1, 0), phonons=2),
        _item("dev_batio3_200kev_8nm", "BaTiO3", 200, 20.0, (128, 0.8), 0.35, 5e4, 305,
              thickness_nm=8, phonons=2),
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


def _detector(shape: int, pixel_mrad: float, seed: int) -> DetectorModel:
    """A detector with a small, item-specific pattern-centre offset and descan (px)."""
    import numpy as np

    r = np.random.default_rng(seed).uniform(-1.5, 1.5, 6)
    return DetectorModel(shape=(shape, shape), pixel_mrad=pixel_mrad,
                         centre_offset_px=(round(r[0], 2), round(r[1], 2)),
                         descan_y_px=(round(r[2] / 2, 2), round(r[3] / 2, 2)),
                         descan_x_px=(round(r[4] / 2, 2), round(r[5] / 2, 2)))


def _item(name: str, material: str, energy_kev: float, alpha: float, det: tuple[int, float],
          step: float, dose: float, seed: int, thickness_nm: float | None = None,
          defocus_nm: float = 0.0, tilt: tuple[float, float] = (0.0, 0.0),
          defects: tuple[Defect, ...] = (), zone: tuple[int, int, int] | None = None,
          phonons: int = 0) -> SimulationConfig:
    adf_in = max(50.0, 2.5 * alpha)
    return SimulationConfig(
        name=name, seed=seed,
        structure=StructureSpec(material, zone_axis=zone, defects=defects,
                                thickness_A=None if thickness_nm is None else 10 * thickness_nm),
        energy_ev=energy_kev * 1e3, convergence_mrad=alpha, defocus_A=10 * defocus_nm,
        tilt_mrad=tilt, scan_shape=(48, 48), scan_step_A=step,
        scan_offset_A=(round(0.37 * (seed % 7) / 7 + 0.05, 3), round(0.29 * (seed % 5) / 5 + 0.1, 3)),
        detector=_detector(det[0], det[1], seed), dose_e_per_pattern=dose,
        frozen_phonons=phonons, adf_inner_mrad=adf_in, adf_outer_mrad=adf_in + 40.0,
        store_noise_free=True)


def library() -> list[SimulationConfig]:
    """The training library of the shipped base model: 2D layers with point defects (static
    lattice) and thick crystals (2 frozen-phonon configurations), over 60-300 keV, 15-30 mrad,
    0.5-1.2 mrad/px, 0.15-0.45 A steps, 2-30 nm, defocus 0 and +-5-20 nm, small tilts. None of
    :data:`HELD_OUT_MATERIALS`."""
    V = Defect  # noqa: N806
    items = [
        # --- 2D layers, point defects, static lattice
        _item("mos2_80kev_a25_vacS", "MoS2", 80, 25.0, (96, 1.0), 0.20, 5e4, 101,
              defects=(V("vacancy", "S", (0.3, 0.6)), V("vacancy", "Mo", (0.7, 0.3)))),
        _item("mos2_60kev_a18_tilt", "MoS2", 60, 18.0, (128, 0.8), 0.30, 2e4, 102,
              defocus_nm=-3.0, tilt=(2.0, -1.0),
              defects=(V("vacancy", "S", (0.6, 0.55), layer="column"),)),
        _item("mose2_80kev_a20_vacSe", "MoSe2", 80, 20.0, (128, 0.7), 0.25, 3e4, 103,
              defects=(V("vacancy", "Se", (0.45, 0.5)),
                       V("substitution", "Mo", (0.2, 0.2), new_element="Nb"))),
        _item("mote2_60kev_a28_subs", "MoTe2", 60, 28.0, (96, 1.2), 0.15, 1e5, 104,
              defects=(V("substitution", "Te", (0.5, 0.4), new_element="Se"),
                       V("vacancy", "Te", (0.8, 0.75)))),
        _item("graphene_60kev_a30_vacC", "graphene", 60, 30.0, (128, 1.0), 0.20, 2e5, 105,
              defects=(V("vacancy", "C", (0.5, 0.5)), V("substitution", "C", (0.2, 0.75),
                                                          new_element="N"))),
        _item("graphene_80kev_a22_Si", "graphene", 80, 22.0, (96, 0.9), 0.30, 1e5, 106,
              defocus_nm=2.0, defects=(V("substitution", "C", (0.6, 0.35), new_element="Si"),)),
        _item("mose2_200kev_a15", "MoSe2", 200, 15.0, (128, 0.5), 0.30, 5e4, 107,
              defects=(V("vacancy", "Se", (0.35, 0.65), layer="column"),)),
        # --- thick crystals, two frozen-phonon configurations
        _item("gaas110_200kev_10nm", "GaAs", 200, 20.0, (128, 0.8), 0.30, 5e4, 201,
              thickness_nm=10, tilt=(1.5, 0.0), zone=(1, 1, 0), phonons=2),
        _item("cu001_300kev_5nm", "Cu", 300, 25.0, (128, 0.6), 0.20, 5e4, 202,
              thickness_nm=5, defocus_nm=-5.0, phonons=2),
        _item("au001_300kev_2nm", "Au", 300, 30.0, (96, 1.2), 0.15, 1e5, 203,
              thickness_nm=2, phonons=2),
        _item("mgo001_200kev_20nm", "MgO", 200, 15.0, (128, 0.5), 0.35, 3e4, 204,
              thickness_nm=20, defocus_nm=10.0, phonons=2),
        _item("batio3_300kev_30nm", "BaTiO3", 300, 21.4, (128, 0.8), 0.40, 5e4, 205,
              thickness_nm=30, defocus_nm=15.0, tilt=(0.0, 1.5), phonons=2),
        _item("laalo3_200kev_10nm", "LaAlO3", 200, 18.0, (96, 1.0), 0.35, 3e4, 206,
              thickness_nm=10, defocus_nm=-5.0, phonons=2),
        _item("gaas110_300kev_20nm", "GaAs", 300, 25.0, (128, 0.7), 0.25, 1e5, 207,
              thickness_nm=20, defocus_nm=20.0, zone=(1, 1, 0), phonons=2),
        _item("cu001_200kev_20nm", "Cu", 200, 22.0, (128, 0.9), 0.25, 5e4, 208,
              thickness_nm=20, defocus_nm=-10.0, tilt=(-1.0, 1.0), phonons=2),
        _item("mgo001_80kev_5nm", "MgO", 80, 25.0, (96, 1.1), 0.45, 2e4, 209,
              thickness_nm=5, phonons=2),
        _item("au001_200kev_10nm", "Au", 200, 24.0, (128, 0.7), 0.20, 5e4, 210,
              thickness_nm=10, defocus_nm=5.0, tilt=(0.8, 0.8), phonons=2),
        _item("laalo3_300kev_20nm", "LaAlO3", 300, 19.0, (128, 0.6), 0.40, 1e5, 212,
              thickness_nm=20, defocus_nm=10.0, tilt=(-1.2, 0.0), phonons=2),
        _item("cu110_300kev_10nm", "Cu", 300, 27.0, (96, 1.0), 0.20, 3e4, 213,
              thickness_nm=10, zone=(1, 1, 0), phonons=2),
        _item("mos2_200kev_a22", "MoS2", 200, 22.0, (96, 0.6), 0.20, 1e5, 108,
              defects=(V("substitution", "S", (0.4, 0.4), new_element="Se"),
                       V("vacancy", "Mo", (0.65, 0.7)))),
    ]
    bad = [c.name for c in items if c.structure.name in HELD_OUT_MATERIALS]
    if bad:
        raise AssertionError(f"library items use held-out materials: {bad}")
    return items
