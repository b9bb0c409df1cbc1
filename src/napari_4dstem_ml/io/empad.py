"""EMPAD reader: ``.raw`` frames plus the acquisition ``.xml`` written beside them.

Raw layout: little-endian float32 frames of 128 columns x 130 rows, frame ``i = iy * nx + ix``
(x = columns = the fast scan axis); the last two rows of each frame are metadata and are
dropped. The data come back as a read-only ``np.memmap`` of shape ``(ny, nx, 130, 128)``
sliced to ``[..., :128, :]`` (a view: nothing is read until values are used).

Scan shape, in order of precedence: the ``scan_shape=(ny, nx)`` option; the XML (the one with
the raw file's stem, else any ``.xml`` in the folder whose ``raw_file@filename`` names the raw
file); the file name pattern ``scan_x{NX}_y{NY}.raw``. XML fields read:

- ``raw_file@filename``; ``pix_x``/``pix_y`` (older software); ``scan_parameters`` blocks
  (v1.2+) with ``mode="search"|"acquire"`` holding ``scan_resolution_x|y`` (the block whose
  size matches the file is used, the acquire block first); ``type``/``count`` or
  ``scan_parameters/series_count`` for a frame series (needs ``scan_shape``);
- ``iom_measurements/high_voltage`` (V, gives the beam energy in eV),
  ``iom_measurements/nominal_camera_length`` (m), ``iom_measurements/full_scan_field_of_view/x|y``
  (m; scan step in Å = field of view / number of positions x 1e10; older files:
  ``iom_measurements/optics/get_full_scan_field_of_view`` as ``"(x, y)"``),
  ``iom_measurements/scan_rotation`` (degrees, kept in metadata).

The XML gives no detector angle per pixel: ``detector_pixel`` stays unknown.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dataset import Calibration, Dataset4D
from .errors import ReaderError, ScanShapeRequired
from .shapes import normalize_scan_shape

NAME = "empad"
EXTENSIONS = (".raw",)
FRAME_COLS = 128
FRAME_ROWS_RAW = 130
FRAME_ROWS = 128
FRAME_BYTES = FRAME_COLS * FRAME_ROWS_RAW * 4
_NAME_PATTERN = re.compile(r"scan_x(\d+)_y(\d+)", re.IGNORECASE)
_MAX_XML_BYTES = 4 * 2**20


@dataclass(frozen=True)
class EmpadXml:
    """What an EMPAD XML says (lengths in m, voltage in V); scan shapes are ``(ny, nx)``."""

    path: Path
    raw_filename: str | None
    scan_shapes: tuple[tuple[str, tuple[int, int]], ...] = ()  # (mode, (ny, nx)), preferred first
    series_count: int | None = None
    high_voltage_v: float | None = None
    camera_length_m: float | None = None
    fov_m: tuple[float, float] | None = None  # (x, y)
    scan_rotation_deg: float | None = None
    extra: dict = field(default_factory=dict)


def _text(el: ET.Element | None) -> str | None:
    return None if el is None or el.text is None else el.text.strip()


def _float(el: ET.Element | None) -> float | None:
    t = _text(el)
    try:
        return None if t is None else float(t)
    except ValueError:
        return None


def _int(el: ET.Element | None) -> int | None:
    v = _float(el)
    return None if v is None or v < 1 or v != int(v) else int(v)


def parse_xml(path: str | Path) -> EmpadXml:
    """Parse an EMPAD acquisition XML; ``ReaderError`` if it is not readable XML."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReaderError(f"{path}: cannot read the EMPAD XML ({exc.strerror or exc})", path) from exc
    if size > _MAX_XML_BYTES:
        raise ReaderError(f"{path}: {size} bytes is far larger than an EMPAD acquisition XML "
                          f"(at most {_MAX_XML_BYTES} bytes are read)", path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError) as exc:
        raise ReaderError(f"{path}: unreadable EMPAD XML ({exc})", path) from exc
    raw_el = root.find(".//raw_file")
    raw_name = raw_el.get("filename") if raw_el is not None else None
    if raw_name:
        raw_name = raw_name.strip().replace("\\", "/").rsplit("/", 1)[-1]

    shapes: list[tuple[str, tuple[int, int]]] = []
    blocks = list(root.iter("scan_parameters"))
    series = None
    for mode in ("acquire", None, "search"):
        for b in blocks:
            m = (b.get("mode") or "").strip().lower()
            if (mode is None and m in ("acquire", "search")) or (mode is not None and m != mode):
                continue
            nx, ny = _int(b.find("scan_resolution_x")), _int(b.find("scan_resolution_y"))
            if nx and ny:
                shapes.append((m or "scan_parameters", (ny, nx)))
            series = series or _int(b.find("series_count"))
        if mode == "acquire":
            px, py = _int(root.find(".//pix_x")), _int(root.find(".//pix_y"))
            if px and py:
                shapes.append(("pix_x/pix_y", (py, px)))
    typ = (_text(root.find("type")) or "").lower()
    if typ == "series":
        series = series or _int(root.find("count"))

    iom = root.find(".//iom_measurements")
    hv = cl = rot = None
    fov = None
    if iom is not None:
        hv = _float(iom.find(".//high_voltage"))
        cl = _float(iom.find(".//nominal_camera_length"))
        rot = _float(iom.find(".//scan_rotation"))
        f = iom.find(".//full_scan_field_of_view")
        fx, fy = (_float(f.find("x")), _float(f.find("y"))) if f is not None else (None, None)
        if fx is None or fy is None:
            old = _text(iom.find(".//get_full_scan_field_of_view"))
            nums = re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", old or "")
            if len(nums) >= 2:
                fx, fy = float(nums[0]), float(nums[1])
        if fx and fy and fx > 0 and fy > 0:
            fov = (fx, fy)
    extra = {}
    for tag in ("software_version", "exposure_time"):
        t = _text(root.find(tag))
        if t:
            extra[tag] = t
    sizes = {}
    for b in blocks:
        s = _float(b.find("scan_size"))
        if s is not None:
            sizes[(b.get("mode") or "scan_parameters").strip().lower()] = s
    if sizes:
        extra["scan_size"] = sizes
    return EmpadXml(path, raw_name, tuple(shapes), series, hv, cl, fov, rot, extra)


