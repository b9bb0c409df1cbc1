"""Issue 17's additions to the held-out transfer suite: what each item is, that its material
is held out and its structure right (bond lengths from the literature), and its cost."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

needs_ase = pytest.mark.skipif(importlib.util.find_spec("ase") is None or
                               importlib.util.find_spec("abtem") is None,
                               reason="abTEM/ASE not installed")


def _distances(atoms) -> np.ndarray:
    """All interatomic distances (Å) with the minimum-image convention in x and y only."""
    pos = atoms.positions
    cell = np.diag(atoms.cell.array)
    d = pos[:, None, :] - pos[None, :, :]
    d[..., :2] -= np.round(d[..., :2] / cell[:2]) * cell[:2]
    r = np.linalg.norm(d, axis=-1)
    return r[np.triu_indices(len(pos), 1)]


def test_extended_items_are_held_out_and_as_the_issue_asks():
    from napari_4dstem_ml.simulate.suites import (
        HELD_OUT_MATERIALS,
        library,
        transfer_suite,
        transfer_suite_extended,
    )

    ext = {c.name: c for c in transfer_suite_extended()}
    names = {c.name for c in transfer_suite()}
    assert set(ext) <= names and len(ext) == 5
    lib_materials = {c.structure.name for c in library()}
    for c in ext.values():
        assert c.structure.name in HELD_OUT_MATERIALS
        assert c.structure.name not in lib_materials
        assert max(c.scan_shape) <= 64
    pt = ext["ptse2_1t_vacSe_60kev"]
    assert pt.energy_ev == 60e3 and 25 <= pt.convergence_mrad <= 30
    assert pt.structure.defects[0].element == "Se"
    bp = ext["bp_3layer_vacP_80kev"]
    assert bp.energy_ev == 80e3 and bp.convergence_mrad == 25 and bp.structure.defects
    thin, thick = ext["ceo2_5nm_300kev"], ext["ceo2_25nm_300kev"]
    assert thick.structure.thickness_A - thin.structure.thickness_A >= 200
    assert thin.energy_ev == thick.energy_ev == 300e3
    j = ext["wse2_vacSe_aberrated_jitter"]
    assert (j.defocus_A, j.astigmatism_A, j.source_fwhm_A, j.scan_jitter_A) == (20.0, 10.0, 0.4, 0.1)


@needs_ase
def test_new_structures_have_literature_bond_lengths():
    from napari_4dstem_ml.simulate.structures import StructureSpec, build_unit_cell

    pt = build_unit_cell(StructureSpec("PtSe2"))
    assert pt.is_2d and sorted(pt.cell.get_chemical_symbols()) == ["Pt"] * 2 + ["Se"] * 4
    # 1T-PtSe2: Pt-Se = sqrt((a/sqrt3)^2 + (t/2)^2) = 2.50 A (a = 3.73, Se-Se height 2.53)
    assert _distances(pt.cell).min() == pytest.approx(2.497, abs=0.01)
    bp = build_unit_cell(StructureSpec("BP3L"))
    assert bp.is_2d and len(bp.cell) == 12
    # black phosphorus: P-P bonds 2.22 and 2.24 A (Brown & Rundqvist 1965)
    d = np.sort(_distances(bp.cell))
    assert d[0] == pytest.approx(2.22, abs=0.02)
    z = np.sort(bp.cell.positions[:, 2])
    layers = [z[:4].mean(), z[4:8].mean(), z[8:].mean()]
    np.testing.assert_allclose(np.diff(layers), 10.478 / 2, atol=0.01)  # AB stacking, b/2
    ce = build_unit_cell(StructureSpec("CeO2", thickness_A=250.0))
    assert ce.repeats_z == 46
    assert sorted(set(ce.cell.get_chemical_symbols())) == ["Ce", "O"]
    dd = _distances(ce.cell)
    assert dd.min() == pytest.approx(5.411 * np.sqrt(3) / 4, abs=0.01)  # Ce-O in fluorite


@needs_ase
def test_extended_items_are_cheap():
    from napari_4dstem_ml.simulate.scene import estimate_seconds
    from napari_4dstem_ml.simulate.suites import transfer_suite_extended

    est = {c.name: estimate_seconds(c) for c in transfer_suite_extended()}
    assert max(est.values()) < 600, est
