"""What one simulation is (:class:`SimulationConfig`) and how it will be computed (:class:`Plan`).

Conventions: lengths in Å, angles in mrad, energy in eV; scan and image axes ``(y, x)``
(abTEM orders x first; the engine transposes). ``defocus_A`` is abTEM's defocus, which is
``-C10``: a positive value focuses the probe that far *below* the entrance surface of the
crystal (the "−20 nm defocus" of Chen et al. 2021 is ``defocus_A = +200``). ``tilt_mrad`` is
the beam tilt relative to the zone axis (equivalently the opposite crystal tilt); abTEM applies
it in the propagator, so the pattern centre does not move.

Two exact ways to cover the scan (chosen by :func:`make_plan`):

* ``"periodic"`` (perfect crystals): the 4D intensity is periodic in probe position with the
  projected unit cell and band-limited to 2α/λ, so the multislice runs only on an odd grid of
  positions inside one unit cell, finer than λ/(4α), and the scan is obtained by periodic
  Fourier interpolation. The crystal window around the probe is large enough that the probe
  does not meet its own periodic image.
* ``"direct"`` (point defects): every scan position (plus a margin for the source-size blur)
  through a supercell just large enough that the probe tails do not reach the defect's
  periodic images.

The abTEM grid is only as fine as the largest angle needed (the detector's corners, the ADF
outer angle) requires: abTEM's anti-aliasing cutoff is 2/3 of the Nyquist angle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..dataset import electron_wavelength_A
from .detector import DetectorModel
from .structures import Crystal, Defect, StructureSpec, build_unit_cell

#: abTEM anti-aliasing cutoff as a fraction of the Nyquist frequency (abTEM 1.0 default)
ANTIALIAS_FRACTION = 2.0 / 3.0

#: measured multislice cost on this project's 2-core VM, one core (abTEM 1.0.11, FFTW,
#: float32): CPU seconds per (probe position × slice × grid point × log2(grid points)).
#: Measured with :func:`.engine.measure_throughput` (``python -m napari_4dstem_ml.simulate
#: throughput``): 512² grid 6.6 ms per position and slice, 256² 1.8 ms, on an idle machine;
#: :func:`estimate_seconds` adds the per-position overhead of probe and detector.
SECONDS_PER_POINT_LOG2 = 1.45e-9
#: per-position overhead in slice equivalents (probe build, detector FFT and crop, ADF)
OVERHEAD_SLICES = 3.0


@dataclass(frozen=True)
class SimulationConfig:
    """Every parameter of one simulated 4D-STEM data set (JSON-serialisable, frozen).

    ``scan_offset_A``: (y, x) of scan position (0, 0) inside a unit cell of the crystal.
    ``frozen_phonons``: number of thermal configurations averaged (0: static lattice), with
    rms displacements ``rms_A`` (element, Å) or the material's defaults when empty.
    ``method``: ``"auto"`` (periodic for perfect crystals, direct with defects),
    ``"periodic"`` or ``"direct"``. ``store_noise_free``: also write the beam fraction per
    detector pixel (``/noise_free/patterns``), so Poisson noise can be redrawn at any dose.
    """

    structure: StructureSpec = field(default_factory=StructureSpec)
    energy_ev: float = 80e3
    convergence_mrad: float = 21.4
    defocus_A: float = 0.0
    tilt_mrad: tuple[float, float] = (0.0, 0.0)
    astigmatism_A: float = 0.0
    astigmatism_angle_deg: float = 0.0
    scan_jitter_A: float = 0.0
    scan_shape: tuple[int, int] = (48, 48)
    scan_step_A: float = 0.25
    scan_offset_A: tuple[float, float] = (0.31, 0.17)
    detector: DetectorModel = field(default_factory=DetectorModel)
    dose_e_per_pattern: float = 5.0e4
    source_fwhm_A: float = 0.4
    frozen_phonons: int = 0
    rms_A: tuple[tuple[str, float], ...] = ()
    adf_inner_mrad: float = 60.0
    adf_outer_mrad: float = 150.0
    slice_thickness_A: float = 2.0
    probe_tail_fraction: float = 0.01
    method: str = "auto"
    store_noise_free: bool = True
    lowpass_resolution_A: float = 0.4
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.energy_ev > 0, "energy_ev must be > 0 (eV)"),
            (0 < self.convergence_mrad < 100, "convergence_mrad must be in (0, 100) mrad"),
            (self.scan_step_A > 0, "scan_step_A must be > 0 (Å)"),
            (all(int(n) >= 1 for n in self.scan_shape), "scan_shape needs >= 1 position per axis"),
            (self.dose_e_per_pattern > 0, "dose_e_per_pattern must be > 0"),
            (self.source_fwhm_A >= 0, "source_fwhm_A must be >= 0 (Å)"),
            (self.frozen_phonons >= 0, "frozen_phonons must be >= 0"),
            (0 < self.adf_inner_mrad < self.adf_outer_mrad, "need 0 < adf_inner_mrad < adf_outer_mrad"),
            (self.slice_thickness_A > 0, "slice_thickness_A must be > 0 (Å)"),
            (0 < self.probe_tail_fraction < 0.5, "probe_tail_fraction must be in (0, 0.5)"),
            (self.method in ("auto", "periodic", "direct"), "method: 'auto', 'periodic' or 'direct'"),
            (self.lowpass_resolution_A > 0, "lowpass_resolution_A must be > 0 (Å)"),
            (self.astigmatism_A >= 0, "astigmatism_A must be >= 0 (Å; the azimuth sets its sign)"),
            (self.scan_jitter_A >= 0, "scan_jitter_A must be >= 0 (Å)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SimulationConfig: {msg}")
        if self.method == "periodic" and self.structure.defects:
            raise ValueError("SimulationConfig: a crystal with point defects is not periodic; "
                             "use method 'direct' or 'auto'")
        if self.scan_jitter_A > 0 and self.method == "periodic":
            raise ValueError("SimulationConfig: scan jitter breaks the periodic interpolation; "
                             "use method 'direct'")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationConfig:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"SimulationConfig: unknown parameter(s) {sorted(unknown)}")
        if "structure" in d:
            d["structure"] = StructureSpec.from_dict(d["structure"])
        if "detector" in d:
            det = dict(d["detector"])
            for k in ("shape", "centre_offset_px", "descan_y_px", "descan_x_px"):
                if k in det:
                    det[k] = tuple(det[k])
            d["detector"] = DetectorModel(**det)
        for k in ("tilt_mrad", "scan_shape", "scan_offset_A"):
            if k in d:
                d[k] = tuple(d[k])
        if "scan_shape" in d:
            d["scan_shape"] = tuple(int(v) for v in d["scan_shape"])
        if "rms_A" in d:
            d["rms_A"] = tuple((str(e), float(v)) for e, v in d["rms_A"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> SimulationConfig:
        return cls.from_dict(json.loads(s))

    def replace(self, **changes: Any) -> SimulationConfig:
        return replace(self, **changes)

    def digest(self, crystal: Crystal | None = None) -> str:
        """Cache key of the multislice chunks: every parameter except the dose, what is
        written (noise-free, low-pass) and the name; a structure file's content counts."""
        skip = {"dose_e_per_pattern", "store_noise_free", "lowpass_resolution_A", "name"}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        for k in ("astigmatism_A", "astigmatism_angle_deg", "scan_jitter_A"):
            if d[k] == 0:  # older configurations keep their digest
                del d[k]
        if crystal is not None and crystal.source_sha1:
            d["structure_sha1"] = crystal.source_sha1
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def wavelength_A(self) -> float:
        return electron_wavelength_A(self.energy_ev)


