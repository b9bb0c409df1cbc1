"""simulate_series: ranges expanded deterministically, the estimate before any work, a tiny
end-to-end run (the CI building block of ``stemml simulate-train``), resume and cancel;
reading items back and redrawing the noise; the suites keep the test materials out of the
training library."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from napari_4dstem_ml.simulate.detector import DetectorModel
from napari_4dstem_ml.simulate.scene import SimulationConfig

HAS_ABTEM = importlib.util.find_spec("abtem") is not None and importlib.util.find_spec("ase") is not None
pytestmark = pytest.mark.skipif(
    not HAS_ABTEM, reason="abTEM/ASE not installed (optional extra: pip install 'napari-4dstem-ml[sim]')")

BASE = SimulationConfig(
    scan_shape=(5, 5), scan_step_A=0.5, adf_inner_mrad=40.0, adf_outer_mrad=55.0,
    probe_tail_fraction=0.05, source_fwhm_A=0.3,
    detector=DetectorModel(shape=(20, 20), pixel_mrad=3.0, centre_offset_px=(0.3, 0.2),
                           descan_y_px=(0.0, 0.0), descan_x_px=(0.0, 0.0)))


def test_expand_series_is_a_deterministic_latin_hypercube():
    from napari_4dstem_ml.simulate.series import SeriesRanges, expand_series

    r = SeriesRanges(thickness_A=(20.0, 220.0), defocus_A=(-100.0, 100.0),
                     dose_e_per_pattern=(1e4, 1e6), tilt_mrad=2.0, energy_ev=(200e3, 300e3),
                     convergence_mrad=(18.0, 25.0), scan_step_A=(0.2, 0.4))
    a = expand_series("SrTiO3", r, 5, base=BASE, seed=1)
    assert a == expand_series("SrTiO3", r, 5, base=BASE, seed=1)
    assert a != expand_series("SrTiO3", r, 5, base=BASE, seed=2)
    t = np.array([c.structure.thickness_A for c in a])
    assert sorted(np.floor((t - 20.0) / 40.0).astype(int)) == [0, 1, 2, 3, 4]  # one per stratum
    d = np.log10([c.dose_e_per_pattern for c in a])
    assert sorted(np.floor((d - 4) / 0.4).astype(int)) == [0, 1, 2, 3, 4]  # log-uniform strata
    assert all(np.hypot(*c.tilt_mrad) <= 2.0 + 1e-9 for c in a)
    assert [c.energy_ev for c in a] == [200e3, 300e3, 200e3, 300e3, 200e3]
    assert all(c.frozen_phonons == 2 and c.detector == BASE.detector for c in a)
    assert len({c.name for c in a}) == 5
    with pytest.raises(ValueError, match="monolayer"):
        expand_series("MoS2", r, 2)
    with pytest.raises(ValueError, match="min <= max"):
        SeriesRanges(defocus_A=(10.0, -10.0))


def test_simulate_series_tiny_end_to_end(tmp_path):
    from napari_4dstem_ml.simulate.items import read_item, redraw_counts
    from napari_4dstem_ml.simulate.series import (
        SeriesDoneEvent,
        SeriesEvent,
        SeriesPlanEvent,
        SeriesRanges,
        simulate_series,
    )

    r = SeriesRanges(defocus_A=(-30.0, 30.0), dose_e_per_pattern=(1e4, 1e5), tilt_mrad=1.0,
                     energy_ev=(60e3, 80e3), convergence_mrad=(20.0, 26.0))
    events = list(simulate_series("graphene", r, 2, tmp_path, base=BASE, seed=3))
    plan = events[0]
    assert isinstance(plan, SeriesPlanEvent) and plan.total_estimate_s > 0
    assert len(plan.configs) == 2 and plan.finished == (False, False)
    assert isinstance(events[-1], SeriesDoneEvent) and not events[-1].cancelled
    mid = [e for e in events if isinstance(e, SeriesEvent)]
    assert {e.index for e in mid} == {0, 1}
    assert [e.event.stage for e in mid if e.index == 0][0] == "plan"
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in mid)
    for cfg, path in zip(plan.configs, plan.paths):
        item = read_item(path, counts=True)
        assert item.config == cfg and item.energy_ev == cfg.energy_ev
        assert item.noise_free.shape == (5, 5, 20, 20) and item.counts.shape == (5, 5, 20, 20)
        np.testing.assert_allclose(item.noise_free.sum((-1, -2)), item.detected_fraction, rtol=1e-5)
        assert item.lowpass.shape == (5, 5) and item.lowpass.max() > 0
        assert item.phase.max() == pytest.approx(item.sigma_rad_per_VA * item.ground_truth.max())
        # redrawn noise at another dose: mean dose x fraction
        c = redraw_counts(item.noise_free, 1e6, rng=0)
        assert c.sum() / (1e6 * item.noise_free.sum()) == pytest.approx(1.0, abs=1e-3)
    # a rerun finds everything finished and simulates nothing
    again = list(simulate_series("graphene", r, 2, tmp_path, base=BASE, seed=3))
    assert again[0].finished == (True, True) and again[0].total_estimate_s == 0
    assert all(e.event.skipped for e in again if isinstance(e, SeriesEvent))


def test_simulate_series_cancels_between_chunks(tmp_path):
    import threading

    from napari_4dstem_ml.simulate.series import SeriesDoneEvent, SeriesRanges, simulate_series

    stop = threading.Event()
    stop.set()
    events = list(simulate_series("graphene", SeriesRanges(), 2, tmp_path, base=BASE, cancel=stop))
    assert isinstance(events[-1], SeriesDoneEvent) and events[-1].cancelled
    assert not list(tmp_path.glob("*.h5"))


def test_library_never_holds_the_test_materials():
    from napari_4dstem_ml.simulate.suites import HELD_OUT_MATERIALS, library, transfer_suite

    lib, suite = library(), transfer_suite()
    assert {c.structure.name for c in suite} <= HELD_OUT_MATERIALS
    assert not {c.structure.name for c in lib} & HELD_OUT_MATERIALS
    assert len({c.name for c in lib + suite}) == len(lib) + len(suite)
    assert {c.energy_ev for c in lib} >= {60e3, 80e3, 200e3, 300e3}
    assert all(c.store_noise_free for c in lib)
    assert not {c.energy_ev for c in suite if c.structure.name == "Si"} & {c.energy_ev for c in lib}
    elements = set()
    for c in lib:
        elements |= {d.new_element for d in c.structure.defects if d.new_element}
    assert "W" not in elements  # tungsten (WS2) is only in the transfer suite



def test_the_development_set_is_neither_library_nor_suite():
    """Methods are chosen on our own development items: library materials (never a held-out
    one) under conditions — energy, α, thickness, defocus — no library item has."""
    from napari_4dstem_ml.simulate.suites import (
        HELD_OUT_MATERIALS,
        development_set,
        library,
        transfer_suite,
    )

    dev, lib = development_set(), library()
    assert not {c.name for c in dev} & {c.name for c in lib + transfer_suite()}
    assert not {c.structure.name for c in dev} & HELD_OUT_MATERIALS

    def conditions(c):
        return (c.structure.name, c.energy_ev, c.convergence_mrad, c.structure.thickness_A,
                c.defocus_A)

    assert not {conditions(c) for c in dev} & {conditions(c) for c in lib}

def test_cli_estimates_before_it_starts(tmp_path, capsys):
    from napari_4dstem_ml.simulate.__main__ import main

    assert main(["transfer-suite", "--estimate", "-o", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    for name in ("ws2_vacancy", "hbn_vacancy", "srtio3_5nm", "srtio3_20nm", "si110_120kev"):
        assert name in out
    assert "min on one core" in out and not (tmp_path / "t").exists()
