"""Hostile input, faults and races against the ``stemml`` command line and the napari reader.

Every case is generated here, in its own temporary folder: truncated and lying files of every
format, hostile HDF5 features (external storage, virtual datasets, external links, corrupt
gzip chunks), NaN/inf data, unsupported dtypes, absurd shapes and headers, hostile and
corrupted checkpoints, bad arguments, outputs onto inputs, full and read-only output locations
(injected ENOSPC/EROFS, and a real small tmpfs where this machine allows mounting one), a
``kill -9`` during a checkpoint write and concurrent writers to one output.

Each CLI case asserts: the exit status; that the message names the file or option at fault;
no traceback; every file that was there before is unchanged (SHA-256 and mtime) unless the
case says it may change; no new file but the expected outputs, and no temporary file left.
Most cases call ``cli.main`` in-process; a few run real subprocesses.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml import export  # noqa: E402
from napari_4dstem_ml.cli import main  # noqa: E402
from napari_4dstem_ml.io.empad import FRAME_BYTES  # noqa: E402
from napari_4dstem_ml.training.synthetic import make_synthetic  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TEMP_PREFIX = getattr(export, "TEMP_PREFIX", ".stemml-partial.")
HOST = getattr(export, "_HOST", "host")
SCAN, DET = (16, 16), (16, 16)


# ---------------------------------------------------------------------------------------------
# shared good files (written once) and the case machinery
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-base")
    s = make_synthetic(SCAN, DET, bf_radius_px=3.0, detector_pixel_mrad=2.0, seed=1)
    data = np.asarray(s.dataset.data, np.float32)
    np.save(d / "data.npy", data)
    _h5(d / "data.h5", data)
    np.save(d / "label.npy", s.label.astype(np.float32))
    rc = _cli(_train(d, out="model.pt"))
    assert rc == 0 and (d / "model.pt").is_file()
    rc = _cli([*_train(d, out="ens.pt"), "--ensemble", "2"])  # gives an uncertainty map
    assert rc == 0 and (d / "ens.pt").is_file()
    return d


def _h5(path, data, name="data", **kw):
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(name, data=data, **kw)
        ds.attrs["scan_step_A"] = [0.2, 0.2]
        ds.attrs["detector_pixel_mrad"] = [2.0, 2.0]
        ds.attrs["energy_ev"] = 80e3
    return path


def _cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse (and old code paths) exit this way
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


@dataclass
class Case:
    """``setup(d, base)`` writes the case's files into ``d`` and returns the argv."""

    setup: Callable[[Path, Path], list]
    status: int = 2
    names: tuple[str, ...] = ()  # each must appear in the message
    creates: tuple[str, ...] = ()  # new files expected (exit 0)
    changes: tuple[str, ...] = ()  # existing files allowed to change
    absent: tuple[str, ...] = ()  # strings the output must not contain
    check: Callable[[Path, str], None] | None = None  # extra assertion (folder, all output)


CASES: dict[str, Case] = {}


def case(name: str, **kw):
    def deco(fn):
        assert name not in CASES
        CASES[name] = Case(fn, **kw)
        return fn

    return deco


def _copy(base: Path, d: Path, *names: str) -> None:
    for n in names:
        shutil.copy2(base / n, d / n)


def _snapshot(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(d))
        if p.is_symlink() or not p.is_file():
            out[rel] = ("other", st.st_mode, st.st_mtime_ns)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def _adf(x, d, *extra):
    return ["adf", x, "--pixels", "--inner", "2", "--outer", "6", "--centre", "7.5,7.5",
            "-o", d / "out.tif", *extra]


def _train(d, data="data.h5", label="label.npy", *extra, out="m.pt"):
    return ["train", d / data, "--label", d / label, "--no-register", "--model", "linear",
            "--init", "scratch", "--cluster", "3", "--detector-size", "16", "--epochs", "2",
            "-o", d / out, *extra]


def _predict(d, model="model.pt", data="data.h5", *extra, out="p.tif"):
    return ["predict", d / data, "--model", d / model, "-o", d / out, *extra]


# ---------------------------------------------------------------------------------------------
# data files: NumPy
# ---------------------------------------------------------------------------------------------
def _npy_case(name, make, status=2, names=None, **kw):
    def setup(d, base):
        make(d / f"{name}.npy", np.load(base / "data.npy"))
        return _adf(d / f"{name}.npy", d)

    names = (f"{name}.npy",) if names is None else names
    CASES[f"data-npy-{name}"] = Case(setup, status=status, names=names,
                                     creates=("out.tif",) if status == 0 else (), **kw)


def _truncated(p, a):
    np.save(p, a)
    p.write_bytes(p.read_bytes()[: 128 + a.nbytes // 3])


def _header_lies(p, a):
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (64, 64, 16, 16)})
        f.write(a.tobytes())


_npy_case("truncated", _truncated)
_npy_case("header_lies", _header_lies)
_npy_case("text", lambda p, a: p.write_text("scan 1: 0.1 0.2 0.3\n" * 40),
          absent=("pickle", "allow_pickle"))
_npy_case("empty_file", lambda p, a: p.write_bytes(b""))
_npy_case("object", lambda p, a: np.save(p, np.array([{"a": 1}, None], dtype=object)),
          absent=("allow_pickle",))
_npy_case("complex", lambda p, a: np.save(p, a.astype(np.complex64)), names=("complex.npy", "complex"))
_npy_case("string", lambda p, a: np.save(p, np.full((2, 2, 3, 3), "ab")))
_npy_case("structured", lambda p, a: np.save(p, np.zeros((2, 2, 3, 3), dtype=[("a", "<f4"), ("b", "<i2")])))
_npy_case("datetime", lambda p, a: np.save(p, np.zeros((2, 2, 3, 3), dtype="datetime64[s]")))
_npy_case("two_d", lambda p, a: np.save(p, a[0, 0]))
_npy_case("five_d", lambda p, a: np.save(p, a[None]))
_npy_case("zero_size", lambda p, a: np.save(p, a[:0]))
_npy_case("stack_no_scan_shape", lambda p, a: np.save(p, a.reshape(-1, *DET)),
          names=("stack_no_scan_shape.npy", "--scan-shape"))
_npy_case("all_nan", lambda p, a: np.save(p, np.full_like(a, np.nan)))
_npy_case("all_inf", lambda p, a: np.save(p, np.full_like(a, np.inf)))
_npy_case("all_zero", lambda p, a: np.save(p, np.zeros_like(a)))
_npy_case("huge_shape_header", lambda p, a: (
    p.write_bytes(b""),
    _raw_header(p, (100000, 100000, 128, 128))))
# dtypes the engine must handle (converted where it cannot): these work
for _dt in ("float16", ">f4", "float64", "uint16", "int32", "uint64", "int8", "bool"):
    _npy_case(f"dtype_{_dt.replace('>', 'be_')}",
              lambda p, a, dt=_dt: np.save(p, (a > 20) if dt == "bool" else a.astype(dt)),
              status=0, names=())


def _raw_header(p, shape):
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 4096)


@case("data-npy-stack_wrong_scan_shape", names=("--scan-shape",))
def _(d, base):
    np.save(d / "s.npy", np.load(base / "data.npy").reshape(-1, *DET))
    return _adf(d / "s.npy", d, "--scan-shape", "15", "17")


@case("data-npy-nan_patterns", status=0, creates=("out.tif",), names=("2 of 256",))
def _(d, base):
    a = np.load(base / "data.npy")
    a[3, 4, 5, 6] = np.nan
    a[9, 1] = np.inf
    np.save(d / "nan.npy", a)
    return _adf(d / "nan.npy", d)


@case("data-npy-nan_pattern_auto_centre", status=0, creates=("out.tif",))
def _(d, base):
    a = np.load(base / "data.npy")
    a[2, 2] = np.nan
    np.save(d / "nan.npy", a)
    return ["adf", d / "nan.npy", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "out.tif"]


# ---------------------------------------------------------------------------------------------
# data files: .npz
# ---------------------------------------------------------------------------------------------
def _npz_case(name, make, names=None, status=2, extra=()):
    def setup(d, base):
        make(d / f"{name}.npz", np.load(base / "data.npy"))
        return _adf(d / f"{name}.npz", d, *extra)

    CASES[f"data-npz-{name}"] = Case(setup, status=status,
                                     names=(f"{name}.npz",) if names is None else names)