@dataclass(frozen=True)
class Plan:
    """How a :class:`SimulationConfig` is computed (all derived, nothing chosen freely)."""

    method: str
    cell_A: tuple[float, float, float]  # orthogonal unit cell (a_x, b_y, c_z)
    repeats_z: int
    thickness_A: float
    is_2d: bool
    lateral: tuple[int, int]  # unit cells in the multislice box (y, x)
    extent_A: tuple[float, float]  # box (y, x)
    gpts: tuple[int, int]  # abTEM grid (y, x)
    slice_thickness_A: float
    n_slices: int
    positions: tuple[int, int]  # probe positions simulated per configuration (y, x)
    margin_px: int  # direct: extra scan positions on each side (source-size blur)
    configs: int  # frozen-phonon configurations (1 for a static lattice)
    rows_per_chunk: int
    needed_mrad: float  # largest angle the grid must reach (detector corners, ADF outer)
    pattern_mrad: float  # simulated patterns are kept out to this angle (detector corners)
    cutoff_mrad: float  # abTEM anti-aliasing cutoff of this grid (min over axes)
    sim_pixel_mrad: tuple[float, float]  # pattern sampling (y, x) of the box
    probe_radius_A: float
    scan_origin_A: tuple[float, float]  # scan position (0, 0) in the box frame (y, x)
    estimate_s: float

    @property
    def total_units(self) -> int:
        """Probe positions to simulate, all configurations together (progress units)."""
        return self.configs * self.positions[0] * self.positions[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=16)
