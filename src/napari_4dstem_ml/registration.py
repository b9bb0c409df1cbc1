"""Training labels: loading 2D images (e.g. a ptychographic phase) and registering them
onto the scan grid of a 4D-STEM data set.

Geometry convention (all coordinates are array indices ``(y, x)``, y pointing down as
displayed):

* ``scale`` = label pixel / scan step: the size of one label pixel in scan steps
  (a 0.05 Å label on a 0.2 Å scan has scale 0.25).
* ``rotation_deg``: the label, drawn on the scan grid, appears rotated by this angle
  **counter-clockwise as displayed** (y down), in degrees.
* ``shift_yx``: where the label's centre ((H−1)/2, (W−1)/2) lands, relative to the scan
  grid's centre ((Ny−1)/2, (Nx−1)/2), in **scan steps**.

So a label pixel ``l`` lands at scan position ``s = c_s + shift + scale·R(θ)·(l − c_l)``,
with ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]`` acting on (y, x); resampling uses the
inverse ``l = c_l + R(−θ)·(s − c_s − shift)/scale`` with ``scipy.ndimage.map_coordinates``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .io.errors import AmbiguousDatasetError, ReaderError

__all__ = [
    "LABEL_EXTENSIONS",
    "Label",
    "LabelError",
    "Registration",
    "RegistrationParams",
    "label_coordinates",
    "load_label",
    "register_label",
    "valid_region",
]

LABEL_EXTENSIONS = (
    ".tif", ".tiff", ".npy", ".npz", ".h5", ".hdf5", ".hdf", ".emd", ".mat", ".png", ".jpg", ".jpeg", ".bmp",
)

#: plausible pixel sizes (Å) for an atomic-resolution label; a file's resolution tags
#: outside this window (e.g. the 72 dpi of image editors) are ignored
_PLAUSIBLE_PX_A = (1e-3, 1e4)

_UNIT_TO_A = {
    "a": 1.0, "å": 1.0, "\u212b": 1.0, "angstrom": 1.0, "angstroms": 1.0, "ang": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "nanometre": 10.0,
    "pm": 0.01, "picometer": 0.01, "picometre": 0.01,
    "um": 1e4, "µm": 1e4, "\u03bcm": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4,
    "mm": 1e7, "cm": 1e8, "m": 1e10, "meter": 1e10, "metre": 1e10,
}


class LabelError(ReaderError):
    """A label file that holds no usable 2D image (the message names the file)."""


#: a label image is read whole into memory: at most this many bytes (checked before reading)
MAX_LABEL_BYTES = 2 * 2**30


def _check_size(shape: Any, dtype: Any, path: Path, what: str) -> None:
    n = int(np.prod([int(v) for v in shape], dtype=object)) * np.dtype(dtype).itemsize
    if n > MAX_LABEL_BYTES:
        raise LabelError(f"{path}: {what} declares shape {tuple(int(v) for v in shape)} "
                         f"({n / 2**30:.1f} GiB); a label image is at most "
                         f"{MAX_LABEL_BYTES / 2**30:.0f} GiB", path)


# ============================================================================ loading
@dataclass(frozen=True)
class Label:
    """A 2D label image ``(y, x)`` float32, its pixel size in Å (``None`` if unknown), the
    file it came from and a note on how the image was obtained (dataset, phase of …)."""

    image: np.ndarray = field(repr=False)
    pixel_size_A: float | None
    source: Path | None = None
    description: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def _unit_factor(unit: Any) -> float | None:
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    u = str(np.asarray(unit).ravel()[0] if np.ndim(unit) else unit).strip().lower()
    return _UNIT_TO_A.get(u)


def _plausible(px: float | None) -> float | None:
    if px is None or not math.isfinite(px):
        return None
    return px if _PLAUSIBLE_PX_A[0] <= px <= _PLAUSIBLE_PX_A[1] else None


def _to_image(arr: np.ndarray, path: Path, what: str) -> tuple[np.ndarray, str]:
    """Squeeze to 2D; complex → phase (angle); RGB(A) → luminance. Returns (image, note)."""
    a = np.asarray(arr)
    note = ""
    if a.dtype.names and {"real", "imag"} <= set(a.dtype.names):  # HDF5/MATLAB complex
        a = a["real"] + 1j * a["imag"]
    a = np.squeeze(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and not np.iscomplexobj(a):
        rgb = a[..., :3].astype(np.float64)
        a = rgb @ np.array([0.2126, 0.7152, 0.0722])
        note = "luminance of an RGB image"
    if a.ndim != 2:
        raise LabelError(
            f"{path}: {what} has shape {np.shape(arr)}; a label must be a 2D image (y, x)", path
        )
    if np.iscomplexobj(a):
        a = np.angle(a)
        note = "phase (angle, rad) of a complex array"
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise LabelError(f"{path}: {what} is not numeric (dtype {a.dtype})", path)
    return np.ascontiguousarray(a, dtype=np.float32), note


def _tiff_pixel_size(tif: Any) -> float | None:
    page = tif.pages[0]
    tags = page.tags
    xres = tags.get("XResolution")
    if xres is None:
        return None
    v = xres.value
    ppu = float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v)
    if ppu <= 0:
        return None
    ij = tif.imagej_metadata or {}
    factor = _unit_factor(ij.get("unit")) if ij else None
    if factor is None:
        unit_tag = tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else 2
        factor = {2: 2.54e8, 3: 1e8}.get(unit)  # inch, centimetre in Å
    if factor is None:
        return None
    return _plausible(factor / ppu)


def _load_tiff(path: Path) -> Label:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.series) == 0:
            raise LabelError(f"{path}: TIFF holds no image", path)
        series = tif.series[0]
        _check_size(series.shape, series.dtype, path, "the first TIFF series")
        arr = series.asarray()
        px = _tiff_pixel_size(tif)
    img, note = _to_image(arr, path, "the first TIFF series")
    return Label(img, px, path, note)


def _load_png(path: Path) -> Label:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise LabelError(f"{path}: reading PNG labels needs Pillow (pip install pillow)", path) from e
    with Image.open(path) as im:
        dpi = im.info.get("dpi")
        arr = np.asarray(im)
    px = None
    if dpi and float(dpi[0]) > 0:
        px = _plausible(2.54e8 / float(dpi[0]))
    img, note = _to_image(arr, path, "the PNG image")
    return Label(img, px, path, note)


def _scalar(v: Any) -> float | None:
    try:
        a = np.asarray(v, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    return float(a[0]) if a.size >= 1 and math.isfinite(a[0]) else None


def _px_from_attrs(attrs: Any) -> float | None:
    """Pixel size in Å from ``pixel_size_A`` or ``pixel_size`` (+ ``units``/``unit``)."""
    if "pixel_size_A" in attrs:
        return _scalar(attrs["pixel_size_A"])
    if "pixel_size" in attrs:
        v = _scalar(attrs["pixel_size"])
        if v is None:
            return None
        for key in ("units", "unit", "pixel_size_units", "pixel_size_unit"):
            if key in attrs:
                f = _unit_factor(attrs[key])
                return None if f is None else v * f
        return v  # no unit given: Å, the package's unit
    return None


def _pick(candidates: list[str], dataset: str | None, path: Path, prefer: tuple[str, ...] = ()) -> str:
    if dataset is not None:
        key = dataset.strip("/")
        for c in candidates:
            if c.strip("/") == key:
                return c
        raise LabelError(
            f"{path}: no 2D image named {dataset!r}; candidates: {', '.join(candidates) or 'none'}",
            path,
        )
    if not candidates:
        raise LabelError(f"{path}: holds no 2D image (looked for 2D real or complex arrays)", path)
    if len(candidates) == 1:
        return candidates[0]
    for p in prefer:
        for c in candidates:
            if c.strip("/").split("/")[-1] == p:
                return c
    raise AmbiguousDatasetError(
        f"{path}: several 2D images ({', '.join(candidates)}); choose one with dataset=",
        path,
        candidates,
    )


def _load_npy(path: Path) -> Label:
    from .io.numpy_files import npy_header

    shape, _fortran, dtype, _offset = npy_header(path)  # magic, objects, truncation
    _check_size(shape, dtype, path, "the array")
    arr = np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    img, note = _to_image(arr, path, "the array")
    return Label(img, None, path, note)


def _load_npz(path: Path, dataset: str | None) -> Label:
    from .io.numpy_files import npz_members

    for m in npz_members(path):
        if m.dtype.hasobject:
            raise LabelError(f"{path}: member {m.key!r} holds Python objects (pickled data); "
                             "such arrays are never loaded, as loading them could run code", path)
        _check_size(m.shape, m.dtype, path, f"member {m.key!r}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    cands = [k for k, v in arrays.items() if np.squeeze(v).ndim in (2, 3) and v.size > 4]
    cands = [k for k in cands if np.squeeze(arrays[k]).ndim == 2 or np.shape(arrays[k])[-1] in (3, 4)]
    key = _pick(cands, dataset, path, prefer=("image", "label", "object"))
    img, note = _to_image(arrays[key], path, f"array {key!r}")
    px = _px_from_attrs({k: v for k, v in arrays.items() if np.size(v) == 1})
    return Label(img, px, path, f"array {key!r}" + (f"; {note}" if note else ""))


def _h5_candidates(f: Any) -> list[str]:
    import h5py

    out: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if name.startswith("#refs#") or name.startswith("#subsystem#"):
            return
        if isinstance(obj, h5py.Dataset):
            dt = obj.dtype
            numeric = dt.kind in "biufc" or (dt.names is not None and {"real", "imag"} <= set(dt.names))
            if numeric and len([n for n in obj.shape if n > 1]) == 2 and min(obj.shape) >= 1:
                out.append("/" + name)

    f.visititems(visit)
    return out


def _load_hdf5(path: Path, dataset: str | None, matlab: bool, allow_external: bool = False) -> Label:
    import h5py

    from .io.filters import ensure_filters
    from .io.hdf5 import check_links, require_local

    ensure_filters()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LabelError(f"{path}: cannot open as HDF5 ({e})", path) from e
    with f:
        cands = _h5_candidates(f)
        if dataset is not None:
            check_links(f, "/" + dataset.strip("/"), path, allow_external)
        key = _pick(cands, dataset, path, prefer=("object", "image", "label", "phase"))
        ds = f[key]
        require_local(ds, path, allow_external)
        _check_size(ds.shape, ds.dtype, path, f"dataset {key!r}")
        arr = ds[()]
        px = _px_from_attrs(ds.attrs)
        if px is None and ds.parent is not None:
            px = _px_from_attrs(ds.parent.attrs)
        if px is None and matlab:
            for name in ("/p/dx_spec", "/dx_spec", "/pixel_size_A", "/pixel_size"):
                if name in f and isinstance(f[name], h5py.Dataset):
                    v = _scalar(f[name][()])
                    if v is not None:
                        px = v * 1e10 if name.endswith("dx_spec") else v  # dx_spec is in metres
                        break
        if px is None and not matlab:
            px = _px_from_attrs(f.attrs)
    note = f"dataset {key!r}"
    if matlab:
        # MATLAB is column-major: a (rows, cols) variable is stored as (cols, rows)
        arr = np.asarray(arr).T
        note = f"MATLAB variable {key.strip('/')!r} (transposed back to rows × columns)"
    img, extra = _to_image(arr, path, f"dataset {key!r}")
    return Label(img, _plausible(px) if px is not None else None, path, note + (f"; {extra}" if extra else ""))


def _load_mat_v5(path: Path, dataset: str | None) -> Label:
    from scipy.io import loadmat

    try:
        d = loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises several types for non-MAT files
        raise LabelError(f"{path}: not a readable MATLAB file ({e})", path) from e
    arrays = {k: v for k, v in d.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    cands = [k for k, v in arrays.items() if v.dtype.kind in "biufc" and np.squeeze(v).ndim == 2]
    key = _pick(cands, dataset, path, prefer=("object", "image", "label", "phase"))
    px = None
    for name in ("pixel_size_A", "pixel_size"):
        if name in d:
            px = _scalar(d[name])
            break
    img, extra = _to_image(arrays[key], path, f"variable {key!r}")
    return Label(img, px, path, f"MATLAB variable {key!r}" + (f"; {extra}" if extra else ""))


def load_label(
    path: str | Path, *, pixel_size: float | None = None, dataset: str | None = None,
    allow_external: bool = False,
) -> Label:
    """Load a 2D label image from TIFF, ``.npy``/``.npz``, HDF5, PNG or MATLAB ``.mat``.

    ``pixel_size`` (Å) overrides what the file says. ``dataset`` picks the array in a
    container (HDF5 path, ``.npz`` key, MATLAB variable) holding several 2D images.
    Complex arrays (e.g. a PtychoShelves ``object``) give their phase (angle, rad).
    MATLAB v7.3 files (HDF5) are transposed back to MATLAB's row × column order; older
    ``.mat`` files are read with :func:`scipy.io.loadmat`. The pixel size is read from
    TIFF resolution tags / ImageJ ``unit``, HDF5 attributes ``pixel_size_A`` or
    ``pixel_size`` (+ ``units``), PtychoShelves ``p.dx_spec`` (m), or ``.npz`` scalars of
    the same names; values outside 0.001–10⁴ Å are treated as unknown.

    Hostile files: only regular files are read (no FIFOs or devices); sizes declared in
    headers are checked (at most :data:`MAX_LABEL_BYTES`) before reading; Python objects are
    never unpickled; HDF5 data in other files is refused unless ``allow_external``; any
    failure of a parsing library becomes a :class:`LabelError` naming the file.
    """
    from .io import check_regular_file

    p = Path(path)
    try:
        check_regular_file(p)
    except ReaderError as exc:
        raise LabelError(str(exc), p) from exc
    try:
        lab = _load_any(p, dataset, allow_external)
    except ReaderError:
        raise
    except (OSError, KeyError, IndexError, RuntimeError, EOFError, ValueError, MemoryError,
            SyntaxError, UnicodeDecodeError, zlib.error, struct.error) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise LabelError(f"{p}: cannot read the label ({reason})", p) from exc
    except Exception as exc:  # noqa: BLE001 - e.g. Pillow's DecompressionBombError
        if type(exc).__module__.split(".")[0] not in ("PIL", "tifffile", "h5py", "scipy"):
            raise
        raise LabelError(f"{p}: cannot read the label ({type(exc).__name__}: {exc})", p) from exc
    if not np.any(np.isfinite(lab.image)):
        raise LabelError(f"{p}: the label image has no finite values", p)
    if pixel_size is not None:
        px = float(pixel_size)
        if not (px > 0 and math.isfinite(px)):
            raise ValueError(f"pixel_size must be a positive number of Å, got {pixel_size!r}")
        lab = Label(lab.image, px, lab.source, lab.description)
    return lab


def _load_any(p: Path, dataset: str | None, allow_external: bool) -> Label:
    ext = p.suffix.lower()
    if ext in (".tif", ".tiff"):
        lab = _load_tiff(p)
    elif ext == ".npy":
        lab = _load_npy(p)
    elif ext == ".npz":
        lab = _load_npz(p, dataset)
    elif ext in (".h5", ".hdf5", ".hdf", ".emd"):
        lab = _load_hdf5(p, dataset, matlab=False, allow_external=allow_external)
    elif ext == ".mat":
        import h5py

        lab = (_load_hdf5(p, dataset, matlab=True, allow_external=allow_external)
               if h5py.is_hdf5(p) else _load_mat_v5(p, dataset))
    elif ext in (".png", ".jpg", ".jpeg", ".bmp"):
        lab = _load_png(p)
    else:
        raise LabelError(
            f"{p}: unsupported label format {ext!r}; expected one of {', '.join(LABEL_EXTENSIONS)}", p
        )
    return lab


# ============================================================================ geometry
@dataclass(frozen=True)
class RegistrationParams:
    """Label → scan-grid mapping (see the module docstring for the convention).

    ``scale`` label pixel / scan step; ``rotation_deg`` counter-clockwise as displayed;
    ``shift_yx`` label centre − scan-grid centre in scan steps; ``crop`` the label's valid
    region (y0, y1, x0, x1), half-open, in label pixels.
    """

    scale: float
    rotation_deg: float
    shift_yx: tuple[float, float]
    crop: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be positive, got {self.scale!r}")
        object.__setattr__(self, "shift_yx", tuple(float(v) for v in self.shift_yx))
        object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shift_yx"] = list(self.shift_yx)
        d["crop"] = list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegistrationParams:
        return cls(float(d["scale"]), float(d["rotation_deg"]), tuple(d["shift_yx"]), tuple(d["crop"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> RegistrationParams:
        return cls.from_dict(json.loads(s))


def label_coordinates(
    scan_shape: tuple[int, int],
    label_shape: tuple[int, int],
    scale: float,
    rotation_deg: float,
    shift_yx: tuple[float, float],
) -> np.ndarray:
    """Label pixel coordinates ``(2, Ny, Nx)`` (y, x) of every scan position."""
    ny, nx = scan_shape
    sy, sx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    return _coords(sy - (ny - 1) / 2 - shift_yx[0], sx - (nx - 1) / 2 - shift_yx[1],
                   label_shape, scale, rotation_deg)


def _coords(ty: np.ndarray, tx: np.ndarray, label_shape: tuple[int, int], scale: float,
            rotation_deg: float) -> np.ndarray:
    """l = c_l + R(−θ)·t/scale for offsets t (scan steps) from the label centre."""
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    ly = (c * ty + s * tx) / scale + (label_shape[0] - 1) / 2
    lx = (-s * ty + c * tx) / scale + (label_shape[1] - 1) / 2
    return np.stack([ly, lx])


def valid_region(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the label's valid pixels: finite, and not part of a constant padding
    (a region of exactly one value touching the border and covering ≥ 1 % of the image or
    a whole edge) — the zero/constant margins reconstructions are often padded with."""
    a = np.asarray(image)
    valid = np.isfinite(a)
    if not valid.any():
        return valid
    border = np.zeros(a.shape, bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    for v in np.unique(a[border & valid]):
        same = a == v
        lab, _ = ndimage.label(same)
        touching = np.unique(lab[border & same])
        for k in touching[touching > 0]:
            comp = lab == k
            size = int(comp.sum())
            full_edge = comp[0].all() or comp[-1].all() or comp[:, 0].all() or comp[:, -1].all()
            if size >= 0.01 * a.size or full_edge:
                valid &= ~comp
    return valid


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.nonzero(mask.any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _masked_highpass(img: np.ndarray, mask: np.ndarray, sigma_lo: float, sigma_hi: float) -> np.ndarray:
    """Band-pass (Gaussian σ_lo minus σ_hi) using normalised convolution inside ``mask``,
    then standardised over the mask; 0 outside."""
    m = mask.astype(np.float64)
    x = np.where(mask, img, 0.0)

    def nconv(s: float) -> np.ndarray:
        if s <= 0:
            return x
        num = ndimage.gaussian_filter(x, s, mode="constant")
        den = ndimage.gaussian_filter(m, s, mode="constant")
        return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)

    out = nconv(sigma_lo) - nconv(sigma_hi)
    out = np.where(mask, out, 0.0)
    n = m.sum()
    if n > 1:
        mu = out[mask].mean()
        sd = out[mask].std()
        out = np.where(mask, (out - mu) / (sd if sd > 0 else 1.0), 0.0)
    return out


# ============================================================================ registration
#: coverage (fraction of the scan) a fitted shift may give up against the centred label before
#: the registration warns that it may have found a crystal's symmetric copy
COVERAGE_LOSS = 0.05


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_label`.

    ``image_on_scan_grid`` (Ny, Nx) float32: the label resampled at the scan positions
    (positions outside the label's valid field hold the mean of the covered ones);
    ``coverage_mask`` (Ny, Nx) bool: positions inside the valid field; ``score``: Pearson r
    between ``image_on_scan_grid`` and the reference over the covered positions (signed:
    negative for inverted contrast, e.g. ADF against a phase); ``fit_score``: |r| of the
    band-passed images that the estimate maximised; ``sign`` ±1; ``estimated`` names the
    parameters that were fitted (the others were given); ``candidates`` the best distinct
    (rotation_deg, shift_yx, |NCC|) of the rotation search — a runner-up close to the best
    means an ambiguous fit (e.g. a perfect crystal's symmetry); ``warnings`` what the user
    should check, in words (see :func:`register_label`).
    """

    params: RegistrationParams
    image_on_scan_grid: np.ndarray = field(repr=False)
    coverage_mask: np.ndarray = field(repr=False)
    score: float
    fit_score: float
    sign: int
    estimated: tuple[str, ...] = ()
    candidates: tuple[tuple[float, tuple[float, float], float], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def coverage(self) -> float:
        """Fraction of scan positions covered by the label."""
        return float(self.coverage_mask.mean())


def _scan_step(scan_step_A: Any) -> float | None:
    if scan_step_A is None:
        return None
    v = np.atleast_1d(np.asarray(scan_step_A, dtype=np.float64)).ravel()
    if v.size == 2 and abs(v[0] - v[1]) > 1e-3 * max(v):
        raise ValueError(f"non-square scan steps {tuple(v)} Å are not supported by register_label")
    s = float(v[0])
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"scan_step_A must be positive, got {scan_step_A!r}")
    return s


class _Problem:
    """Pre-processed label and reference for the estimation."""

    def __init__(self, label: np.ndarray, valid: np.ndarray, reference: np.ndarray,
                 scale: float, smooth: float, tie_tolerance: float = 0.0) -> None:
        self.tie_tolerance = float(tie_tolerance)
        self.shape_l = label.shape
        self.scale = scale
        filled = np.where(valid, label, float(label[valid].mean()))
        sig_l = smooth / scale
        self.label_lp = ndimage.gaussian_filter(filled, sig_l) if sig_l > 0.3 else filled
        self.valid_f = valid.astype(np.float32)
        self.ref_shape = reference.shape
        self.sigma_hi = max(4.0, min(reference.shape) / 6)
        self.smooth = smooth
        ones = np.ones(reference.shape, bool)
        self.ref_hp = _masked_highpass(reference, ones, smooth, self.sigma_hi)

    def sample(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals = ndimage.map_coordinates(self.label_lp, coords, order=1, mode="nearest")
        cov = ndimage.map_coordinates(self.valid_f, coords, order=1, cval=0.0) > 0.99
        return vals, cov

    def objective(self, scale: float, rot: float, shift: tuple[float, float]) -> float:
        """Signed r of the band-passed images over the covered positions (0 if < 25 % covered)."""
        coords = label_coordinates(self.ref_shape, self.shape_l, scale, rot, shift)
        vals, cov = self.sample(coords)
        if cov.mean() < 0.25:
            return 0.0
        hp = _masked_highpass(vals, cov, 0.0, self.sigma_hi)
        r = self.ref_hp[cov]
        rr = r - r.mean()
        hv = hp[cov]
        den = math.sqrt(float(np.sum(rr * rr)) * float(np.sum(hv * hv)))
        return 0.0 if den == 0 else float(np.sum(rr * hv) / den)

    # -- coarse search: masked NCC over all translations for one rotation -------------
    def prepare_ncc(self) -> None:
        ny, nx = self.ref_shape
        half = 0.5 * self.scale * math.hypot(*self.shape_l)
        self.t_size = int(math.ceil(2 * half)) + 3
        t = self.t_size
        self.pad = (sfft.next_fast_len(ny + t - 1, real=True),
                    sfft.next_fast_len(nx + t - 1, real=True))
        f = self.ref_hp
        self.F_m, self.F_f, self.F_ff = sfft.rfft2(np.stack([np.ones_like(f), f, f * f]), self.pad)
        c = (t - 1) / 2
        self.ty, self.tx = np.mgrid[0:t, 0:t].astype(np.float64) - c

    def ncc_search(self, rot: float) -> tuple[float, tuple[float, float]]:
        """Best signed NCC over translations at rotation ``rot`` and its shift (scan steps)."""
        coords = _coords(self.ty, self.tx, self.shape_l, self.scale, rot)
        vals, cov = self.sample(coords)
        if cov.sum() < 16:
            return 0.0, (0.0, 0.0)
        g = _masked_highpass(vals, cov, 0.0, self.sigma_hi)
        m = cov.astype(np.float64)
        G_m, G_g, G_gg = np.conj(sfft.rfft2(np.stack([m, g, g * g]), self.pad))
        prods = np.stack([self.F_m * G_m, self.F_f * G_m, self.F_m * G_g,
                          self.F_ff * G_m, self.F_m * G_gg, self.F_f * G_g])
        n, sf, sg, sff, sgg, sfg = sfft.irfft2(prods, self.pad)
        n = np.rint(n)
        min_overlap = 0.5 * min(float(np.prod(self.ref_shape)), float(m.sum()))
        ok = n >= max(min_overlap, 16)
        nn = np.where(ok, n, 1.0)
        vf = sff - sf * sf / nn
        vg = sgg - sg * sg / nn
        den = np.sqrt(np.maximum(vf, 0) * np.maximum(vg, 0))
        good = ok & (den > 1e-6 * max(float(den.max()), 1e-300))
        ncc = np.where(good, (sfg - sf * sg / nn) / np.where(good, den, 1.0), 0.0)
        # Ties (a crystal matches itself after a lattice translation): among translations
        # within ``tie_tolerance`` of the best |NCC|, take the one nearest the centred position.
        a = np.abs(ncc)
        py, px = self.pad
        ny, nx = self.ref_shape
        c_t = (self.t_size - 1) / 2
        iys, ixs = np.nonzero(a >= (1.0 - self.tie_tolerance) * float(a.max()))
        uys = np.where(iys >= ny, iys - py, iys) + c_t - (ny - 1) / 2
        uxs = np.where(ixs >= nx, ixs - px, ixs) + c_t - (nx - 1) / 2
        k = int(np.argmin(np.hypot(uys, uxs) - 1e-9 * a[iys, ixs]))
        idx = (int(iys[k]), int(ixs[k]))
        val = float(ncc[idx])
        # sub-pixel peak by a parabola along each axis
        iy, ix = idx
        a0 = abs(val)
        oy = _parabola(abs(ncc[(iy - 1) % py, ix]), a0, abs(ncc[(iy + 1) % py, ix]))
        ox = _parabola(abs(ncc[iy, (ix - 1) % px]), a0, abs(ncc[iy, (ix + 1) % px]))
        uy = iy - py if iy >= ny else iy
        ux = ix - px if ix >= nx else ix
        shift = (uy + oy + c_t - (ny - 1) / 2, ux + ox + c_t - (nx - 1) / 2)
        return val, shift


def _parabola(vm: float, v0: float, vp: float) -> float:
    den = vm - 2 * v0 + vp
    return 0.0 if den >= 0 else float(np.clip(0.5 * (vm - vp) / den, -0.5, 0.5))


def register_label(
    label_image: Any,
    label_pixel_A: float | None,
    reference_image: Any,
    scan_step_A: float | tuple[float, float] | None,
    *,
    rotation_deg: float | None = None,
    scale: float | None = None,
    shift: tuple[float, float] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    search_rotation: tuple[float, float] = (-180.0, 180.0),
    rotation_step: float | None = None,
    refine_scale: bool = False,
    smooth: float = 1.0,
    order: int = 3,
    tie_tolerance: float = 0.03,
) -> Registration:
    """Map a label image onto the scan grid of ``reference_image`` (Ny, Nx).

    ``reference_image`` is a virtual image of the same field (bright field, ADF, iCoM…);
    its contrast may be inverted relative to the label (the fit maximises |r| and reports
    the sign). ``scale`` defaults to ``label_pixel_A / scan_step_A``; ``refine_scale``
    lets the fit adjust it (±10 %). ``rotation_deg`` and ``shift`` (scan steps) are
    estimated unless given: a coarse search over ``search_rotation`` (degrees, step
    ``rotation_step``, default ≈ 1 scan step of arc at the field's edge) by masked
    normalised cross-correlation of band-passed images over all translations, then a
    Nelder–Mead refinement of the free parameters. Both images are smoothed by ``smooth``
    scan steps for the estimate only. ``crop`` (y0, y1, x0, x1) restricts the label's valid
    region (default: all but NaN and constant padding, see :func:`valid_region`). The output
    image is resampled with spline ``order`` (1 or 3). A crystal matches itself after a
    lattice translation or a symmetry rotation: among fits within ``tie_tolerance`` (relative)
    of the best |NCC|, the smallest rotation and then the smallest shift from the centred
    position wins (reconstructions are made from the same scan, so they are nearly aligned).
    """
    lab = np.asarray(label_image, dtype=np.float64)
    ref = np.asarray(reference_image, dtype=np.float64)
    if lab.ndim != 2 or ref.ndim != 2:
        raise ValueError(
            f"label and reference must be 2D images, got shapes {lab.shape} and {ref.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference_image contains NaN or infinite values")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order!r}")
    step = _scan_step(scan_step_A)
    estimated: list[str] = []
    if scale is None:
        if label_pixel_A is None or step is None:
            raise ValueError(
                "register_label needs scale=, or both label_pixel_A and scan_step_A (Å) "
                "to compute it (label pixel / scan step)"
            )
        scale = float(label_pixel_A) / step
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive, got {scale!r}")

    valid = valid_region(lab)
    if crop is not None:
        y0, y1, x0, x1 = (int(v) for v in crop)
        box = np.zeros_like(valid)
        box[max(y0, 0) : y1, max(x0, 0) : x1] = True
        valid &= box
    if valid.sum() < 16:
        raise ValueError("the label has (almost) no valid pixels after removing padding/crop")
    crop_box = _bbox(valid)

    if not 0.0 <= tie_tolerance < 1.0:
        raise ValueError(f"tie_tolerance must be in [0, 1), got {tie_tolerance!r}")
    prob = _Problem(lab, valid, ref, scale, smooth, tie_tolerance)
    candidates: list[tuple[float, tuple[float, float], float]] = []
    rot = rotation_deg
    sh = None if shift is None else (float(shift[0]), float(shift[1]))

    if rot is None or sh is None:
        if rotation_step is None:
            r_edge = 0.5 * math.hypot(*ref.shape)
            rotation_step = float(np.clip(math.degrees(1.0 / r_edge), 0.1, 2.0))
        lo, hi = (float(v) for v in search_rotation)
        if rot is not None:
            angles = np.array([float(rot)])
        else:
            n_ang = max(1, int(math.ceil((hi - lo) / rotation_step)))
            angles = lo + (np.arange(n_ang) + 0.5) * (hi - lo) / n_ang
        results = []
        if sh is None:
            prob.prepare_ncc()
            for a in angles:
                v, s = prob.ncc_search(float(a))
                results.append((float(a), s, v))
        else:
            for a in angles:
                results.append((float(a), sh, prob.objective(scale, float(a), sh)))
        results.sort(key=lambda t: -abs(t[2]))
        # symmetric fields (crystals) fit about as well at several rotations: among those
        # within ``tie_tolerance`` of the best, prefer the smallest rotation, then shift
        top = (1.0 - tie_tolerance) * abs(results[0][2])
        tied = [t for t in results if abs(t[2]) >= top]
        first = min(tied, key=lambda t: (round(abs(t[0]) / max(rotation_step, 1e-9)), math.hypot(*t[1])))
        results.remove(first)
        results.insert(0, first)
        for a, s, v in results:
            if all(abs(((a - c[0] + 180) % 360) - 180) > 3 * rotation_step for c in candidates):
                candidates.append((a, (float(s[0]), float(s[1])), abs(v)))
            if len(candidates) == 3:
                break
        best = candidates[0]
        if rot is None:
            estimated.append("rotation_deg")
        if sh is None:
            estimated.append("shift")
        rot0 = best[0] if rot is None else float(rot)
        sh0 = best[1] if sh is None else sh
    else:
        rot0, sh0 = float(rot), sh

    # ---- refinement of the free parameters (Nelder–Mead on -|r|) ----
    free = []
    if rotation_deg is None:
        free.append("rot")
    if shift is None:
        free += ["dy", "dx"]
    if refine_scale:
        free.append("lnscale")
        estimated.append("scale")
    x0 = {"rot": rot0, "dy": sh0[0], "dx": sh0[1], "lnscale": 0.0}

    def unpack(x: np.ndarray) -> tuple[float, float, tuple[float, float]]:
        d = dict(x0)
        d.update(zip(free, x))
        sc = scale * math.exp(float(np.clip(d["lnscale"], -0.1, 0.1)))
        return sc, d["rot"], (d["dy"], d["dx"])

    if free:
        from scipy import optimize

        start = np.array([x0[k] for k in free])
        steps = {"rot": (rotation_step or 1.0) / 2, "dy": 0.5, "dx": 0.5, "lnscale": 0.02}
        simplex = [start] + [start + np.eye(len(free))[i] * steps[k] for i, k in enumerate(free)]
        res = optimize.minimize(
            lambda x: -abs(prob.objective(*unpack(x))),
            start,
            method="Nelder-Mead",
            options={"initial_simplex": np.array(simplex), "xatol": 1e-3, "fatol": 1e-6,
                     "maxiter": 400 * len(free)},
        )
        sc_f, rot_f, sh_f = unpack(res.x)
    else:
        sc_f, rot_f, sh_f = scale, rot0, sh0
    fit_r = prob.objective(sc_f, rot_f, sh_f)

    rot_f = ((rot_f + 180.0) % 360.0) - 180.0
    params = RegistrationParams(float(sc_f), float(rot_f), sh_f, crop_box)
    coords = label_coordinates(ref.shape, lab.shape, sc_f, rot_f, sh_f)
    filled = np.where(valid, lab, float(lab[valid].mean()))
    img = ndimage.map_coordinates(filled, coords, order=order, mode="nearest")
    cov = ndimage.map_coordinates(valid.astype(np.float32), coords, order=1, cval=0.0) > 0.999
    if cov.any():
        img = np.where(cov, img, float(img[cov].mean()))
        a = img[cov] - img[cov].mean()
        b = ref[cov] - ref[cov].mean()
        den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
        score = float(np.sum(a * b) / den) if den > 0 else math.nan
    else:
        score = math.nan
    warnings = []
    if "shift" in estimated:
        # a reconstruction of the same scan sits about centred on it: a fit that gives up
        # coverage the centred label would have is likely a crystal's (pseudo-)symmetric copy
        centred = label_coordinates(ref.shape, lab.shape, sc_f, rot_f, (0.0, 0.0))
        cov_c = float((ndimage.map_coordinates(valid.astype(np.float32), centred, order=1,
                                               cval=0.0) > 0.999).mean())
        if cov_c - float(cov.mean()) > COVERAGE_LOSS:
            warnings.append(
                f"the label was placed {sh_f[0]:+.1f}, {sh_f[1]:+.1f} scan steps from the scan's "
                f"centre, where it covers {100 * cov.mean():.0f} % of the scan; centred it would "
                f"cover {100 * cov_c:.0f} %. A crystal matches itself after a translation, so "
                "this may be a symmetric copy: check the registered label against the data (a "
                "label already on the scan grid trains with --no-register)")
    return Registration(
        params=params,
        image_on_scan_grid=img.astype(np.float32),
        coverage_mask=cov,
        score=score,
        fit_score=abs(fit_r),
        sign=1 if fit_r >= 0 else -1,
        estimated=tuple(estimated),
        candidates=tuple(candidates),
        warnings=tuple(warnings),
    )