def _npz_lying(p, a):
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("data.npy", "w") as m:
            np.lib.format.write_array_header_1_0(
                m, {"descr": "<f4", "fortran_order": False, "shape": (10000, 10000, 16, 16)})
            m.write(a.tobytes())


def _npz_truncated(p, a):
    np.savez(p, data=a)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


_npz_case("not_zip", lambda p, a: p.write_bytes(b"PK\x03\x04 this is not a zip archive" * 10))
_npz_case("truncated", _npz_truncated)
_npz_case("object_member", lambda p, a: np.savez(p, data=np.array([1, "x", None], dtype=object)))
_npz_case("compressed_lying_header", _npz_lying)
_npz_case("no_3d_4d", lambda p, a: np.savez(p, image=a[0, 0]))
_npz_case("two_4d", lambda p, a: np.savez(p, first=a, second=a), names=("two_4d.npz", "--dataset"))
_npz_case("complex_member", lambda p, a: np.savez(p, data=a.astype(np.complex64)))


# ---------------------------------------------------------------------------------------------
# data files: HDF5
# ---------------------------------------------------------------------------------------------
def _h5_case(name, make, names=None, status=2, extra=(), creates=()):
    def setup(d, base):
        make(d, d / f"{name}.h5", np.load(base / "data.npy"))
        return _adf(d / f"{name}.h5", d, *extra)

    CASES[f"data-h5-{name}"] = Case(setup, status=status, creates=creates,
                                    names=(f"{name}.h5",) if names is None else names)


def _corrupt_gzip(d, p, a):
    _h5(p, a, chunks=(1, 16, 16, 16), compression="gzip")
    with h5py.File(p, "r") as f:
        info = f["data"].id.get_chunk_info(5)
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xde\xad\xbe\xef" * 8)


def _external(d, p, a):
    other = d / "elsewhere"
    other.mkdir()
    secret = other / "secret.bin"
    secret.write_bytes(a.astype("<f4").tobytes())
    with h5py.File(p, "w") as f:
        f.create_dataset("data", shape=a.shape, dtype="<f4",
                         external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def _virtual(d, p, a):
    (d / "elsewhere").mkdir(exist_ok=True)  # another folder: links within the file's own are followed
    src = d / "elsewhere" / "source_other.h5"
    _h5(src, a)
    layout = h5py.VirtualLayout(shape=a.shape, dtype="<f4")
    layout[...] = h5py.VirtualSource(str(src), "data", shape=a.shape)
    with h5py.File(p, "w") as f:
        f.create_virtual_dataset("data", layout)


def _ext_link(d, p, a):
    (d / "elsewhere").mkdir(exist_ok=True)  # another folder: links within the file's own are followed
    _h5(d / "elsewhere" / "target_other.h5", a)
    with h5py.File(p, "w") as f:
        f["linked"] = h5py.ExternalLink(str(d / "elsewhere" / "target_other.h5"), "/data")


_h5_case("not_hdf5", lambda d, p, a: p.write_text("not an HDF5 file\n" * 100))
_h5_case("truncated", lambda d, p, a: (_h5(p, a), p.write_bytes(p.read_bytes()[:5000])))
_h5_case("corrupt_gzip_chunk", _corrupt_gzip)
_h5_case("only_2d", lambda d, p, a: _h5(p, a[0, 0]))
_h5_case("string_4d", lambda d, p, a: _h5(p, np.full((2, 2, 3, 3), b"ab")))
_h5_case("complex_4d", lambda d, p, a: _h5(p, a.astype(np.complex64)), names=("complex_4d.h5", "complex"))
_h5_case("compound_4d", lambda d, p, a: _h5(p, np.zeros((2, 2, 3, 3), dtype=[("a", "<f4"), ("b", "<i2")])))
_h5_case("zero_size", lambda d, p, a: _h5(p, np.zeros((0, 16, 16, 16), np.float32)))
_h5_case("float16", lambda d, p, a: _h5(p, a.astype(np.float16)), status=0, names=(),
         creates=("out.tif",))
_h5_case("ambiguous", lambda d, p, a: (_h5(p, a), _h5_add(p, "second", a)),
         names=("ambiguous.h5", "--dataset"))
_h5_case("missing_dataset", lambda d, p, a: _h5(p, a), extra=("--dataset", "/nope"),
         names=("missing_dataset.h5", "nope"))
_h5_case("stack_no_scan_shape", lambda d, p, a: _h5(p, a.reshape(-1, *DET)),
         names=("stack_no_scan_shape.h5", "--scan-shape"))
_h5_case("external_storage", _external, names=("external_storage.h5", "secret.bin", "--allow-external"))
_h5_case("external_storage_allowed", _external, extra=("--allow-external",), status=0, names=(),
         creates=("out.tif",))
_h5_case("virtual_dataset", _virtual, names=("virtual_dataset.h5", "source_other.h5", "--allow-external"))
_h5_case("virtual_dataset_allowed", _virtual, extra=("--allow-external",), status=0, names=(),
         creates=("out.tif",))
_h5_case("external_link", _ext_link, extra=("--dataset", "/linked"),
         names=("external_link.h5", "target_other.h5", "--allow-external"))
_h5_case("external_link_allowed", _ext_link, extra=("--dataset", "/linked", "--allow-external"),
         status=0, names=(), creates=("out.tif",))
_h5_case("all_nan", lambda d, p, a: _h5(p, np.full_like(a, np.nan)))
_h5_case("declared_huge_nothing_stored", lambda d, p, a: _h5_empty(p, (100000, 100000, 128, 128)))


def _h5_empty(p, shape):
    with h5py.File(p, "w") as f:  # a 21 PB dataset of which no chunk was ever written
        f.create_dataset("data", shape=shape, dtype="<f4", chunks=(1, 1, 128, 128))


def _h5_add(p, name, a):
    with h5py.File(p, "a") as f:
        f.create_dataset(name, data=a)


# ---------------------------------------------------------------------------------------------
# data files: EMPAD, RosettaSciIO formats, and things that are not files
# ---------------------------------------------------------------------------------------------
def _xml(raw_name, ny, nx):
    return (f'<root><raw_file filename="{raw_name}"/><scan_parameters mode="acquire">'
            f"<scan_resolution_x>{nx}</scan_resolution_x><scan_resolution_y>{ny}</scan_resolution_y>"
            "</scan_parameters></root>")


def _raw(p, frames, extra_bytes=0):
    p.write_bytes(b"\0" * (frames * FRAME_BYTES + extra_bytes))


@case("data-empad-truncated_with_xml", names=("scan.raw",))
def _(d, base):
    _raw(d / "scan.raw", 3)
    (d / "scan.xml").write_text(_xml("scan.raw", 2, 2))
    return _adf(d / "scan.raw", d)


@case("data-empad-truncated_named", names=("scan_x2_y2.raw",))
def _(d, base):
    _raw(d / "scan_x2_y2.raw", 3, 100)
    return _adf(d / "scan_x2_y2.raw", d)


@case("data-empad-broken_xml", names=("scan.xml",))
def _(d, base):
    _raw(d / "scan.raw", 4)
    (d / "scan.xml").write_text("<root><raw_file filename='scan.raw'>")
    return _adf(d / "scan.raw", d)


@case("data-empad-xml_names_missing_raw", names=("acq.xml", "gone.raw"))
def _(d, base):
    (d / "acq.xml").write_text(_xml("gone.raw", 2, 2))
    return _adf(d / "acq.xml", d)


@case("data-empad-empty_raw", names=("scan_x2_y2.raw",))
def _(d, base):
    (d / "scan_x2_y2.raw").write_bytes(b"")
    return _adf(d / "scan_x2_y2.raw", d)


@case("data-empad-xml_absurd_scan", names=("scan.raw",))
def _(d, base):
    _raw(d / "scan.raw", 4)
    (d / "scan.xml").write_text(_xml("scan.raw", 100000, 100000))
    return _adf(d / "scan.raw", d)


@case("data-empad-xml_huge", names=("scan.xml",))
def _(d, base):
    _raw(d / "scan.raw", 4)
    with open(d / "scan.xml", "w") as f:
        f.write(_xml("scan.raw", 2, 2)[:-7])
        f.write("<pad>" + "x" * (5 * 2**20) + "</pad></root>")
    return _adf(d / "scan.raw", d)


for _ext in ("dm4", "mib", "blo", "hspy"):
    CASES[f"data-rsciio-garbage_{_ext}"] = Case(
        lambda d, base, e=_ext: ((d / f"garbage.{e}").write_bytes(os.urandom(3000)),
                                 _adf(d / f"garbage.{e}", d))[1],
        names=(f"garbage.{_ext}",))


@case("data-file-unknown_extension", names=("notes.txt",))
def _(d, base):
    (d / "notes.txt").write_text("hello")
    return _adf(d / "notes.txt", d)


@case("data-file-missing", names=("missing.h5",))
def _(d, base):
    return _adf(d / "missing.h5", d)


@case("data-file-directory", names=("folder.h5",))
def _(d, base):
    (d / "folder.h5").mkdir()
    return _adf(d / "folder.h5", d)


for _ext in ("npy", "h5", "raw", "npz"):
    CASES[f"data-file-fifo_{_ext}"] = Case(
        lambda d, base, e=_ext: (os.mkfifo(d / f"pipe.{e}"), _adf(d / f"pipe.{e}", d))[1],
        names=(f"pipe.{_ext}",))


@case("data-file-device_symlink", names=("zero.npy",))
def _(d, base):
    os.symlink("/dev/zero", d / "zero.npy")
    return _adf(d / "zero.npy", d)


@case("data-file-symlink_loop", names=("loop.h5",))
def _(d, base):
    os.symlink(d / "loop.h5", d / "loop.h5")
    return _adf(d / "loop.h5", d)


@case("data-info-float16", status=0, names=())
def _(d, base):
    np.save(d / "half.npy", np.load(base / "data.npy").astype(np.float16))
    return ["info", d / "half.npy"]


# ---------------------------------------------------------------------------------------------
# bad arguments: validated by range (0 is a value, not "unset")
# ---------------------------------------------------------------------------------------------
def _arg_case(name, argv_fn, option):
    CASES[f"args-{name}"] = Case(argv_fn, names=(option,))


def _adf_args(*over):
    def setup(d, base):
        _copy(base, d, "data.h5")
        args = dict(zip(("--inner", "--outer"), ("2", "6")))
        args.update(dict(zip(over[::2], over[1::2])))
        argv = ["adf", d / "data.h5", "--pixels", "-o", d / "out.tif"]
        for k, v in args.items():
            argv += [k, v]
        return argv

    return setup


def _train_args(*extra):
    def setup(d, base):
        _copy(base, d, "data.h5", "label.npy")
        return _train(d, "data.h5", "label.npy", *extra)

    return setup


for _opt, _val in [("--inner", "-1"), ("--outer", "0"), ("--inner", "nan"), ("--outer", "inf"),
                   ("--centre", "a,b"), ("--centre", "nan,3"), ("--centre", "1e9,5")]:
    _arg_case(f"adf{_opt}={_val}", _adf_args(_opt, _val), _opt)
_arg_case("adf-annulus_beyond_detector", _adf_args("--inner", "100", "--outer", "200"), "--inner")
_arg_case("adf-annulus_between_pixels",
          _adf_args("--inner", "0.1", "--outer", "0.2", "--centre", "7.5,7.5"), "--outer")
_arg_case("adf-inner_ge_outer", _adf_args("--inner", "6", "--outer", "2"), "--outer")
for _opt, _val in [("--epochs", "0"), ("--epochs", "-3"), ("--lr", "0"), ("--lr", "-0.1"),
                   ("--lr", "nan"), ("--lr", "inf"), ("--batch-size", "0"),
                   ("--detector-size", "0"), ("--detector-size", "100000"), ("--cluster", "0"),
                   ("--cluster", "4"), ("--cluster", "1001"), ("--seed", "-1"),
                   ("--max-angle", "0"), ("--label-pixel", "0"), ("--label-pixel", "nan"),
                   ("--scan-shape", "0")]:
    extra = (_opt, _val, "4") if _opt == "--scan-shape" else (_opt, _val)
    _arg_case(f"train{_opt}={_val}", _train_args(*extra), _opt)
_arg_case("evaluate--crop=-1", lambda d, base: (_copy(base, d, "label.npy"), [
    "evaluate", d / "label.npy", "--reference", d / "label.npy", "--crop", "-1"])[1], "--crop")
_arg_case("evaluate--pixel-size=0", lambda d, base: (_copy(base, d, "label.npy"), [
    "evaluate", d / "label.npy", "--reference", d / "label.npy", "--pixel-size", "0"])[1],
    "--pixel-size")
_arg_case("demo--time-limit=0", lambda d, base: ["demo", "-o", d / "runs", "--time-limit", "0"],
          "--time-limit")
if not torch.cuda.is_available():
    _arg_case("train--device=cuda_without_cuda", _train_args("--device", "cuda"), "--device")


# ---------------------------------------------------------------------------------------------
# labels and training data
# ---------------------------------------------------------------------------------------------
def _label_case(name, make, names=None, status=2, creates=()):
    def setup(d, base):
        _copy(base, d, "data.h5")
        lab = make(d, np.load(base / "label.npy"))
        return _train(d, "data.h5", lab)

    CASES[f"label-{name}"] = Case(setup, status=status, creates=creates,
                                  names=names if names is not None else ())


def _save_label(name, arr):
    def make(d, lab):
        np.save(d / name, arr(lab))
        return name

    return make


def _huge_tiff(d, lab):
    import tifffile

    with tifffile.TiffWriter(d / "huge.tif", bigtiff=True) as tw:  # claims 60000² float32
        tw.write(shape=(60000, 60000), dtype=np.float32)
    with open(d / "huge.tif", "r+b") as fh:  # the file has no data for it
        fh.truncate(4096)
    return "huge.tif"


def _label_fifo(d, lab):
    os.mkfifo(d / "pipe.npy")
    return "pipe.npy"


def _label_external(d, lab):
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "secret.bin").write_bytes(lab.astype("<f4").tobytes())
    with h5py.File(d / "lab.h5", "w") as f:
        f.create_dataset("image", shape=lab.shape, dtype="<f4",
                         external=[(str(d / "elsewhere" / "secret.bin"), 0, h5py.h5f.UNLIMITED)])
    return "lab.h5"