def airy_tail_radius(fraction: float) -> float:
    """Radius, in units of λ/α, outside which an aberration-free probe (circular aperture)
    carries less than ``fraction`` of its intensity: 1 - EE(v) = J0(v)² + J1(v)² (Rayleigh),
    v = 2π α r / λ; the last crossing of ``fraction``."""
    from scipy.special import j0, j1

    v = np.linspace(0.01, 20.0 / fraction, int(400 / fraction))
    out = j0(v) ** 2 + j1(v) ** 2
    above = np.flatnonzero(out > fraction)
    return float(v[above[-1] + 1] / (2 * np.pi)) if above.size else 0.0


def probe_radius_A(energy_ev: float, convergence_mrad: float, defocus_A: float, thickness_A: float,
                   tail_fraction: float = 0.01) -> float:
    """Radius (Å) that holds all but ``tail_fraction`` of the probe anywhere in a crystal
    ``thickness_A`` thick: the in-focus Airy tail plus the geometric spread α·|z - defocus|
    at the entrance and exit surfaces."""
    lam = electron_wavelength_A(energy_ev)
    a = convergence_mrad * 1e-3
    spread = a * max(abs(defocus_A), abs(thickness_A - defocus_A))
    return airy_tail_radius(tail_fraction) * lam / a + spread


def fft_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3, 5 and 7 (fast FFTs)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def detector_reach_mrad(det: DetectorModel, scan_shape: tuple[int, int]) -> float:
    """Largest angle (mrad) from the pattern centre to any detector pixel's far corner, over
    the whole scan (pattern centre offset and descan included)."""
    cs = det.centres_px(scan_shape)
    corners = np.array([[-0.5, -0.5], [-0.5, det.shape[1] - 0.5], [det.shape[0] - 0.5, -0.5],
                        [det.shape[0] - 0.5, det.shape[1] - 0.5]])
    c = cs[[0, 0, -1, -1], [0, -1, 0, -1]]
    d = np.hypot(corners[None, :, 0] - c[:, None, 0], corners[None, :, 1] - c[:, None, 1])
    return float(d.max() * det.pixel_mrad)


