"""Crystal structures for the simulator: named materials, user structure files, point defects.

Every builder returns an orthogonal ASE ``Atoms`` cell with the beam along +z (abTEM's
propagation direction): cell lengths ``(a_x, b_y, c_z)``, one repeat along the zone axis.
:func:`build_crystal` stacks it to the requested thickness; :func:`apply_defects` removes or
replaces atoms nearest to requested positions. ASE and abTEM (extra ``[sim]``) are imported
inside the functions. Lengths in Å.

Zone axes are direction indices ``[uvw]`` in the basis of the structure's own cell vectors
(three-index, also for hexagonal cells). A zone axis needs lattice vectors perpendicular to
it for an exactly periodic orthogonal cell (true for the low-index axes of cubic, tetragonal,
orthorhombic and hexagonal [001] cells); otherwise abTEM strains the cell and the strain is
checked against ``max_strain``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: vacuum (Å) above and below a 2D layer inside its simulation box
LAYER_VACUUM_A = 1.0


@dataclass(frozen=True)
class Defect:
    """A point defect: the atom of ``element`` nearest (in projection) to ``position`` is
    removed (``kind="vacancy"``) or replaced by ``new_element`` (``kind="substitution"``).

    ``position`` is the (row, col) fraction of the scan field (0 = first, 1 = last scan
    position). ``layer`` picks which atom of the projected column: ``"exit"`` (largest z,
    the beam's exit side), ``"entrance"`` (smallest z) or ``"column"`` (all of them)."""

    kind: str = "vacancy"
    element: str = "S"
    position: tuple[float, float] = (0.75, 0.5)
    new_element: str | None = None
    layer: str = "exit"

    def __post_init__(self) -> None:
        if self.kind not in ("vacancy", "substitution"):
            raise ValueError(f"defect kind {self.kind!r}: expected 'vacancy' or 'substitution'")
        if self.kind == "substitution" and not self.new_element:
            raise ValueError("a substitution defect needs new_element (the replacing element)")
        if self.layer not in ("exit", "entrance", "column"):
            raise ValueError(f"defect layer {self.layer!r}: expected 'exit', 'entrance' or 'column'")
        if not all(0.0 <= p <= 1.0 for p in self.position):
            raise ValueError(f"defect position {self.position}: fractions of the scan in [0, 1]")

    def describe(self) -> str:
        what = "vacancy" if self.kind == "vacancy" else f"substitution by {self.new_element}"
        which = {"exit": "the exit-side atom of its column", "entrance": "the entrance-side atom "
                 "of its column", "column": "every atom of its column"}[self.layer]
        return f"{self.element} {what} ({which})"


@dataclass(frozen=True)
class StructureSpec:
    """What to simulate: a named material (:data:`MATERIALS`) or a structure file (CIF or any
    ASE-readable file), a zone axis ``[uvw]`` (None: the material's default; files: [001]),
    the thickness as ``thickness_A`` (rounded to whole repeats) or ``cells`` (repeats along
    the zone axis); both None: one repeat (2D materials are always one layer). ``defects``
    are applied to the scanned supercell."""

    name: str = "MoS2"
    zone_axis: tuple[int, int, int] | None = None
    thickness_A: float | None = None
    cells: int | None = None
    defects: tuple[Defect, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StructureSpec:
        d = dict(d)
        if d.get("zone_axis") is not None:
            d["zone_axis"] = tuple(int(v) for v in d["zone_axis"])
        d["defects"] = tuple(
            Defect(**{**x, "position": tuple(x.get("position", (0.75, 0.5)))})
            for x in d.get("defects", ()))
        return cls(**d)

    @property
    def is_file(self) -> bool:
        return self.name not in MATERIALS

    def label(self) -> str:
        """A short human-readable description."""
        base = self.name if not self.is_file else Path(self.name).name
        if self.zone_axis is not None:
            base += " [" + "".join(str(v) for v in self.zone_axis) + "]"
        return base


@dataclass(frozen=True)
class Material:
    """A named material: ``builder()`` returns its conventional cell (bulk) or its orthogonal
    monolayer (2D); ``rms_A`` are room-temperature rms displacements (Å, per axis) used for
    frozen phonons (typical values, assumed)."""

    key: str
    description: str
    kind: str  # "2d" | "bulk"
    zone_axis: tuple[int, int, int]
    rms_A: tuple[tuple[str, float], ...]
    builder: Callable[[], Any]


def _mx2(formula: str, a: float, t: float):
    def build():
        import abtem
        from ase.build import mx2

        at = abtem.orthogonalize_cell(mx2(formula=formula, kind="2H", a=a, thickness=t, vacuum=1.0))
        return _layer_box(at)
    return build


def _mx2_1t(formula: str, a: float, t: float):
    def build():
        import abtem
        from ase.build import mx2

        at = abtem.orthogonalize_cell(mx2(formula=formula, kind="1T", a=a, thickness=t, vacuum=1.0))
        return _layer_box(at)
    return build


def _black_phosphorus(layers: int):
    """``layers`` layers of black phosphorus (Cmca, a = 3.314, b = 10.478, c = 4.376 A,
    P on 8f (0, 0.1017, 0.0806); Brown & Rundqvist 1965) seen along the stacking axis b:
    box x = a (zigzag), y = c (armchair), z = b (AB stacking, 5.24 A per layer)."""
    def build():
        from ase import Atoms

        a, b, c, y, z = 3.314, 10.478, 4.376, 0.1017, 0.0806
        base = [(0, y, z), (0, -y, -z), (0, 0.5 + y, 0.5 - z), (0, 0.5 - y, 0.5 + z)]
        frac = base + [(u + 0.5, v + 0.5, w) for u, v, w in base]
        pos = []
        for fx, fy, fz in frac:
            fy_c = (fy + 0.25) % 1.0 - 0.25  # layers centred on fy = 0 and 0.5
            for rep in range((layers + 1) // 2):
                ly = fy_c + rep
                if round(2 * ly) < layers:  # layer index = nearest half-integer * 2
                    pos.append(((fx % 1.0) * a, (fz % 1.0) * c, ly * b))
        at = Atoms(f"P{len(pos)}", positions=pos, cell=[a, c, 1.0], pbc=True)
        return _layer_box(at)
    return build


def _honeycomb(formula: str, a: float):
    def build():
        import abtem
        from ase.build import graphene

        return _layer_box(abtem.orthogonalize_cell(graphene(formula=formula, a=a, vacuum=1.0)))
    return build


def _layer_box(at):
    """A 2D layer in a tight box: ``LAYER_VACUUM_A`` above and below its atoms."""
    z = at.positions[:, 2]
    cell = at.cell.lengths()
    at.set_cell([cell[0], cell[1], float(z.max() - z.min()) + 2 * LAYER_VACUUM_A])
    at.positions[:, 2] += LAYER_VACUUM_A - z.min()
    return at


def _perovskite(a_site: str, b_site: str, a: float):
    def build():
        from ase import Atoms

        return Atoms(f"{a_site}{b_site}O3", scaled_positions=[
            (0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
            cell=[a, a, a], pbc=True)
    return build


def _bulk(name: str, structure: str, a: float):
    def build():
        from ase.build import bulk

        return bulk(name, structure, a=a, cubic=True)
    return build


def _prsco3():
    from .prsco3 import unit_cell

    return unit_cell()


_R = {  # assumed typical room-temperature rms displacements per axis, Å
    "Mo": 0.06, "W": 0.05, "S": 0.07, "Se": 0.065, "Te": 0.065, "B": 0.07, "N": 0.07, "C": 0.07,
}


def _rms(*els: str, **extra: float) -> tuple[tuple[str, float], ...]:
    return tuple((e, extra.get(e, _R.get(e, 0.08))) for e in els)


#: named materials (lattice constants at room temperature, literature values rounded)
MATERIALS: dict[str, Material] = {m.key: m for m in [
    Material("MoS2", "2H-MoS2 monolayer, a = 3.16 A", "2d", (0, 0, 1), _rms("Mo", "S"),
             _mx2("MoS2", 3.16, 3.17)),
    Material("MoSe2", "2H-MoSe2 monolayer, a = 3.29 A", "2d", (0, 0, 1), _rms("Mo", "Se"),
             _mx2("MoSe2", 3.29, 3.34)),
    Material("MoTe2", "2H-MoTe2 monolayer, a = 3.52 A", "2d", (0, 0, 1), _rms("Mo", "Te"),
             _mx2("MoTe2", 3.52, 3.60)),
    Material("WS2", "2H-WS2 monolayer, a = 3.153 A", "2d", (0, 0, 1), _rms("W", "S"),
             _mx2("WS2", 3.153, 3.14)),
    Material("WSe2", "2H-WSe2 monolayer, a = 3.28 A", "2d", (0, 0, 1), _rms("W", "Se"),
             _mx2("WSe2", 3.28, 3.36)),
    Material("PtSe2", "1T-PtSe2 monolayer, a = 3.73 A", "2d", (0, 0, 1), _rms("Pt", "Se", Pt=0.05),
             _mx2_1t("PtSe2", 3.73, 2.53)),
    Material("BP3L", "black phosphorus trilayer (AB stacked), a = 3.314 A (x, zigzag), "
             "c = 4.376 A (y, armchair)", "2d", (0, 0, 1), _rms("P", P=0.075), _black_phosphorus(3)),
    Material("hBN", "hexagonal boron nitride monolayer, a = 2.504 A", "2d", (0, 0, 1),
             _rms("B", "N"), _honeycomb("BN", 2.504)),
    Material("graphene", "graphene, a = 2.46 A", "2d", (0, 0, 1), _rms("C"),
             _honeycomb("C2", 2.46)),
    Material("SrTiO3", "cubic perovskite SrTiO3, a = 3.905 A", "bulk", (0, 0, 1),
             _rms("Sr", "Ti", "O", Sr=0.078, Ti=0.068, O=0.085), _perovskite("Sr", "Ti", 3.905)),
    Material("BaTiO3", "BaTiO3, cubic approximation a = 4.00 A", "bulk", (0, 0, 1),
             _rms("Ba", "Ti", "O", Ba=0.08, Ti=0.075, O=0.09), _perovskite("Ba", "Ti", 4.00)),
    Material("LaAlO3", "LaAlO3, pseudocubic a = 3.79 A (rhombohedral tilts ignored)", "bulk",
             (0, 0, 1), _rms("La", "Al", "O", La=0.07, Al=0.07, O=0.09),
             _perovskite("La", "Al", 3.79)),
    Material("PrScO3", "PrScO3 Pbnm, generic GdFeO3-type sites (simulate.prsco3.SITES)", "bulk",
             (0, 0, 1), _rms("Pr", "Sc", "O", Pr=0.07, Sc=0.07, O=0.09), _prsco3),
    Material("Si", "silicon (diamond), a = 5.431 A", "bulk", (1, 1, 0), _rms("Si", Si=0.076),
             _bulk("Si", "diamond", 5.431)),
    Material("GaAs", "GaAs (zinc blende), a = 5.653 A", "bulk", (1, 1, 0),
             _rms("Ga", "As", Ga=0.09, As=0.085), _bulk("GaAs", "zincblende", 5.653)),
    Material("Cu", "copper (fcc), a = 3.615 A", "bulk", (0, 0, 1), _rms("Cu", Cu=0.083),
             _bulk("Cu", "fcc", 3.615)),
    Material("Au", "gold (fcc), a = 4.078 A", "bulk", (0, 0, 1), _rms("Au", Au=0.089),
             _bulk("Au", "fcc", 4.078)),
    Material("CeO2", "CeO2 (fluorite), a = 5.411 A", "bulk", (0, 0, 1),
             _rms("Ce", "O", Ce=0.06, O=0.085), _bulk("CeO2", "fluorite", 5.411)),
    Material("C", "diamond, a = 3.567 A", "bulk", (1, 1, 0), _rms("C", C=0.045),
             _bulk("C", "diamond", 3.567)),
    Material("SiC", "3C-SiC (zinc blende), a = 4.359 A", "bulk", (1, 1, 0),
             _rms("Si", "C", Si=0.055, C=0.06), _bulk("SiC", "zincblende", 4.359)),
    Material("Ge", "germanium (diamond), a = 5.658 A", "bulk", (1, 1, 0), _rms("Ge", Ge=0.085),
             _bulk("Ge", "diamond", 5.658)),
    Material("MgO", "MgO (rock salt), a = 4.212 A", "bulk", (0, 0, 1),
             _rms("Mg", "O", Mg=0.063, O=0.066), _bulk("MgO", "rocksalt", 4.212)),
]}


@dataclass
class Crystal:
    """An oriented orthogonal unit cell (beam along z) and how many repeats make the slab."""

    cell: Any  # ase.Atoms, orthogonal, one repeat along z
    repeats_z: int
    is_2d: bool
    rms_A: dict[str, float]
    description: str
    source_sha1: str | None = None
    strain: float = 0.0

    @property
    def lengths_A(self) -> tuple[float, float, float]:
        """(a_x, b_y, c_z) of the orthogonal unit cell."""
        return tuple(float(v) for v in self.cell.cell.lengths())

    @property
    def thickness_A(self) -> float:
        return self.repeats_z * self.lengths_A[2] if not self.is_2d else self.layer_thickness_A

    @property
    def layer_thickness_A(self) -> float:
        z = self.cell.positions[:, 2]
        return float(z.max() - z.min())


def _translations(atoms, tol_A: float = 1e-3) -> np.ndarray:
    """Fractional translations (in ``atoms``' cell, in [0, 1)) that map the structure onto
    itself: the centring vectors of a conventional cell (fcc: 4, bcc: 2, primitive: 1)."""
    frac = atoms.get_scaled_positions(wrap=True)
    num = atoms.numbers
    cell = np.asarray(atoms.cell.array, float)
    kinds, counts = np.unique(num, return_counts=True)
    ref_kind = kinds[np.argmin(counts)]
    same = np.flatnonzero(num == ref_kind)
    out = []
    for j in same:
        t = np.mod(frac[j] - frac[same[0]], 1.0)
        moved = np.mod(frac + t, 1.0)
        ok = True
        for k in kinds:
            a = moved[num == k][:, None, :] - frac[num == k][None, :, :]
            a -= np.round(a)
            d = np.linalg.norm(a @ cell, axis=-1)
            if not (d.min(axis=1) < tol_A * 100).all():
                ok = False
                break
        if ok:
            out.append(t)
    return np.array(out)


def orient_zone_axis(atoms, uvw: tuple[int, int, int], search: int = 4,
                     max_strain: float = 0.005, what: str = "structure"):
    """Rotate ``atoms`` so that the direction ``uvw`` (indices in the basis of its cell
    vectors) points along +z and return the smallest orthogonal periodic cell: z = the
    shortest lattice vector along ``uvw`` (centring translations included, so fcc [110]
    repeats every a/sqrt(2)), x = the shortest lattice vector perpendicular to it, y = the
    shortest perpendicular to both. When no such y exists within ``search`` cells, abTEM's
    ``orthogonalize_cell`` is used and its strain must stay below ``max_strain``. Returns
    (atoms, strain)."""
    from ase import Atoms

    uvw_a = np.asarray(uvw, dtype=int)
    if uvw_a.shape != (3,) or not uvw_a.any():
        raise ValueError(f"zone axis {uvw!r} of {what}: expected three integers [u, v, w], not all 0")
    cell = np.asarray(atoms.cell.array, float)
    zdir = uvw_a @ cell
    zdir /= np.linalg.norm(zdir)
    t = _translations(atoms)
    rng = np.arange(-search, search + 1)
    n = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3).astype(float)
    frac = (n[:, None, :] + t[None, :, :]).reshape(-1, 3)
    vecs = frac @ cell
    lens = np.linalg.norm(vecs, axis=1)
    keep = lens > 1e-6
    frac, vecs, lens = frac[keep], vecs[keep], lens[keep]
    along = (np.abs(vecs @ zdir - lens) < 1e-6 * lens)
    if not along.any():
        raise ValueError(f"{what}: no lattice vector along zone axis {list(uvw)} within "
                         f"{search} cells; choose a low-index zone axis")
    z = vecs[np.flatnonzero(along)[np.argmin(lens[along])]]
    perp = np.abs(vecs @ zdir) < 1e-6 * lens
    if not perp.any():
        raise ValueError(f"{what}: no lattice vector perpendicular to zone axis {list(uvw)} "
                         f"within {search} cells; choose a low-index zone axis")
    x = vecs[np.flatnonzero(perp)[np.argmin(lens[perp])]]
    ydir = np.cross(zdir, x / np.linalg.norm(x))
    ypar = perp & (np.abs(vecs @ ydir - lens) < 1e-6 * lens)
    if not ypar.any():
        return _orient_with_strain(atoms, zdir, x, max_strain, what, uvw)
    y = vecs[np.flatnonzero(ypar)[np.argmin(lens[ypar])]]
    new = np.array([x, y, z])
    # fill the new cell with the atoms of enough repeats of the old one
    inv = np.linalg.inv(new)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float) @ new
    cf = corners @ np.linalg.inv(cell)
    lo = np.floor(cf.min(0)).astype(int) - 1
    hi = np.ceil(cf.max(0)).astype(int) + 1
    base = atoms.get_scaled_positions(wrap=True)
    shifts = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"),
                      -1).reshape(-1, 3)
    allfrac = (base[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    pos = allfrac @ cell
    nums = np.tile(atoms.numbers, len(shifts))
    f = pos @ inv
    eps = 1e-6
    inside = ((f > -eps) & (f < 1 - eps)).all(axis=1)
    f, nums = np.mod(f[inside], 1.0), nums[inside]
    f[np.isclose(f, 1.0, atol=1e-6)] = 0.0
    lengths = np.linalg.norm(new, axis=1)
    expect = len(atoms) * abs(np.linalg.det(new) / np.linalg.det(cell))
    if abs(len(nums) - expect) > 0.01:
        raise RuntimeError(f"{what}: orienting to {list(uvw)} found {len(nums)} atoms, "
                           f"expected {expect:.2f}")
    out = Atoms(numbers=nums, scaled_positions=f, cell=np.diag(lengths), pbc=True)
    return out, 0.0


def _orient_with_strain(atoms, zdir, x, max_strain, what, uvw):
    import abtem

    at = atoms.copy()
    at.rotate(zdir, "z", rotate_cell=True)
    xr = at.cell.array.T @ np.linalg.solve(atoms.cell.array.T, x)
    at.rotate(-np.degrees(np.arctan2(xr[1], xr[0])), "z", rotate_cell=True)
    at.pbc = True
    out, mat = abtem.orthogonalize_cell(at, max_repetitions=8, return_transform_matrix=True)
    strain = float(np.abs(np.asarray(mat) - np.eye(3)).max())
    if strain > max_strain:
        raise ValueError(
            f"{what}: zone axis {list(uvw)} has no orthogonal repeat within 8 cells (abTEM "
            f"would strain the cell by {100 * strain:.2f} % > {100 * max_strain:.2f} %); "
            "choose another zone axis")
    out.wrap()
    return out, strain


def read_structure(path: str | Path):
    """Read a structure file with ASE (CIF or any ASE-readable format); clear errors for a
    missing file, an unreadable one, or one without a 3D periodic cell."""
    from ase.io import read

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"structure file {p} does not exist")
    try:
        at = read(str(p))
    except Exception as e:  # ASE raises many kinds
        raise ValueError(f"structure file {p} could not be read by ASE: {e}") from e
    if isinstance(at, list):
        at = at[0]
    if len(at) == 0:
        raise ValueError(f"structure file {p} holds no atoms")
    if at.cell.rank < 3 or at.cell.volume < 1e-6:
        raise ValueError(f"structure file {p} has no 3D unit cell (a periodic crystal is "
                         "expected; add a cell with vacuum for molecules or 2D layers)")
    return at


def build_unit_cell(spec: StructureSpec) -> Crystal:
    """The oriented orthogonal unit cell of ``spec`` and its number of repeats along z."""
    if spec.is_file:
        at = read_structure(spec.name)
        sha = hashlib.sha1(Path(spec.name).read_bytes()).hexdigest()
        uvw = spec.zone_axis or (0, 0, 1)
        cell, strain = orient_zone_axis(at, uvw, what=f"structure file {spec.name}")
        rms = {el: 0.08 for el in set(cell.get_chemical_symbols())}
        is_2d = False
        desc = f"{Path(spec.name).name} ({at.get_chemical_formula()}) along [{''.join(map(str, uvw))}]"
    else:
        m = MATERIALS[spec.name]
        rms = dict(m.rms_A)
        sha = None
        is_2d = m.kind == "2d"
        if is_2d:
            if spec.zone_axis not in (None, (0, 0, 1)):
                raise ValueError(f"{spec.name} is a 2D layer: zone axis must be [001]")
            if spec.thickness_A is not None or spec.cells not in (None, 1):
                raise ValueError(f"{spec.name} is a monolayer: leave thickness_A and cells unset")
            cell, strain = m.builder(), 0.0
            desc = m.description
        else:
            uvw = spec.zone_axis or m.zone_axis
            cell, strain = orient_zone_axis(m.builder(), uvw, what=spec.name)
            desc = f"{m.description}, along [{''.join(map(str, uvw))}]"
    c = float(cell.cell.lengths()[2])
    if is_2d:
        reps = 1
    elif spec.cells is not None:
        if spec.cells < 1:
            raise ValueError(f"cells = {spec.cells}: at least one repeat")
        reps = int(spec.cells)
    elif spec.thickness_A is not None:
        if spec.thickness_A <= 0:
            raise ValueError(f"thickness_A = {spec.thickness_A}: must be > 0")
        reps = max(1, int(round(spec.thickness_A / c)))
    else:
        reps = 1
    return Crystal(cell=cell, repeats_z=reps, is_2d=is_2d, rms_A=rms, description=desc,
                   source_sha1=sha, strain=strain)


def build_crystal(crystal: Crystal, lateral: tuple[int, int]):
    """The slab: the unit cell repeated ``lateral`` = (along y, along x) times in-plane and
    ``repeats_z`` times along the beam (ASE ``Atoms``, orthogonal, periodic)."""
    at = crystal.cell * (int(lateral[1]), int(lateral[0]), int(crystal.repeats_z))
    at.pbc = True
    return at


def apply_defects(atoms, defects: tuple[Defect, ...], targets_yx_A: list[tuple[float, float]]):
    """Apply ``defects`` to ``atoms`` (a copy); ``targets_yx_A[i]`` is where defect ``i`` is
    wanted, (y, x) in Å in the atoms' frame. Returns the new atoms and the (y, x) positions
    (Å) of the affected columns."""
    at = atoms.copy()
    sites: list[tuple[float, float]] = []
    for d, (ty, tx) in zip(defects, targets_yx_A):
        pos = at.get_positions()
        idx = np.flatnonzero(np.asarray(at.get_chemical_symbols()) == d.element)
        if idx.size == 0:
            raise ValueError(f"defect {d.describe()}: no {d.element} atoms in the structure "
                             f"({at.get_chemical_formula()})")
        dist = np.hypot(pos[idx, 1] - ty, pos[idx, 0] - tx)
        col = idx[dist < dist.min() + 0.1]
        z = pos[col, 2]
        if d.layer == "exit":
            pick = col[[int(np.argmax(z))]]
        elif d.layer == "entrance":
            pick = col[[int(np.argmin(z))]]
        else:
            pick = col
        site = (float(pos[pick, 1].mean()), float(pos[pick, 0].mean()))
        if d.kind == "vacancy":
            del at[[int(i) for i in pick]]
        else:
            for i in pick:
                at[int(i)].symbol = d.new_element
        sites.append(site)
    return at, sites
