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
- calibrations under ``iom_measurements``, in the two header generations seen in the field
  (acquisition software 1.2.x uses nested tags, 0.5x flat dotted tags named after the
  microscope-interface calls): beam energy ``high_voltage`` | ``source.get_voltage`` (V);
  camera length ``nominal_camera_length`` | ``optics.get_cameralength`` (m); scan rotation
  ``scan_rotation`` | ``column.get_scanrotation`` (degrees); the full scan field of view,
  ``full_scan_field_of_view/x|y`` (+ ``scale_factor``) | ``optics.get_full_scan_field_of_view``
  ``[x, y]`` (m); the detector's angle per pixel ``calibrated_diffraction_angle`` (rad, 0.5x).

Scan step: with a ``scale_factor`` (1.2.x) the stored field of view is the scan generator's
field times ``scale_factor`` and belongs to the *larger* scan dimension, so pixels are square:
step = fov / scale_factor / max(ny, nx) (RosettaSciIO reads it the same way). Without one
(0.5x), each axis is its own field of view over its own number of positions. Every
calibration carries its source (``Calibration.sources``). The 0.5x ``calibrated_pixelsize``
is kept in ``metadata["header_notes"]``: RosettaSciIO reads it as nm⁻¹, which disagrees with
``calibrated_diffraction_angle`` by about 19 % on real headers; the angle is used.
"""

from __future__ import annotations

import math
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
    """What an EMPAD XML says (lengths in m, voltage in V, angles in rad); scan shapes are
    ``(ny, nx)``. ``tags`` names, per value, the XML tag it was read from."""

    path: Path
    raw_filename: str | None
    scan_shapes: tuple[tuple[str, tuple[int, int]], ...] = ()  # (mode, (ny, nx)), preferred first
    series_count: int | None = None
    high_voltage_v: float | None = None
    camera_length_m: float | None = None
    fov_m: tuple[float, float] | None = None  # (x, y)
    fov_scale_factor: float | None = None
    scan_rotation_deg: float | None = None
    detector_rad_per_px: float | None = None
    tags: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _text(el: ET.Element | None) -> str | None:
    return None if el is None or el.text is None else el.text.strip()


def _float(el: ET.Element | None) -> float | None:
    t = _text(el)
    try:
        v = None if t is None else float(t)
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def _int(el: ET.Element | None) -> int | None:
    v = _float(el)
    return None if v is None or v < 1 or v != int(v) else int(v)


def _numbers(text: str | None) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text or "")]


def _tag(root: ET.Element, *names: str) -> tuple[ET.Element | None, str | None]:
    """The first element under ``root`` whose tag is one of ``names`` or ends with
    ``.name`` (0.5x headers use flat dotted tags such as ``source.get_voltage``), with the
    tag's path below ``root`` for provenance."""
    for name in names:
        for parent in root.iter():
            for el in parent:
                if el.tag == name or el.tag.endswith("." + name):
                    path = el.tag if parent is root else f"{parent.tag}/{el.tag}"
                    return el, path
    return None, None


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

    values: dict = {}
    tags: dict = {}
    extra: dict = {}
    iom = root.find(".//iom_measurements")
    if iom is not None:
        for key, names in (("high_voltage_v", ("high_voltage", "get_voltage")),
                           ("camera_length_m", ("nominal_camera_length", "get_cameralength")),
                           ("scan_rotation_deg", ("scan_rotation", "get_scanrotation")),
                           ("detector_rad_per_px", ("calibrated_diffraction_angle",))):
            el, where = _tag(iom, *names)
            v = _float(el)
            if v is not None:
                values[key], tags[key] = v, f"iom_measurements/{where}"
        fov_el, where = _tag(iom, "full_scan_field_of_view")
        if fov_el is not None and len(fov_el):  # 1.2.x: nested x, y, scale_factor
            fx, fy = _float(fov_el.find("x")), _float(fov_el.find("y"))
            sf = _float(fov_el.find("scale_factor"))
            if fx and fy and fx > 0 and fy > 0:
                values["fov_m"], tags["fov_m"] = (fx, fy), f"iom_measurements/{where}/x|y"
                if sf and sf > 0:
                    values["fov_scale_factor"] = sf
        else:  # 0.5x: optics.get_full_scan_field_of_view = "[x, y]"
            el, where = _tag(iom, "get_full_scan_field_of_view")
            nums = _numbers(_text(el))
            if len(nums) >= 2 and nums[0] > 0 and nums[1] > 0:
                values["fov_m"], tags["fov_m"] = (nums[0], nums[1]), f"iom_measurements/{where}"
        el, where = _tag(iom, "calibrated_pixelsize")
        v = _float(el)
        if v is not None:
            extra["header_notes"] = [
                f"iom_measurements/{where} = {v:g} is not used: RosettaSciIO reads it as "
                f"{v * 1e9:.5g} nm^-1 per pixel, which need not agree with "
                "calibrated_diffraction_angle (the detector angle per pixel used here)"]
    for tag in ("software_version", "exposure_time"):
        txt = _text(root.find(tag))
        if txt:
            extra[tag] = txt
    sizes = {}
    for b in blocks:
        s = _float(b.find("scan_size"))
        if s is not None:
            sizes[(b.get("mode") or "scan_parameters").strip().lower()] = s
    if sizes:
        extra["scan_size"] = sizes
    return EmpadXml(path, raw_name, tuple(shapes), series, tags=tags, extra=extra, **values)


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
        cal = calibration_from_xml(info, (ny, nx))
    return Dataset4D(data, calibration=cal, source=raw, reader=NAME, metadata=meta)