_label_case("constant", _save_label("const.npy", lambda lab: np.full_like(lab, 3.0)),
            names=("const.npy", "vari"))
_label_case("all_nan", _save_label("nan.npy", lambda lab: np.full_like(lab, np.nan)), names=("nan.npy",))
_label_case("text_npy", lambda d, lab: ((d / "t.npy").write_text("1 2 3"), "t.npy")[1], names=("t.npy",))
_label_case("fifo", _label_fifo, names=("pipe.npy",))
_label_case("missing", lambda d, lab: "gone.npy", names=("gone.npy",))
_label_case("wrong_shape", _save_label("small.npy", lambda lab: lab[:8]), names=("small.npy",))
_label_case("one_d", _save_label("line.npy", lambda lab: lab[0]), names=("line.npy",))
_label_case("string", _save_label("str.npy", lambda lab: np.full(lab.shape, "x")), names=("str.npy",))
_label_case("object_npz", lambda d, lab: (np.savez(d / "o.npz", image=np.array([None, 1], object)),
                                          "o.npz")[1], names=("o.npz",))
_label_case("huge_tiff_header", _huge_tiff, names=("huge.tif",))
_label_case("hdf5_external_storage", _label_external, names=("lab.h5", "secret.bin"))
_label_case("unknown_format", lambda d, lab: ((d / "lab.xyz").write_text("1"), "lab.xyz")[1],
            names=("lab.xyz",))


def _finite_model(path):
    obj = torch.load(path, weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in obj["state_dict"].values()
               if v.is_floating_point())


def _nan_data(d, base, value=np.nan, n=2):
    a = np.load(base / "data.npy")
    for i in range(n):
        a[2 + 5 * i, 3 + 3 * i, 4:8, 4:8] = value
    _h5(d / "data.h5", a)
    _copy(base, d, "label.npy")


for _model, _val in [("linear", np.nan), ("linear", np.inf), ("conv4d", np.nan)]:
    CASES[f"train-nonfinite_patterns_{_model}_{_val}"] = Case(
        lambda d, base, m=_model, v=_val: (_nan_data(d, base, v), _train(
            d, "data.h5", "label.npy", "--model", m,
            *(("--cluster", "5", "--epochs", "1", "--ensemble", "1", "--no-augment")
              if m == "conv4d" else ())))[1],
        status=0, creates=("m.pt",), names=("2 positions",),
        check=lambda d, out: _finite_model(d / "m.pt"))


