"""Formats read through RosettaSciIO, lazily: Merlin ``.mib``, Gatan ``.dm3``/``.dm4``,
``.blo`` blockfiles, HyperSpy ``.hspy``/``.zspy`` (the last needs ``zarr``).

RosettaSciIO returns, per signal, ``data`` and an ``axes`` list in array order (each with
``index_in_array`` when given, ``navigate``, ``scale``, ``units``). Navigation axes become
``(scan_y, scan_x)`` and signal axes ``(ky, kx)`` (transposed lazily where they are not in
that order). Units: real space ``nm`` x 10 -> Å (also ``Å``, ``pm``, ``µm``, ``m``); reciprocal
``1/nm`` x 0.1 -> Å⁻¹, ``1/Å``; angles ``mrad``, ``rad`` x 1000. HyperSpy metadata
``Acquisition_instrument.TEM``: ``beam_energy`` (keV) -> eV, ``convergence_angle`` (mrad),
``camera_length`` (mm) -> m.

A stack of frames (one navigation axis) needs ``scan_shape=(ny, nx)``; for ``.mib`` it is
passed to RosettaSciIO as the navigation shape (otherwise RosettaSciIO takes it from the
``.hdr`` file beside the ``.mib``, or guesses it from the frame time stamps). ``dataset=`` picks
one signal of a multi-signal file by title or index. ``rsciio`` is imported only here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any

from ..dataset import Calibration, Dataset4D
from .errors import AmbiguousDatasetError, ReaderError
from .shapes import normalize_scan_shape, require_scan_shape, stack_to_4d
from .units import as_text, detector_step, length_to_A, positive

NAME = "rsciio"
#: extension -> RosettaSciIO plugin module
PLUGINS = {
    ".mib": "quantumdetector",
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".blo": "blockfile",
    ".hspy": "hspy",
    ".zspy": "zspy",
}
EXTENSIONS = tuple(PLUGINS)


def _plugin(plugin: str):
    try:
        return importlib.import_module(f"rsciio.{plugin}")
    except ImportError as exc:
        raise ReaderError(
            f"reading this format needs RosettaSciIO's '{plugin}' plugin and its dependencies "
            f"({exc}); install rosettasciio with that format's extras") from exc


def _check_blockfile(path: Path) -> None:
    """Refuse a ``.blo`` whose header is not a blockfile's (magic 0x0102) or whose offsets and
    dimensions do not fit in the file, before RosettaSciIO reads (or allocates) anything."""
    import numpy as np

    head = np.dtype([("ID", "S6"), ("MAGIC", "<u2"), ("off1", "<u4"), ("off2", "<u4"),
                     ("unknown", "<u4"), ("DP_SZ", "<u2"), ("rot", "<u2"), ("NX", "<u2"),
                     ("NY", "<u2")])
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(head.itemsize)
    except OSError as exc:
        raise ReaderError(f"{path}: cannot be read ({exc.strerror or exc})", path) from exc
    if len(raw) < head.itemsize:
        raise ReaderError(f"{path}: too short for a blockfile header ({size} bytes)", path)
    h = np.frombuffer(raw, head)[0]
    if int(h["MAGIC"]) != 0x0102:
        raise ReaderError(f"{path}: not a blockfile (header signature {int(h['MAGIC']):#06x}, "
                          "expected 0x0102)", path)
    frames = int(h["NX"]) * int(h["NY"])
    need = int(h["off2"]) + frames * (6 + int(h["DP_SZ"]) ** 2)
    if not (head.itemsize <= int(h["off1"]) <= size and int(h["off2"]) <= size and frames > 0
            and int(h["DP_SZ"]) > 0 and need <= size):
        raise ReaderError(
            f"{path}: blockfile header does not fit the file ({int(h['NX'])} x {int(h['NY'])} "
            f"patterns of {int(h['DP_SZ'])}² pixels from byte {int(h['off2'])} need {need} "
            f"bytes, the file has {size})", path)


def _title(sig: dict, i: int) -> str:
    try:
        t = sig["metadata"]["General"]["title"]
    except (KeyError, TypeError):
        t = ""
    return str(t) if t else f"signal {i}"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _is_dask(a: Any) -> bool:
    return type(a).__module__.startswith("dask")


def _to_4d(data: Any, n_nav: int, scan_shape: tuple[int, int] | None, path: Path):
    if n_nav == 2 and data.ndim == 4:
        if scan_shape is not None and tuple(scan_shape) != tuple(data.shape[:2]):
            raise ReaderError(
                f"{path}: the file's scan shape is {data.shape[0]} x {data.shape[1]}, not the "
                f"requested {scan_shape[0]} x {scan_shape[1]}", path)
        return data
    if n_nav == 1 and data.ndim == 3:
        if not _is_dask(data):
            return stack_to_4d(data, scan_shape, path)
        ny, nx = require_scan_shape(data.shape[0], scan_shape, path, "diffraction patterns")
        return data.reshape((ny, nx, *data.shape[1:]))
    raise ReaderError(
        f"{path}: expected 4D-STEM data (two navigation and two signal axes, or a stack of "
        f"patterns), got shape {tuple(data.shape)} with {n_nav} navigation axes", path)


def _calibration(sig: dict, axes: list[dict], plugin: str) -> Calibration:
    """Calibrations from RosettaSciIO's axes and metadata, with the header fields of the
    formats that state more than RosettaSciIO maps (blockfile: ``Beam_energy`` in V,
    ``Camera_length`` in 0.1 mm)."""
    changes: dict = {}
    sources: dict = {}
    where = f"RosettaSciIO ({plugin})"
    nav, det = axes[:2], axes[2:]
    if len(nav) == 2:
        s = [length_to_A(a.get("scale", 1.0), a.get("units") or "") for a in nav]
        if all(x and x > 0 for x in s):
            changes.update(scan_step=(s[0], s[1]), scan_units="A")
            sources["scan_step"] = ("blockfile header SY/SX (nm)" if plugin == "blockfile"
                                    else f"{where} navigation axes")
    d = [detector_step(a.get("scale", 1.0), a.get("units") or "") for a in det]
    if len(d) == 2 and all(d) and d[0][1] == d[1][1] and d[0][0] > 0 and d[1][0] > 0:
        changes.update(detector_pixel=(d[0][0], d[1][0]), detector_units=d[0][1])
        sources["detector_pixel"] = f"{where} signal axes"
    tem = _get(sig.get("metadata"), "Acquisition_instrument", "TEM") or {}
    for key, name, factor in (("beam_energy", "energy_ev", 1e3),
                              ("convergence_angle", "convergence_mrad", 1.0),
                              ("camera_length", "camera_length_m", 1e-3)):
        v = positive(tem.get(key))
        if v:
            changes[name] = v * factor
            sources[name] = f"{where} metadata Acquisition_instrument.TEM.{key}"
    header = _get(sig.get("original_metadata"), "blockfile_header") or {}
    e = positive(header.get("Beam_energy"))
    if e and "energy_ev" not in changes:
        changes["energy_ev"] = e
        sources["energy_ev"] = "blockfile header Beam_energy (V)"
    cl = positive(header.get("Camera_length"))
    if cl and "camera_length_m" not in changes:
        changes["camera_length_m"] = cl * 1e-4
        sources["camera_length_m"] = "blockfile header Camera_length (0.1 mm)"
    return Calibration(**changes, sources=sources)


@contextlib.contextmanager
def captured_log():
    """Collect RosettaSciIO's log messages (its handler prints them to stdout, with terminal
    colour codes) into a list instead, for ``metadata["notes"]``."""
    log = logging.getLogger("rsciio")
    notes: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                notes.append(f"RosettaSciIO: {record.getMessage()}")

    saved = log.handlers[:], log.propagate
    log.handlers, log.propagate = [_Collect()], False
    try:
        yield notes
    finally:
        log.handlers, log.propagate = saved


def read(path: str | Path, plugin: str | None = None, scan_shape=None,
         dataset: str | int | None = None, **_ignored) -> Dataset4D:
    """Open a file with RosettaSciIO (``lazy=True``) as a 4D data set."""
    path = Path(path)
    scan_shape = normalize_scan_shape(scan_shape, path)
    plugin = plugin or PLUGINS.get(path.suffix.lower())
    if plugin is None:
        raise ReaderError(f"{path}: no RosettaSciIO plugin for '{path.suffix}' files", path)
    mod = _plugin(plugin)
    if plugin == "blockfile":
        _check_blockfile(path)
    # the scan shape is applied here, after the frames are counted (RosettaSciIO would cut or
    # pad a stack to a navigation shape that does not fit, without a word)
    try:
        with captured_log() as notes:
            sigs = mod.file_reader(str(path), lazy=True)
    except ReaderError:
        raise
    except Exception as exc:  # any failure inside the plugin
        raise ReaderError(f"{path}: RosettaSciIO ({plugin}) could not read it: {exc}", path) from exc

    usable = [(i, s) for i, s in enumerate(sigs) if getattr(s.get("data"), "ndim", 0) in (2, 3, 4)]
    names = [_title(s, i) for i, s in usable]
    if not usable:
        shapes = [tuple(getattr(s.get("data"), "shape", ())) for s in sigs]
        raise ReaderError(f"{path}: no 3D/4D signal in the file (found shapes {shapes})", path)
    if dataset is not None:
        pick = [(i, s) for (i, s), n in zip(usable, names) if n == str(dataset) or str(i) == str(dataset)]
        if not pick:
            raise AmbiguousDatasetError(f"{path}: no signal {dataset!r}; candidates: {names}",
                                        path, names)
        idx, sig = pick[0]
    elif len(usable) == 1:
        idx, sig = usable[0]
    else:
        four = [(i, s) for i, s in usable if s["data"].ndim == 4]
        if len(four) != 1:
            raise AmbiguousDatasetError(
                f"{path}: several signals and none chosen; pass dataset= one of {names}",
                path, names)
        idx, sig = four[0]

    data = sig["data"]
    axes = [dict(a) for a in sig.get("axes", [])]
    if len(axes) == data.ndim:
        if all("index_in_array" in a for a in axes):
            axes.sort(key=lambda a: a["index_in_array"])
        nav_flags = [bool(a.get("navigate", i < data.ndim - 2)) for i, a in enumerate(axes)]
    else:  # no usable axes: assume navigation first
        axes = [{} for _ in range(data.ndim)]
        nav_flags = [i < data.ndim - 2 for i in range(data.ndim)]
    order = [i for i, f in enumerate(nav_flags) if f] + [i for i, f in enumerate(nav_flags) if not f]
    n_nav = sum(nav_flags)
    if order != list(range(data.ndim)):
        data = data.transpose(order)
        axes = [axes[i] for i in order]
    shape_from = "the file's axes"
    if data.ndim == 2:  # a single pattern: a 1 x 1 scan
        data, n_nav, axes = data[None, None], 2, [{}, {}, *axes]
        shape_from = "a single frame"
    elif n_nav == 1:
        shape_from = "scan_shape option"
    elif (plugin == "quantumdetector" and scan_shape is not None
          and tuple(scan_shape) != tuple(data.shape[:2])):
        # a Merlin scan shape comes from the .hdr or frame time stamps: the user may correct it
        n = data.shape[0] * data.shape[1]
        require_scan_shape(n, scan_shape, path, "diffraction patterns")
        data, shape_from = data.reshape((*scan_shape, *data.shape[2:])), "scan_shape option"
    elif plugin == "quantumdetector":
        shape_from = "Merlin .hdr" if path.with_suffix(".hdr").is_file() else "RosettaSciIO"
    data = _to_4d(data, n_nav, scan_shape, path)
    if data.ndim == 4 and n_nav == 1:
        axes = [{}, {}, *axes[1:]]
    cal = _calibration(sig, axes, plugin)
    meta = {"plugin": plugin, "title": _title(sig, idx), "signal_index": idx,
            "scan_shape_from": shape_from, "notes": notes,
            "original_axes": [{k: (as_text(v) if isinstance(v, bytes) else v)
                               for k, v in a.items() if k in ("name", "scale", "units", "offset")}
                              for a in axes]}
    return Dataset4D(data, calibration=cal, source=path, reader=f"{NAME}:{plugin}", metadata=meta)