def calibration_from_xml(info: EmpadXml, scan_shape: tuple[int, int]) -> Calibration:
    """The calibration an EMPAD XML states for a ``(ny, nx)`` scan, each with its XML tag in
    ``sources``: beam energy, camera length, scan rotation, the scan step (Å; see the module
    docstring for the two header generations) and, where the header has it, the detector's
    angle per pixel (mrad)."""
    ny, nx = scan_shape
    name = f"EMPAD XML {info.path.name}"
    changes: dict = {}
    sources: dict = {}

    def put(field_name: str, value, key: str, how: str = "") -> None:
        changes[field_name] = value
        sources[field_name] = f"{name}: {info.tags[key]}{how}"

    if info.high_voltage_v and info.high_voltage_v > 0:
        put("energy_ev", float(info.high_voltage_v), "high_voltage_v", " (V)")
    if info.camera_length_m and info.camera_length_m > 0:
        put("camera_length_m", float(info.camera_length_m), "camera_length_m", " (m)")
    if info.scan_rotation_deg is not None:
        put("scan_rotation_deg", float(info.scan_rotation_deg), "scan_rotation_deg", " (degrees)")
    if info.detector_rad_per_px and info.detector_rad_per_px > 0:
        mrad = float(info.detector_rad_per_px) * 1e3
        put("detector_pixel", (mrad, mrad), "detector_rad_per_px", " (rad per pixel)")
        changes["detector_units"] = "mrad"
    if info.fov_m is not None:
        fx, fy = info.fov_m
        if info.fov_scale_factor:
            n = max(ny, nx)
            step = fx / info.fov_scale_factor / n * 1e10
            put("scan_step", (step, step), "fov_m",
                f" / scale_factor {info.fov_scale_factor:g} / {n} positions (the field of view "
                "belongs to the larger scan dimension)")
        else:
            put("scan_step", (fy / ny * 1e10, fx / nx * 1e10), "fov_m",
                f" / ({ny}, {nx}) positions")
        changes["scan_units"] = "A"
    return Calibration(**changes, sources=sources)


__all__ = ["EXTENSIONS", "NAME", "EmpadXml", "calibration_from_xml", "find_xml", "parse_xml",
           "read", "scan_shape_from_name", "sniff_raw", "sniff_xml"]