@case("train-all_nan_data", names=("data.h5",))
def _(d, base):
    _h5(d / "data.h5", np.full(np.load(base / "data.npy").shape, np.nan, np.float32))
    _copy(base, d, "label.npy")
    return _train(d)


@case("train-nan_data_overwrite_keeps_finite_model", status=0, changes=("model.pt",),
      names=("2 positions",), check=lambda d, out: _finite_model(d / "model.pt"))
def _(d, base):
    _nan_data(d, base)
    _copy(base, d, "model.pt")
    return _train(d, "data.h5", "label.npy", "--overwrite", out="model.pt")


@case("train-constant_label_overwrite_keeps_old_model", names=("const.npy",))
def _(d, base):
    _copy(base, d, "data.h5", "model.pt")
    np.save(d / "const.npy", np.full(SCAN, 2.0, np.float32))
    return _train(d, "data.h5", "const.npy", "--overwrite", out="model.pt")


@case("train-label_is_data_file", names=("data.h5",))
def _(d, base):
    _copy(base, d, "data.h5")
    return _train(d, "data.h5", "data.h5")


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def _ckpt_case(name, edit, names=None):
    def setup(d, base):
        _copy(base, d, "data.h5")
        obj = torch.load(base / "model.pt", weights_only=True)
        cfg = json.loads(obj["config_json"])
        res = edit(d / "bad.pt", obj, cfg, base)
        if res is not None:
            torch.save(res, d / "bad.pt")
        return _predict(d, "bad.pt")

    CASES[f"ckpt-{name}"] = Case(setup, names=names or ("bad.pt",))


def _with_cfg(fn):
    def edit(p, obj, cfg, base):
        fn(cfg)
        return {**obj, "config_json": json.dumps(cfg)}

    return edit


def _with_state(fn):
    def edit(p, obj, cfg, base):
        sd = dict(obj["state_dict"])
        fn(sd)
        return {**obj, "state_dict": sd}

    return edit


def _set(d, keys, v):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = v


def _write_only(fn):
    def edit(p, o, c, b):
        fn(p, b)  # the file is written here; nothing for torch.save

    return edit


def _zip_not_torch(p, b):
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.txt", "hi")