def find_xml(raw_path: str | Path) -> Path | None:
    """The XML describing ``raw_path``: same stem, else one in the folder naming it."""
    raw_path = Path(raw_path)
    same = raw_path.with_suffix(".xml")
    if same.is_file():
        try:
            info = parse_xml(same)
            if info.raw_filename in (None, raw_path.name):
                return same
        except ReaderError:
            return same  # let the caller report the unreadable XML
    try:
        candidates = sorted(p for p in raw_path.parent.glob("*.xml") if p.is_file())
    except OSError:
        candidates = []
    needle = raw_path.name.encode()
    for p in candidates[:500]:
        try:
            if p.stat().st_size > _MAX_XML_BYTES or needle not in p.read_bytes():
                continue
            if parse_xml(p).raw_filename == raw_path.name:
                return p
        except (OSError, ReaderError):
            continue
    return same if same.is_file() else None


def sniff_xml(path: Path) -> bool:
    """Cheap check that an ``.xml`` is an EMPAD acquisition file (first 64 kB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return b"<raw_file" in head and (b"scan_parameters" in head or b"pix_x" in head
                                     or b"EMPAD" in head or b"empad" in head)


def scan_shape_from_name(path: str | Path) -> tuple[int, int] | None:
    """``(ny, nx)`` from a raw file name like ``scan_x256_y128.raw``, or ``None``."""
    m = _NAME_PATTERN.search(Path(path).name)
    return (int(m.group(2)), int(m.group(1))) if m else None


def sniff_raw(path: Path) -> bool:
    """A ``.raw`` whose size is a positive whole number of EMPAD frames (a ``stat`` only)."""
    try:
        n = path.stat().st_size
    except OSError:
        return False
    return n > 0 and n % FRAME_BYTES == 0


def _size_error(raw: Path, shape: tuple[int, int], actual: int, source: str) -> ReaderError:
    ny, nx = shape
    expected = ny * nx * FRAME_BYTES
    return ReaderError(
        f"{raw}: EMPAD file size does not match the scan shape {ny} x {nx} from {source}: "
        f"expected {expected} bytes ({ny * nx} frames of 128 x 130 float32), "
        f"got {actual} bytes ({actual / FRAME_BYTES:.6g} frames)",
        raw,
    )


def read(path: str | Path, scan_shape=None, **_ignored) -> Dataset4D:
    """Open an EMPAD ``.raw`` (or its ``.xml``) lazily as ``(scan_y, scan_x, 128, 128)`` float32."""
    path = Path(path)
    scan_shape = normalize_scan_shape(scan_shape, path)
    if path.suffix.lower() == ".xml":
        info = parse_xml(path)
        if not info.raw_filename:
            raise ReaderError(f"{path}: EMPAD XML without raw_file@filename", path)
        raw = path.parent / info.raw_filename
        if not raw.is_file():
            raise ReaderError(f"{path}: the raw file it names, {raw}, does not exist", path)
    else:
        raw = path
        xml = find_xml(raw)
        info = parse_xml(xml) if xml is not None else None
    try:
        actual = raw.stat().st_size
    except OSError as exc:
        raise ReaderError(f"{raw}: cannot read the file ({exc})", raw) from exc
    n_frames, rem = divmod(actual, FRAME_BYTES)

    source = "scan_shape option"
    if scan_shape is None and info is not None:
        cands = info.scan_shapes
        match = [c for c in cands if c[1][0] * c[1][1] * FRAME_BYTES == actual]
        if match:
            source, scan_shape = f"{info.path.name} ({match[0][0]})", match[0][1]
        elif cands:
            raise _size_error(raw, cands[0][1], actual, f"{info.path.name} ({cands[0][0]})")
        elif info.series_count is None:
            raise ReaderError(
                f"{info.path}: EMPAD XML without a scan shape (expected pix_x/pix_y or "
                "scan_parameters/scan_resolution_x|y)", info.path)
    if scan_shape is None and scan_shape_from_name(raw) is not None:
        scan_shape, source = scan_shape_from_name(raw), "the file name"
    if scan_shape is None:
        if rem:
            raise ReaderError(
                f"{raw}: EMPAD file size {actual} bytes is not a whole number of "
                f"{FRAME_BYTES}-byte frames (128 x 130 float32)", raw)
        raise ScanShapeRequired(
            f"{raw}: EMPAD file of {n_frames} frames; no XML or file name gives the scan shape, "
            "pass scan_shape=(ny, nx)", raw, n_frames)
    ny, nx = scan_shape
    if ny * nx * FRAME_BYTES != actual:
        raise _size_error(raw, scan_shape, actual, source)

    mm = np.memmap(raw, dtype="<f4", mode="r", shape=(ny, nx, FRAME_ROWS_RAW, FRAME_COLS))
    data = mm[:, :, :FRAME_ROWS, :]

    cal = Calibration()
    meta: dict = {"scan_shape_from": source, "raw_file": str(raw)}
    if info is not None:
        meta["xml_file"] = str(info.path)
        meta.update(info.extra)
        if info.scan_rotation_deg is not None:
            meta["scan_rotation_deg"] = info.scan_rotation_deg
        cal = calibration_from_xml(info, (ny, nx))
    return Dataset4D(data, calibration=cal, source=raw, reader=NAME, metadata=meta)


def calibration_from_xml(info: EmpadXml, scan_shape: tuple[int, int]) -> Calibration:
    """The calibration an EMPAD XML states for a ``(ny, nx)`` scan: beam energy, camera length
    and the scan step (field of view / positions, in Å); the XML gives no detector mrad/px."""
    ny, nx = scan_shape
    changes: dict = {}
    if info.high_voltage_v and info.high_voltage_v > 0:
        changes["energy_ev"] = float(info.high_voltage_v)
    if info.camera_length_m and info.camera_length_m > 0:
        changes["camera_length_m"] = float(info.camera_length_m)
    if info.fov_m is not None:
        fx, fy = info.fov_m
        changes["scan_step"] = (fy / ny * 1e10, fx / nx * 1e10)
        changes["scan_units"] = "A"
    return Calibration().with_(**changes)


__all__ = ["EXTENSIONS", "NAME", "EmpadXml", "calibration_from_xml", "find_xml", "parse_xml",
           "read", "scan_shape_from_name", "sniff_raw", "sniff_xml"]
