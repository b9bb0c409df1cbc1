"""Structures for the simulator: named materials, zone-axis orientation, a CIF written by
hand, point defects, and the projected-potential ground truth against analytic values."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

HAS_ABTEM = importlib.util.find_spec("abtem") is not None and importlib.util.find_spec("ase") is not None
pytestmark = pytest.mark.skipif(
    not HAS_ABTEM, reason="abTEM/ASE not installed (optional extra: pip install 'napari-4dstem-ml[sim]')")

# NaCl (rock salt, Fm-3m) written by hand following the CIF 1.1 syntax: the asymmetric unit
# and the space group; the reader expands the 8-atom conventional cell.
NACL_CIF = """\
data_NaCl
_chemical_formula_sum 'Cl Na'
_cell_length_a 5.640
_cell_length_b 5.640
_cell_length_c 5.640
_cell_angle_alpha 90.0
_cell_angle_beta 90.0
_cell_angle_gamma 90.0
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0.00000 0.00000 0.00000 1.0
Cl1 Cl 0.50000 0.50000 0.50000 1.0
"""


def _min_distance(atoms) -> float:
    d = atoms.get_all_distances(mic=True)
    return float(d[np.triu_indices(len(atoms), 1)].min())


def test_hand_written_cif_loads_and_orients_along_110(tmp_path):
    from napari_4dstem_ml.simulate.structures import StructureSpec, build_unit_cell

    cif = tmp_path / "nacl.cif"
    cif.write_text(NACL_CIF)
    a = 5.64
    c = build_unit_cell(StructureSpec(str(cif), zone_axis=(1, 1, 0), thickness_A=50.0))
    # fcc [110]: x = a/sqrt2 [1-10]/2, y = a [001], z = a/sqrt2 (centring included)
    np.testing.assert_allclose(sorted(c.lengths_A), sorted([a / np.sqrt(2), a, a / np.sqrt(2)]),
                               atol=1e-6)
    assert c.lengths_A[2] == pytest.approx(a / np.sqrt(2), abs=1e-6)
    assert sorted(c.cell.get_chemical_symbols()) == ["Cl", "Cl", "Na", "Na"]
    assert _min_distance(c.cell) == pytest.approx(a / 2, abs=1e-6)  # Na-Cl bond
    assert c.repeats_z == round(50.0 / (a / np.sqrt(2)))
    assert c.source_sha1 and not c.is_2d
    cell = np.asarray(c.cell.cell.array)
    assert np.allclose(cell, np.diag(np.diag(cell)))  # orthogonal, beam along z
    # [001]: the smallest orthogonal cell of the fcc lattice is a/sqrt2 x a/sqrt2 x a
    c1 = build_unit_cell(StructureSpec(str(cif), zone_axis=(0, 0, 1), cells=3))
    np.testing.assert_allclose(c1.lengths_A, [a / np.sqrt(2), a / np.sqrt(2), a], atol=1e-6)
    assert len(c1.cell) == 4 and c1.repeats_z == 3


def test_named_materials_are_orthogonal_and_sane():
    from napari_4dstem_ml.simulate.structures import MATERIALS, StructureSpec, build_unit_cell

    for key in MATERIALS:
        c = build_unit_cell(StructureSpec(key))
        cell = np.asarray(c.cell.cell.array)
        assert np.allclose(cell, np.diag(np.diag(cell))), key
        assert _min_distance(c.cell) > 1.2, key  # no duplicated atoms
        assert c.is_2d == (MATERIALS[key].kind == "2d")
    si = build_unit_cell(StructureSpec("Si", thickness_A=100.0))  # default zone [110]
    np.testing.assert_allclose(si.lengths_A, [5.431 / np.sqrt(2), 5.431, 5.431 / np.sqrt(2)], atol=1e-6)
    assert len(si.cell) == 4 and si.repeats_z == 26
    assert _min_distance(si.cell) == pytest.approx(5.431 * np.sqrt(3) / 4, abs=1e-6)
    for key, a in (("C", 3.567), ("SiC", 4.359), ("Ge", 5.658)):  # [110] by default, as Si
        c = build_unit_cell(StructureSpec(key, thickness_A=50.0))
        np.testing.assert_allclose(c.lengths_A, [a / np.sqrt(2), a, a / np.sqrt(2)], atol=1e-6)
        assert _min_distance(c.cell) == pytest.approx(a * np.sqrt(3) / 4, abs=1e-6), key
    assert sorted(build_unit_cell(StructureSpec("SiC")).cell.get_chemical_symbols()) == [
        "C", "C", "Si", "Si"]
    mos2 = build_unit_cell(StructureSpec("MoS2"))
    assert mos2.layer_thickness_A == pytest.approx(3.17, abs=1e-6)


def test_bad_structure_input_gives_clear_errors(tmp_path):
    from napari_4dstem_ml.simulate.structures import Defect, StructureSpec, build_unit_cell

    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_unit_cell(StructureSpec(str(tmp_path / "missing.cif")))
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a CIF\n")
    with pytest.raises(ValueError, match="could not be read"):
        build_unit_cell(StructureSpec(str(bad)))
    with pytest.raises(ValueError, match="monolayer"):
        build_unit_cell(StructureSpec("MoS2", thickness_A=20.0))
    with pytest.raises(ValueError, match="zone axis"):
        build_unit_cell(StructureSpec("Cu", zone_axis=(0, 0, 0)))
    with pytest.raises(ValueError, match="new_element"):
        Defect("substitution", "S")


def test_defects_remove_or_replace_the_nearest_atom():
    from napari_4dstem_ml.simulate.structures import (
        Defect,
        StructureSpec,
        apply_defects,
        build_crystal,
        build_unit_cell,
    )

    at = build_crystal(build_unit_cell(StructureSpec("MoS2")), (3, 4))
    pos = at.get_positions()
    s = np.flatnonzero(np.asarray(at.get_chemical_symbols()) == "S")
    target_atom = s[7]
    ty, tx = pos[target_atom, 1] + 0.3, pos[target_atom, 0] - 0.2
    out, sites = apply_defects(at, (Defect("vacancy", "S", layer="column"),), [(ty, tx)])
    assert len(out) == len(at) - 2  # both S of the column
    assert sites[0] == pytest.approx((pos[target_atom, 1], pos[target_atom, 0]), abs=1e-9)
    out, _ = apply_defects(at, (Defect("vacancy", "S", layer="exit"),), [(ty, tx)])
    assert len(out) == len(at) - 1
    out, _ = apply_defects(at, (Defect("substitution", "Mo", new_element="W"),), [(ty, tx)])
    assert out.get_chemical_symbols().count("W") == 1 and len(out) == len(at)


def test_projected_potential_integral_matches_the_scattering_factor():
    """Integral of V_proj over the plane = 2 pi a0 e f_e(0) (Kirkland), f_e(0) = 2 sum(a_i)
    from the Lobato parametrisation's coefficients."""
    from abtem.parametrizations import LobatoParametrization
    from ase import Atoms

    from napari_4dstem_ml.simulate.groundtruth import projected_potential, sample_periodic

    a0_A, ke2_eVA = 0.529177210903, 14.3996454784  # Bohr radius, e^2 / (4 pi eps0)
    k = 2 * np.pi * a0_A * ke2_eVA  # V A^2 per A of f_e
    for el in ("C", "Mo"):
        at = Atoms(el, positions=[(5.0, 5.0, 2.0)], cell=[10, 10, 4], pbc=True)
        proj, samp = projected_potential(at, 0.04)
        fe0 = 2 * np.asarray(LobatoParametrization().parameters[el])[0].sum()
        assert proj.sum() * samp[0] * samp[1] == pytest.approx(k * fe0, rel=1e-3)
    # two identical atoms at equivalent grid points give identical peaks
    at = Atoms("C2", positions=[(2.0, 3.0, 1.0), (6.0, 7.0, 3.0)], cell=[10, 10, 4], pbc=True)
    proj, samp = projected_potential(at, 0.04)
    v = sample_periodic(proj, samp, np.array([3.0, 7.0]), np.array([2.0, 6.0]))
    assert v[0, 0] == pytest.approx(v[1, 1], rel=1e-6)
    assert v[0, 0] > 10 * max(v[0, 1], v[1, 0])