_ckpt_case("text", _write_only(lambda p, b: p.write_text("not a checkpoint")))
_ckpt_case("empty", _write_only(lambda p, b: p.write_bytes(b"")))
_ckpt_case("truncated", _write_only(lambda p, b: p.write_bytes((b / "model.pt").read_bytes()[:700])))
_ckpt_case("truncated_half", _write_only(
    lambda p, b: p.write_bytes((b / "model.pt").read_bytes()[: (b / "model.pt").stat().st_size // 2])))
_ckpt_case("zip_not_torch", _write_only(_zip_not_torch))
_ckpt_case("legacy_pickle_int", lambda p, o, c, b: 42)
_ckpt_case("pickled_object", lambda p, o, c, b: torch.save({"obj": _Evil()}, p))
_ckpt_case("plain_tensor", lambda p, o, c, b: torch.zeros(3))
_ckpt_case("format_tag", lambda p, o, c, b: {**o, "format": "other"})
_ckpt_case("newer_version", lambda p, o, c, b: {**o, "version": 99})
_ckpt_case("version_string", lambda p, o, c, b: {**o, "version": "1"})
_ckpt_case("no_state_dict", lambda p, o, c, b: {k: v for k, v in o.items() if k != "state_dict"})
_ckpt_case("config_not_json", lambda p, o, c, b: {**o, "config_json": "{not json"})
_ckpt_case("config_not_text", lambda p, o, c, b: {**o, "config_json": torch.zeros(2)})
_ckpt_case("state_not_dict", lambda p, o, c, b: {**o, "state_dict": [torch.zeros(2)]})
_ckpt_case("grid_100000", _with_cfg(lambda c: _set(c, ["preprocessor", "output_shape"], [100000, 100000])))
_ckpt_case("grid_negative", _with_cfg(lambda c: _set(c, ["preprocessor", "output_shape"], [-4, 16])))
_ckpt_case("cluster_1001", _with_cfg(lambda c: _set(c, ["model", "cluster_size"], 1001)))
_ckpt_case("radial_bins_huge", _with_cfg(lambda c: _set(c, ["model", "n_radial_bins"], 10**9)))
_ckpt_case("label_std_zero", _with_cfg(lambda c: _set(c, ["preprocessor", "label_std"], 0.0)))
_ckpt_case("label_mean_nan", _with_cfg(lambda c: _set(c, ["preprocessor", "label_mean"], float("nan"))))
_ckpt_case("model_kind_unknown", _with_cfg(lambda c: _set(c, ["model", "kind"], "transformer")))
_ckpt_case("corrupted_index_buffer",
           _with_state(lambda sd: sd.__setitem__("group_index", sd["group_index"] + 1000)))
_ckpt_case("nan_weights", _with_state(lambda sd: sd.__setitem__("m", sd["m"] * float("nan"))))
_ckpt_case("wrong_weight_shape", _with_state(lambda sd: sd.__setitem__("m", torch.zeros(3))))
_ckpt_case("extra_weight", _with_state(lambda sd: sd.__setitem__("evil", torch.zeros(3))))
_ckpt_case("fifo", _write_only(lambda p, b: os.mkfifo(p)))
_ckpt_case("directory", _write_only(lambda p, b: p.mkdir()))
_ckpt_case("missing", lambda p, o, c, b: None)  # nothing written: no such checkpoint


class _Evil:
    """Refused by a weights-only load."""


@case("ckpt-data_file_as_model", names=("data.h5",))
def _(d, base):
    _copy(base, d, "data.h5")
    return _predict(d, "data.h5")


@case("predict-baseline_output_exists_fails_before_work", names=("p_icom.tif", "--overwrite"))
def _(d, base):
    _copy(base, d, "data.h5", "model.pt")
    (d / "p_icom.tif").write_bytes(b"an earlier baseline")
    return _predict(d, "model.pt", "data.h5", "--baselines")


@case("predict-with_baselines", status=0,
      creates=("p.tif", "p_icom.tif", "p_adf.tif", "p_pattern_distance.tif"))
def _(d, base):
    _copy(base, d, "data.h5", "model.pt")
    return _predict(d, "model.pt", "data.h5", "--baselines")


@case("predict-corrupt_gzip_chunk", names=("corrupt.h5",))
def _(d, base):
    _copy(base, d, "model.pt")
    _corrupt_gzip(d, d / "corrupt.h5", np.load(base / "data.npy"))
    return _predict(d, "model.pt", "corrupt.h5")


@case("predict-nan_patterns_warns", status=0, creates=("p.tif", "p_pattern_distance.tif"),
      names=("NaN/inf",))
def _(d, base):
    _nan_data(d, base)
    _copy(base, d, "model.pt")
    return _predict(d)


@case("predict-all_nan_data", names=("nan.h5",))
def _(d, base):
    _copy(base, d, "model.pt")
    _h5(d / "nan.h5", np.full(np.load(base / "data.npy").shape, np.nan, np.float32))
    return _predict(d, "model.pt", "nan.h5")


@case("predict-complex_data", names=("c.h5", "complex"))
def _(d, base):
    _copy(base, d, "model.pt")
    _h5(d / "c.h5", np.load(base / "data.npy").astype(np.complex64))
    return _predict(d, "model.pt", "c.h5")


@case("predict-external_link_data", names=("ext.h5", "--allow-external"))
def _(d, base):
    _copy(base, d, "model.pt")
    _ext_link(d, d / "ext.h5", np.load(base / "data.npy"))
    return _predict(d, "model.pt", "ext.h5", "--dataset", "linked")


@case("evaluate-text_npy_image", names=("t.npy",))
def _(d, base):
    _copy(base, d, "label.npy")
    (d / "t.npy").write_text("0.1 0.2")
    return ["evaluate", d / "t.npy", "--reference", d / "label.npy"]


@case("evaluate-fifo_reference", names=("pipe.npy",))
def _(d, base):
    _copy(base, d, "label.npy")
    os.mkfifo(d / "pipe.npy")
    return ["evaluate", d / "label.npy", "--reference", d / "pipe.npy"]


@case("evaluate-shape_mismatch", names=("small.npy",))
def _(d, base):
    _copy(base, d, "label.npy")
    np.save(d / "small.npy", np.load(base / "label.npy")[:8])
    return ["evaluate", d / "small.npy", "--reference", d / "label.npy"]


@case("info-fifo", names=("pipe.h5",))
def _(d, base):
    os.mkfifo(d / "pipe.h5")
    return ["info", d / "pipe.h5"]


@case("adf-zero_signal_auto_centre", names=("zero.npy", "--centre"))
def _(d, base):
    np.save(d / "zero.npy", np.zeros((4, 4, 16, 16), np.float32))
    return ["adf", d / "zero.npy", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "out.tif"]


@case("label-external_link_dataset", names=("lab.h5", "target_other.h5"))
def _(d, base):
    _copy(base, d, "data.h5")
    (d / "elsewhere").mkdir()
    with h5py.File(d / "elsewhere" / "target_other.h5", "w") as f:
        f["image"] = np.load(base / "label.npy")
    with h5py.File(d / "lab.h5", "w") as f:
        f["image"] = h5py.ExternalLink(str(d / "elsewhere" / "target_other.h5"), "/image")
    return _train(d, "data.h5", "lab.h5", "--label-dataset", "image")


@case("demo-output_is_a_file", names=("runs",))
def _(d, base):
    (d / "runs").write_text("a file where the run folder should go")
    return ["demo", "-o", d / "runs", "--time-limit", "1"]


# ---------------------------------------------------------------------------------------------
# outputs: onto inputs, missing/read-only/full locations, races
# ---------------------------------------------------------------------------------------------
@case("out-adf_onto_input_overwrite", names=("data.npy",))
def _(d, base):
    _copy(base, d, "data.npy")
    return ["adf", d / "data.npy", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "data.npy",
            "--overwrite"]


@case("out-predict_onto_input_overwrite", names=("data.npy",))
def _(d, base):
    _copy(base, d, "data.npy", "model.pt")
    return _predict(d, "model.pt", "data.npy", "--overwrite", out="data.npy")


@case("out-adf_onto_hardlink_of_input", names=("alias.npy",))
def _(d, base):
    _copy(base, d, "data.npy")
    os.link(d / "data.npy", d / "alias.npy")
    return ["adf", d / "data.npy", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "alias.npy",
            "--overwrite"]


@case("out-adf_onto_symlink_to_input", names=("link.npy",))
def _(d, base):
    _copy(base, d, "data.npy")
    os.symlink(d / "data.npy", d / "link.npy")
    return ["adf", d / "data.npy", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "link.npy",
            "--overwrite"]


@case("out-adf_onto_empad_xml_sidecar_via_symlink", names=("meta.tif",))
def _(d, base):
    _raw(d / "scan.raw", 4)
    (d / "scan.xml").write_text(_xml("scan.raw", 2, 2))
    os.symlink(d / "scan.xml", d / "meta.tif")
    return ["adf", d / "scan.raw", "--pixels", "--inner", "2", "--outer", "6", "--centre", "60,60",
            "-o", d / "meta.tif", "--overwrite"]


@case("out-train_onto_label_via_symlink", names=("m.pt",))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy")
    os.symlink(d / "label.npy", d / "m.pt")
    return _train(d, "data.h5", "label.npy", "--overwrite")


@case("out-adf_existing", names=("out.tif", "--overwrite"))
def _(d, base):
    _copy(base, d, "data.h5")
    (d / "out.tif").write_bytes(b"user data")
    return _adf(d / "data.h5", d)


@case("out-adf_missing_folder", names=("nodir",))
def _(d, base):
    _copy(base, d, "data.h5")
    return ["adf", d / "data.h5", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "nodir" / "x.tif"]


@case("out-train_missing_folder_fails_before_training", names=("nodir",),
      check=lambda d, out: None if "epoch" not in out.lower() else pytest.fail("trained first"))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy")
    return _train(d, out="nodir/x.pt")


@case("out-adf_output_is_folder", names=("out.tif",))
def _(d, base):
    _copy(base, d, "data.h5")
    (d / "out.tif").mkdir()
    return _adf(d / "data.h5", d, "--overwrite")


@case("out-adf_output_is_fifo", names=("out.tif",))
def _(d, base):
    _copy(base, d, "data.h5")
    os.mkfifo(d / "out.tif")
    return _adf(d / "data.h5", d, "--overwrite")


@case("out-adf_bad_suffix", names=("out.bmp",))
def _(d, base):
    _copy(base, d, "data.h5")
    return ["adf", d / "data.h5", "--pixels", "--inner", "2", "--outer", "6", "-o", d / "out.bmp"]


@case("out-train_bad_suffix", names=("m.tif",))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy")
    return _train(d, out="m.tif")


@case("out-train_existing_without_overwrite", names=("model.pt", "--overwrite"))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy", "model.pt")
    return _train(d, out="model.pt")


@case("out-adf_umask_kept", status=0, creates=("out.tif",), names=(),
      check=lambda d, out: _mode_is(d / "out.tif", 0o640))
def _(d, base):
    _copy(base, d, "data.h5")
    return _adf(d / "data.h5", d)


def _mode_is(p, mode):
    assert (p.stat().st_mode & 0o777) == mode, oct(p.stat().st_mode)


@case("out-stale_temporary_cleaned", status=0, creates=("out.tif",), names=(),
      changes=(".stemml-partial.999999.0badf00d.HOST.out.tif",))
def _(d, base):
    _copy(base, d, "data.h5")
    stale = d / f"{TEMP_PREFIX}999999.0badf00d.{HOST}.out.tif"
    stale.write_bytes(b"half a file from a killed run")
    return _adf(d / "data.h5", d)


# ---------------------------------------------------------------------------------------------
# issue 21: the surfaces added since: multi-file outputs, live, replay, Dask, simulate-train
# ---------------------------------------------------------------------------------------------
BASE_CNN = Path(__file__).resolve().parents[1] / "src/napari_4dstem_ml/base_model/base_conv4d.pt"
EMPAD_SCAN = (3, 4)


def _empad_source(d: Path, name: str = "src") -> Path:
    """An EMPAD acquisition (``name.raw`` + ``name.xml``, 3 x 4 scan, 128 x 128 detector)."""
    from napari_4dstem_ml.live.replay import empad_xml

    rng = np.random.default_rng(3)
    ny, nx = EMPAD_SCAN
    yy, xx = np.mgrid[:128, :128]
    disk = (np.hypot(yy - 63.5, xx - 64.0) < 20).astype(np.float32)
    frames = np.zeros((ny, nx, 130, 128), "<f4")
    frames[:, :, :128] = rng.poisson(20 * disk + 1.0, size=(ny, nx, 128, 128))
    frames.tofile(d / f"{name}.raw")
    (d / f"{name}.xml").write_text(empad_xml(f"{name}.raw", (ny, nx), 80e3, (0.3, 0.3)))
    return d / f"{name}.raw"


def _stalled_acquisition(d: Path, rows: int = 2) -> Path:
    """``acq.raw`` + ``acq.xml``: a 3 x 4 scan of which ``rows`` rows were written."""
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.live import replay

    src = _empad_source(d, "full")
    replay(load(src), d / "acq.raw", 0, stop_after=rows * EMPAD_SCAN[1])
    for p in (src, src.with_suffix(".xml")):
        p.unlink()
    return d / "acq.raw"


def _live(d, src, *extra, out="out.tif"):
    return ["live", src, "--inner", "25", "--outer", "60", "--pixels", "--centre", "63.5,64",
            "-o", d / out, "--timeout", "0.5", *extra]


def _ens(d, base):
    _copy(base, d, "data.h5", "ens.pt")


@case("out-predict_uncertainty_is_output_overwrite",
      names=("p.tif", "--uncertainty", "-o", "same file"))
def _(d, base):
    _ens(d, base)
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "p.tif", "--overwrite")


@case("out-predict_uncertainty_symlink_to_output", names=("u.tif", "p.tif", "same file"))
def _(d, base):
    _ens(d, base)
    os.symlink(d / "p.tif", d / "u.tif")  # dangling until p.tif is written
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "u.tif", "--overwrite")


@case("out-predict_uncertainty_hardlink_of_output", names=("u.tif", "p.tif", "same file"))
def _(d, base):
    _ens(d, base)
    (d / "p.tif").write_bytes(b"an older prediction")
    os.link(d / "p.tif", d / "u.tif")
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "u.tif", "--overwrite")


@case("out-predict_uncertainty_is_a_baseline", names=("p_adf.tif", "--uncertainty", "ADF"))
def _(d, base):
    _ens(d, base)
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "p_adf.tif", "--baselines")