def antialias_cutoff_mrad(extent_A: tuple[float, float], gpts: tuple[int, int], wavelength_A: float
                          ) -> float:
    """abTEM 1.0's anti-aliasing cutoff angle (mrad, smaller axis) of a grid: 2/3 of the
    Nyquist frequency of the coarser axis, floored to whole angular pixels of the same
    parity as the grid, half of it (``Waves.cutoff_angles``)."""
    samp = [extent_A[i] / gpts[i] for i in range(2)]
    kcut = ANTIALIAS_FRACTION / max(samp)
    out = []
    for i in range(2):
        n = int(np.floor(np.round(kcut * extent_A[i], 7)))
        if (n % 2 == 0) != (gpts[i] % 2 == 0):
            n += 1
        out.append(n // 2 * wavelength_A / extent_A[i] * 1e3)
    return float(min(out))


def _odd_at_least(x: float) -> int:
    n = int(math.ceil(x))
    return n if n % 2 == 1 else n + 1


def seconds_per_position(gpts: tuple[int, int], n_slices: int, rate: float | None = None) -> float:
    """Estimated multislice seconds for one probe position through ``n_slices`` slices
    (``rate``: seconds per position, slice, grid point and log2(grid points); default
    :data:`SECONDS_PER_POINT_LOG2`)."""
    pts = gpts[0] * gpts[1]
    rate = SECONDS_PER_POINT_LOG2 if rate is None else rate
    return rate * pts * math.log2(pts) * (n_slices + OVERHEAD_SLICES)


def make_plan(config: SimulationConfig, crystal: Crystal | None = None,
              chunk_seconds: float = 20.0, rate: float | None = None) -> Plan:
    """Derive the simulation plan (box, grid, positions, chunks, cost) from ``config``;
    chunks of scan rows are sized to take about ``chunk_seconds`` each (progress and
    cancellation granularity); ``rate`` overrides the measured throughput (see
    :func:`seconds_per_position`) for the estimate only."""
    if crystal is None:
        crystal = build_unit_cell(config.structure)
    lam = config.wavelength_A
    alpha = config.convergence_mrad
    ax, by, cz = crystal.lengths_A
    thick = crystal.thickness_A
    if crystal.is_2d:
        n_slices = max(1, round(cz / config.slice_thickness_A))
        slice_t = cz / n_slices
    else:
        per_cell = max(1, round(cz / config.slice_thickness_A))
        slice_t = cz / per_cell
        n_slices = per_cell * crystal.repeats_z
    method = config.method
    if method == "auto":
        method = "direct" if config.structure.defects or config.scan_jitter_A > 0 else "periodic"
    det = config.detector
    ny, nx = config.scan_shape
    step = config.scan_step_A
    radius = probe_radius_A(config.energy_ev, alpha, config.defocus_A, thick,
                            config.probe_tail_fraction) + alpha * 1e-3 * config.astigmatism_A

    # the box must resolve the detector pixels: simulation pixel lam/L <= detector pixel
    l_pix = lam / (det.pixel_mrad * 1e-3)
    if method == "periodic":
        margin = 0
        need = (max(2 * radius, l_pix),) * 2
    else:
        sig = config.source_fwhm_A / (2 * math.sqrt(2 * math.log(2)))
        margin = int(math.ceil(4 * sig / step)) if sig > 0 else 0
        jit = 8 * config.scan_jitter_A  # the box holds the jittered positions too
        field_y, field_x = (ny + 2 * margin) * step + jit, (nx + 2 * margin) * step + jit
        need = (max(field_y + radius, 2 * radius, l_pix), max(field_x + radius, 2 * radius, l_pix))
    lateral = (max(1, math.ceil(need[0] / by - 1e-9)), max(1, math.ceil(need[1] / ax - 1e-9)))
    extent = (lateral[0] * by, lateral[1] * ax)
    pattern = detector_reach_mrad(det, config.scan_shape) + 2 * det.pixel_mrad
    needed = max(pattern, config.adf_outer_mrad + det.pixel_mrad)
    s_max = ANTIALIAS_FRACTION * lam / (2 * needed * 1e-3)
    gpts = (fft_size(math.ceil(extent[0] / s_max)), fft_size(math.ceil(extent[1] / s_max)))
    while (cutoff := antialias_cutoff_mrad(extent, gpts, lam)) < needed:
        gpts = (fft_size(gpts[0] + 1), fft_size(gpts[1] + 1))
    sim_pix = (lam / extent[0] * 1e3, lam / extent[1] * 1e3)
    if method == "periodic":
        # band limit 2 alpha_eff / lam, alpha_eff including abTEM's soft aperture edge
        a_eff = (alpha + 2 * max(sim_pix)) * 1e-3
        positions = (_odd_at_least(4 * a_eff * by / lam + 1), _odd_at_least(4 * a_eff * ax / lam + 1))
        cy0, cx0 = (lateral[0] // 2) * by, (lateral[1] // 2) * ax
        origin = (cy0 + config.scan_offset_A[0] % by, cx0 + config.scan_offset_A[1] % ax)
    else:
        positions = (ny + 2 * margin, nx + 2 * margin)
        oy, ox = config.scan_offset_A[0] % by, config.scan_offset_A[1] % ax
        cy = round((extent[0] / 2 - (ny - 1) / 2 * step - oy) / by)
        cx = round((extent[1] / 2 - (nx - 1) / 2 * step - ox) / ax)
        origin = (cy * by + oy, cx * ax + ox)
    configs = max(1, config.frozen_phonons)
    per_pos = seconds_per_position(gpts, n_slices)  # chunking: fixed rate, reproducible
    rows = max(1, min(positions[0], int(chunk_seconds / max(per_pos * positions[1], 1e-9))))
    multislice = configs * positions[0] * positions[1] * seconds_per_position(gpts, n_slices, rate)
    build = configs * n_slices * gpts[0] * gpts[1] * 2e-7  # potential slices
    finish = ny * nx * det.shape[0] * det.shape[1] * 6e-8 + 3.0  # resample, noise, write
    if method == "periodic":
        finish += ny * nx * (2 * pattern / min(sim_pix)) ** 2 * (positions[0] + positions[1]) * 2e-9
    return Plan(method=method, cell_A=(ax, by, cz), repeats_z=crystal.repeats_z,
                thickness_A=float(thick), is_2d=crystal.is_2d, lateral=lateral,
                extent_A=extent, gpts=gpts, slice_thickness_A=slice_t, n_slices=n_slices,
                positions=positions, margin_px=margin, configs=configs, rows_per_chunk=rows,
                needed_mrad=needed, pattern_mrad=pattern, cutoff_mrad=cutoff, sim_pixel_mrad=sim_pix,
                probe_radius_A=radius, scan_origin_A=origin,
                estimate_s=float(multislice + build + finish))


def estimate_seconds(config: SimulationConfig, rate: float | None = None) -> float:
    """Estimated time (s, one core) of :func:`.engine.simulate`; ``rate`` from
    :func:`.engine.measure_throughput` on another machine (default: this project's VM)."""
    return make_plan(config, rate=rate).estimate_s


__all__ = ["Defect", "Plan", "SimulationConfig", "StructureSpec", "estimate_seconds", "make_plan",
           "probe_radius_A"]