@case("out-predict_all_outputs_written_as_one", status=0,
      creates=("p.h5", "p_adf.h5", "p_icom.h5", "p_pattern_distance.h5", "u.npy"), names=())
def _(d, base):
    _ens(d, base)
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "u.npy", "--baselines",
                    out="p.h5")


@case("out-predict_uncertainty_is_the_model", names=("ens.pt",))
def _(d, base):
    _ens(d, base)
    return _predict(d, "ens.pt", "data.h5", "--uncertainty", d / "ens.pt", "--overwrite")


@case("predict-scan_smaller_than_the_clusters", names=("one.h5", "1 x 1 scan", "3 x 3 clusters"))
def _(d, base):
    _copy(base, d, "model.pt")
    _h5(d / "one.h5", np.load(base / "data.npy")[:1, :1])
    return _predict(d, "model.pt", "one.h5")


@case("live-nan_patterns_in_the_first_row", names=("acq.raw", "NaN", "--centre"),
      absent=("mean_pattern",))
def _(d, base):
    src = _empad_source(d, "acq")
    frames = np.fromfile(src, "<f4").reshape(*EMPAD_SCAN, 130, 128)
    frames[0, 1] = np.nan
    frames.tofile(src)
    argv = _live(d, src)
    i = argv.index("--centre")
    del argv[i: i + 2]
    return argv


@case("out-train_onto_its_init_checkpoint", names=("model.pt", "input"))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy", "model.pt")
    argv = _train(d, out="model.pt")
    argv[argv.index("scratch")] = d / "model.pt"
    return [*argv, "--overwrite"]


@case("train-linear_from_a_cnn_init", names=("--init", "base_conv4d.pt", "conv4d", "linear"))
def _(d, base):
    _copy(base, d, "data.h5", "label.npy")
    argv = _train(d)
    argv[argv.index("scratch")] = BASE_CNN
    return argv


# -- live -------------------------------------------------------------------------------------
@case("live-partial_exists_is_not_replaced", status=3, names=("out.partial-2.tif",),
      creates=("out.partial-2.tif",),
      check=lambda d, text: (
          _assert((d / "out.partial.tif").read_bytes() == b"the only record of yesterday"),
          _assert(np.isfinite(_tif(d / "out.partial-2.tif")[:2]).all()),
          _assert(np.isnan(_tif(d / "out.partial-2.tif")[2:]).all())))
def _(d, base):
    src = _stalled_acquisition(d)
    (d / "out.partial.tif").write_bytes(b"the only record of yesterday")
    return _live(d, src, "--overwrite")


@case("live-fifo_source", names=("pipe.raw", "not a regular file"))
def _(d, base):
    os.mkfifo(d / "pipe.raw")
    return _live(d, d / "pipe.raw")


@case("live-half_written_xml", names=("acq.xml", "0.5 s"))
def _(d, base):
    (d / "acq.xml").write_text('<?xml version="1.0"?>\n<root>\n  <raw_file filename="acq.raw"/>\n'
                               '  <scan_parameters mode="acq')
    return _live(d, d / "acq.raw")


@case("live-merlin_nothing_listens", names=("merlin://127.0.0.1:", "nothing answered"))
def _(d, base):
    return _live(d, f"merlin://127.0.0.1:{_free_port()}")


@case("live-merlin_not_a_merlin_server", names=("merlin://127.0.0.1:", "Merlin's data protocol"),
      absent=("PyConnectionError", "\x1b["))
def _(d, base):
    port = _server(b"HTTP/1.1 200 OK\r\n\r\nhello")
    return _live(d, f"merlin://127.0.0.1:{port}")


@case("live-scan_step_sets_the_pixel_size", status=0, creates=("out.tif",), names=(),
      check=lambda d, text: _assert(_tif_pixel(d / "out.tif") == pytest.approx(0.5)))
def _(d, base):
    src = _empad_source(d, "acq")
    return _live(d, src, "--scan-step", "0.5")


# -- replay -----------------------------------------------------------------------------------
def _replay(src, dst, *extra):
    return ["replay", src, dst, "--rate", "0", *extra]


@case("replay-onto_hardlink_of_source", names=("copy.raw", "input"))
def _(d, base):
    src = _empad_source(d)
    os.link(src, d / "copy.raw")
    return _replay(src, d / "copy.raw", "--overwrite")


@case("replay-xml_onto_source_xml_via_symlink", names=("dst.xml", "input"))
def _(d, base):
    src = _empad_source(d)
    os.symlink(d / "src.xml", d / "dst.xml")
    return _replay(src, d / "dst.raw", "--overwrite")


@case("replay-destination_exists", names=("dst.raw", "--overwrite"),
      absent=("could not read the data",))
def _(d, base):
    src = _empad_source(d)
    (d / "dst.raw").write_bytes(b"an earlier acquisition")
    return _replay(src, d / "dst.raw")


@case("replay-overwrite_keeps_other_names_of_the_old_file", status=0,
      changes=("dst.raw",), creates=("dst.xml",), names=(),
      check=lambda d, text: (
          _assert((d / "keep.raw").read_bytes() == b"an earlier acquisition"),
          _assert((d / "dst.raw").stat().st_size == 12 * FRAME_BYTES)))
def _(d, base):
    src = _empad_source(d)
    (d / "keep.raw").write_bytes(b"an earlier acquisition")
    os.link(d / "keep.raw", d / "dst.raw")
    return _replay(src, d / "dst.raw", "--overwrite")


@case("replay-absurd_rate", names=("--rate",))
def _(d, base):
    return ["replay", _empad_source(d), d / "dst.raw", "--rate", "1e12"]


@case("replay-corrupt_chunk_in_source", names=("src.h5", "scan row"))
def _(d, base):
    a = np.fromfile(_empad_source(d, "tmp"), "<f4").reshape(*EMPAD_SCAN, 130, 128)[:, :, :128]
    for p in (d / "tmp.raw", d / "tmp.xml"):
        p.unlink()
    with h5py.File(d / "src.h5", "w") as f:
        f.create_dataset("data", data=a, chunks=(1, 1, 128, 128), compression="gzip")
    with h5py.File(d / "src.h5", "r") as f:
        info = f["data"].id.get_chunk_info(6)
    with open(d / "src.h5", "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xde\xad\xbe\xef" * 8)
    return _replay(d / "src.h5", d / "dst.raw")


# -- Dask -------------------------------------------------------------------------------------
@case("dask-scheduler_accepts_and_never_answers", names=("tcp://127.0.0.1:", "no Dask scheduler"))
def _(d, base):
    _copy(base, d, "data.h5")
    return _adf(d / "data.h5", d, "--scheduler", f"tcp://127.0.0.1:{_server(None)}")


@case("dask-scheduler_speaks_another_protocol", names=("tcp://127.0.0.1:", "not a Dask scheduler"),
      absent=("memory", "data.h5: could not read"))
def _(d, base):
    _copy(base, d, "data.h5")
    port = _server(b"SSH-2.0-OpenSSH_9.6" + bytes(200))
    return _adf(d / "data.h5", d, "--scheduler", f"tcp://127.0.0.1:{port}")


@case("dask-tls_address_without_tls_settings", names=("tls://127.0.0.1:", "TLS"),
      absent=("TypeError", "ssl_context"))
def _(d, base):
    _copy(base, d, "data.h5")
    return _adf(d / "data.h5", d, "--scheduler", f"tls://127.0.0.1:{_server(None)}")


@case("dask-absurd_worker_count", names=("--workers",))
def _(d, base):
    _copy(base, d, "data.h5")
    return _adf(d / "data.h5", d, "--workers", "100000")


# -- simulate-train: refused before any simulation ------------------------------------------
def _simtrain(d, *extra):
    return ["simulate-train", "graphene", "-o", d / "m.pt", "--items", "2", "--scan-shape", "10",
            "10", *extra]


for _opt, _values in (("--items", ("1000000",)), ("--thickness", ("-1",)),
                      ("--scan-shape", ("1", "1")), ("--dose", ("0", "1e4")),
                      ("--tilt", ("1e9",)), ("--energy", ("nan",)), ("--scan-step", ("inf",))):
    def _setup(d, base, _opt=_opt, _values=_values):
        argv = _simtrain(d, "--plan-only")
        if _opt in argv:
            i = argv.index(_opt)
            del argv[i: i + 1 + (2 if _opt == "--scan-shape" else 1)]
        return [*argv, _opt, *_values]

    CASES[f"simtrain-bounds{_opt}"] = Case(_setup, names=(_opt,))


@case("simtrain-linear_from_a_cnn_init_before_simulating", names=("--init", "conv4d", "linear"))
def _(d, base):
    return _simtrain(d, "--model", "linear", "--init", BASE_CNN)


@case("simtrain-work_dir_is_a_file", names=("--work-dir", "sims"))
def _(d, base):
    (d / "sims").write_text("not a folder")
    return _simtrain(d, "--work-dir", d / "sims")


# -- HDF5: a virtual dataset whose source is missing (allowed external files) ----------------
@case("data-h5-virtual_dataset_missing_source", names=("vds.h5", "part_1.h5"))
def _(d, base):
    a = np.load(base / "data.npy")
    (d / "elsewhere").mkdir()
    layout = h5py.VirtualLayout(shape=a.shape, dtype="<f4")
    for i in range(2):
        half = a[8 * i: 8 * (i + 1)]
        _h5(d / "elsewhere" / f"part_{i}.h5", half)
        layout[8 * i: 8 * (i + 1)] = h5py.VirtualSource("elsewhere/" + f"part_{i}.h5", "data",
                                                        shape=half.shape)
    with h5py.File(d / "vds.h5", "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=0)
    (d / "elsewhere" / "part_1.h5").unlink()
    return _adf(d / "vds.h5", d, "--allow-external")


def _assert(ok: bool) -> None:
    assert ok


def _tif(p):
    import tifffile

    return tifffile.imread(p)


def _tif_pixel(p) -> float:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        x = tif.pages[0].tags["XResolution"].value
    return x[1] / x[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(greeting: bytes | None) -> int:
    """A local TCP server (daemon thread) that accepts connections and sends ``greeting``
    (or nothing), then keeps them open without answering; returns its port."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            if greeting:
                try:
                    c.sendall(greeting)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    _SERVERS.append(srv)
    return srv.getsockname()[1]


_SERVERS: list = []


# ---------------------------------------------------------------------------------------------
# the in-process CLI runner
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_cli(name, base, tmp_path, capsys, monkeypatch):
    c = CASES[name]
    d = tmp_path / "case"
    d.mkdir()
    argv = c.setup(d, base)
    before = _snapshot(d)
    old_umask = os.umask(0o027)
    try:
        rc = _cli(argv)
    except Exception as exc:  # noqa: BLE001 - a traceback in the real CLI
        pytest.fail(f"uncaught {type(exc).__name__}: {exc}")
    finally:
        os.umask(old_umask)
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text
    assert rc == c.status, f"exit {rc}, expected {c.status}: {text[-600:]}"
    msg = err if rc else text
    for n in c.names:
        assert n in msg, f"message does not name {n!r}: {msg[-600:]}"
    for a in c.absent:
        assert a not in text, f"message mentions {a!r}: {text[-600:]}"
    if rc:
        assert len(err.strip().splitlines()) <= 3, f"not one clear message: {err}"
    after = _snapshot(d)
    allowed = {ch.replace("HOST", HOST) for ch in c.changes}
    for rel, sig in before.items():
        if rel in allowed:
            continue
        assert after.get(rel) == sig, f"input {rel} changed or vanished"
    new = sorted(set(after) - set(before))
    expected = sorted(c.creates)  # for a status other than 0: the partial outputs it keeps
    assert new == expected, f"unexpected new files {new} (expected {expected})"
    leftovers = [p.name for p in d.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not leftovers, f"temporary files left: {leftovers}"
    if c.check is not None:
        c.check(d, text)


# ---------------------------------------------------------------------------------------------
# injected faults of the output location (in-process)
# ---------------------------------------------------------------------------------------------
def _failing_writer(err_no):
    def write(path, *a, **kw):
        with open(path, "wb") as f:
            f.write(b"II*\0 part of a TIFF")
        raise OSError(err_no, os.strerror(err_no))

    return write


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO])
def test_injected_write_failure_adf(err_no, base, tmp_path, capsys, monkeypatch):
    import tifffile

    _copy(base, tmp_path, "data.h5")
    (tmp_path / "out.tif").write_bytes(b"previous result")
    before = _snapshot(tmp_path)
    monkeypatch.setattr(tifffile, "imwrite", _failing_writer(err_no))
    rc = _cli(_adf(tmp_path / "data.h5", tmp_path, "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "out.tif" in err and os.strerror(err_no) in err
    assert _snapshot(tmp_path) == before  # old output intact, no temporary left


@pytest.mark.parametrize("where", ["torch.save", "link"])
def test_injected_full_disk_during_checkpoint_save(where, base, tmp_path, capsys, monkeypatch):
    _copy(base, tmp_path, "data.h5", "label.npy", "model.pt")
    before = _snapshot(tmp_path)
    if where == "torch.save":
        def save(obj, f, *a, **kw):
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", save)
    else:
        def replace(src, dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

        monkeypatch.setattr(export.os, "replace", replace)
    rc = _cli(_train(tmp_path, "data.h5", "label.npy", "--overwrite", out="model.pt"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "model.pt" in err
    assert _snapshot(tmp_path) == before


def _appearing_writer(target):
    """tifffile.imwrite that first lets another writer create ``target`` (after every check)."""
    import tifffile

    real = tifffile.imwrite

    def write(*a, **kw):
        target.write_bytes(b"written by someone else meanwhile")
        return real(*a, **kw)

    return write


@pytest.mark.parametrize("command", ["adf", "predict"])
def test_output_appearing_during_the_write_is_not_replaced(command, base, tmp_path, capsys,
                                                           monkeypatch):
    import tifffile

    _copy(base, tmp_path, "data.h5", "model.pt")
    if command == "adf":
        argv, target = _adf(tmp_path / "data.h5", tmp_path), tmp_path / "out.tif"
    else:
        argv, target = _predict(tmp_path), tmp_path / "p.tif"
    monkeypatch.setattr(tifffile, "imwrite", _appearing_writer(target))
    rc = _cli(argv)
    err = capsys.readouterr().err
    assert rc == 2 and target.name in err and "Traceback" not in err
    assert target.read_bytes() == b"written by someone else meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "model.pt", target.name]


def test_output_appearing_during_training_is_not_replaced(base, tmp_path, capsys, monkeypatch):
    from napari_4dstem_ml.training import loop

    _copy(base, tmp_path, "data.h5", "label.npy")
    real = loop.train

    def train(*a, **kw):
        (tmp_path / "m.pt").write_bytes(b"a model someone saved meanwhile")
        return (yield from real(*a, **kw))

    monkeypatch.setattr(loop, "train", train)
    rc = _cli(_train(tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and "m.pt" in err and "Traceback" not in err
    assert (tmp_path / "m.pt").read_bytes() == b"a model someone saved meanwhile"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# real processes: kill -9, concurrent writers, a real full / read-only file system
# ---------------------------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


_SLOW_SAVE = """
import sys, time, torch
from napari_4dstem_ml.training.checkpoint import load_checkpoint, save_checkpoint
m = load_checkpoint(sys.argv[1])
real = torch.save
def slow(obj, f, *a, **kw):
    f.write(b"PK\\x03\\x04 first part of the new checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow
save_checkpoint(sys.argv[1], m.model, m.model_config, m.preprocessor, overwrite=True)
"""


def test_kill_9_during_checkpoint_write_keeps_old_checkpoint(base, tmp_path, capsys):
    from napari_4dstem_ml.training.checkpoint import load_checkpoint

    _copy(base, tmp_path, "model.pt", "data.h5")
    old = (tmp_path / "model.pt").read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(tmp_path / "model.pt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
        assert len(temps) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert (tmp_path / "model.pt").read_bytes() == old
    load_checkpoint(tmp_path / "model.pt")
    # the next write into that folder removes what the killed run left
    assert _cli(_predict(tmp_path)) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "model.pt", "p.tif",
                                                           "p_pattern_distance.tif"]


_BARRIER_WRITE = """
import os, sys, time, tifffile
sync, delay = sys.argv[1], float(sys.argv[2])
real = tifffile.imwrite
def after_barrier(*a, **kw):  # every check is done: wait until the other writer is here too
    open(os.path.join(sync, str(os.getpid())), "w").close()
    t0 = time.time()
    while len(os.listdir(sync)) < 2 and time.time() - t0 < 60:
        time.sleep(0.02)
    time.sleep(delay)
    return real(*a, **kw)
tifffile.imwrite = after_barrier
from napari_4dstem_ml.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_concurrent_writers_to_one_output(base, tmp_path, tmp_path_factory):
    """Two processes (``adf``: the same writing path as ``predict``, without importing torch)
    write one output; a barrier makes both pass every check before either writes."""
    import tifffile

    _copy(base, tmp_path, "data.h5")
    sync = tmp_path_factory.mktemp("barrier")
    argv = [str(a) for a in _adf(tmp_path / "data.h5", tmp_path)]
    argv[argv.index(str(tmp_path / "out.tif"))] = str(tmp_path / "p.tif")
    procs = [subprocess.Popen([sys.executable, "-c", _BARRIER_WRITE, str(sync), delay, *argv],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for delay in ("0", "0.5")]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "p.tif" in loser and "Traceback" not in loser
    assert tifffile.imread(tmp_path / "p.tif").shape == SCAN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "p.tif"]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs needs Linux")
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_real_full_or_read_only_file_system(kind, base, tmp_path):
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    _copy(base, tmp_path, "data.h5")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = _snapshot(tmp_path)
    argv = " ".join(f"'{a}'" for a in _adf(tmp_path / "data.h5", mnt))  # -o mnt/out.tif
    opts = "size=16k" if kind == "full" else "ro,size=64k"
    fill = f"dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null; " if kind == "full" else ""
    script = (f"mount -t tmpfs -o {opts} tmpfs {mnt} && {fill}"
              f"{sys.executable} -m napari_4dstem_ml.cli {argv}; "
              f"rc=$?; ls -a {mnt}; exit $rc")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "out.tif" in r.stderr and "Traceback" not in r.stderr
    listing = set(r.stdout.split())
    assert listing <= {".", "..", "filler"}, listing  # nothing partial on the full disk
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# the napari reader: claims its files, broken ones raise a clear error (a notification)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "truncated_raw_with_xml", "truncated_raw_named", "complex_npy", "string_npy",
    "h5_external_storage", "float16_npy", "fifo_npy", "text_npy", "two_d_npy", "corrupt_h5",
])
def test_napari_reader(name, base, tmp_path):
    from napari_4dstem_ml._reader import get_reader

    d = tmp_path
    a = np.load(base / "data.npy")
    expect = "error"
    if name == "truncated_raw_with_xml":
        _raw(d / "scan.raw", 3, 10)
        (d / "scan.xml").write_text(_xml("scan.raw", 2, 2))
        p = d / "scan.raw"
    elif name == "truncated_raw_named":
        p = d / "scan_x4_y4.raw"
        _raw(p, 3)
    elif name == "complex_npy":
        p = d / "c.npy"
        np.save(p, a.astype(np.complex64))
    elif name == "string_npy":
        p = d / "s.npy"
        np.save(p, np.full((2, 2, 3, 3), "ab"))
    elif name == "h5_external_storage":
        p = d / "ext.h5"
        _external(d, p, a)
    elif name == "float16_npy":
        p = d / "half.npy"
        np.save(p, a.astype(np.float16))
        expect = "ok"
    elif name == "fifo_npy":
        p = d / "pipe.npy"
        os.mkfifo(p)
        expect = "none"
    elif name == "text_npy":
        p = d / "t.npy"
        p.write_text("1 2 3")
        expect = "none"
    elif name == "two_d_npy":
        p = d / "img.npy"
        np.save(p, a[0, 0])
        expect = "none"  # a plain image: napari's own reader's business
    else:
        p = d / "broken.h5"
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    t0 = time.perf_counter()
    reader = get_reader(str(p))
    if expect == "none":
        assert reader is None
    else:
        assert callable(reader), "the reader must claim its file and explain what is wrong"
        if expect == "ok":
            layers = reader(str(p))
            assert layers[0][0].dtype == np.float32
            np.testing.assert_allclose(np.asarray(layers[0][0]), a.astype(np.float16), rtol=1e-3)
        else:
            with pytest.raises(ValueError, match=p.name):
                reader(str(p))
    assert time.perf_counter() - t0 < 10


@pytest.mark.gui
@pytest.mark.parametrize("name", ["truncated_raw", "complex_npy"])
def test_napari_open_broken_file_gives_clear_error(name, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    if name == "truncated_raw":
        p = tmp_path / "scan.raw"
        _raw(p, 3, 10)
        (tmp_path / "scan.xml").write_text(_xml("scan.raw", 2, 2))
    else:
        p = tmp_path / "c.npy"
        np.save(p, np.zeros((2, 2, 4, 4), np.complex64))
    with pytest.raises(ValueError, match=p.name) as info:
        viewer.open(str(p), plugin="napari-4dstem-ml")
    assert "does not support" not in str(info.value)  # not "no reader"
    assert len(viewer.layers) == 0
    good = tmp_path / "ok.npy"
    np.save(good, np.ones((2, 2, 4, 4), np.float16))  # converted at open
    layers = viewer.open(str(good), plugin="napari-4dstem-ml")
    assert layers[0].data.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# the napari settings file: wrong types, huge and NaN values never stop a widget
# ---------------------------------------------------------------------------------------------
HOSTILE_SETTINGS = (
    '{"training": {"model": 3, "cluster_size": 1e308, "conv4d.base.epochs": "many", '
    '"conv4d.base.lr": NaN, "conv4d.base.batch_size": 99999999999999999999999, '
    '"linear.epochs": 12.5, "linear.lr": [1, 2]}, "browser": {"exponent": Infinity, '
    '"display": {"nested": true}}, "compare": [1, 2, 3], "detectors": {"com": null}}'
)


def test_settings_loader_validates_types_and_ranges(tmp_path):
    from napari_4dstem_ml.widgets.settings import Settings

    p = tmp_path / "settings.json"
    p.write_text(HOSTILE_SETTINGS)
    with pytest.warns(UserWarning, match="napari-4dstem-ml: setting training.model"):
        s = Settings(p)
    assert s.values == {"training": {}, "browser": {}, "detectors": {}}
    assert len(s.notes) == 11 and all("used" in n or "ignored" in n for n in s.notes)
    assert s.get("training", "conv4d.base.epochs", 16) == 16
    # a valid file: values of another kind than the widget's default fall back to it
    p.write_text('{"training": {"linear.epochs": 7.0, "linear.lr": 5, "model": "linear"}}')
    s = Settings(p)
    assert not s.notes
    assert s.get("training", "linear.epochs", 3) == 7 and s.get("training", "linear.lr", 0.1) == 5.0
    assert s.get("training", "model", 1.5) == 1.5 and "expected a value like 1.5" in s.notes[-1]
    for text in ("not json", "[1, 2]", '{"a": ' * 100000 + "1" + "}" * 100000):
        p.write_text(text)
        with pytest.warns(UserWarning):
            assert Settings(p).values == {}
    assert p.read_text().startswith('{"a"')  # never rewritten by reading


@pytest.mark.gui
def test_training_dock_opens_with_a_hostile_settings_file(make_napari_viewer, monkeypatch,
                                                          tmp_path):
    from napari_4dstem_ml.widgets import settings
    from napari_4dstem_ml.widgets.browser import BrowserWidget
    from napari_4dstem_ml.widgets.training import DEFAULTS, TrainingWidget

    p = tmp_path / "settings.json"
    p.write_text(HOSTILE_SETTINGS)
    monkeypatch.setenv(settings.ENV_VAR, str(p))
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning):
        widget = TrainingWidget(viewer)
    BrowserWidget(viewer)
    widget.kind_box.setCurrentText("conv4d")
    epochs, lr, batch = DEFAULTS[widget._start_key()]
    assert (widget.epochs.value(), widget.batch.value()) == (epochs, batch)
    assert widget.lr.value() == pytest.approx(lr)
    widget.epochs.setValue(9)  # the next change writes a valid file
    stored = json.loads(p.read_text())
    assert stored["training"][f"{widget._start_key()}.epochs"] == 9
    assert "many" not in p.read_text() and "NaN" not in p.read_text()
