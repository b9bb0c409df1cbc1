"""Every output file of the package goes through here: validated before any work, written to a
temporary name beside the target, and put in place only when complete.

- :func:`prepare_output` checks an output path *before* the work that produces it: a known
  suffix, an existing writable folder, not one of the command's inputs (same file, hard link or
  symlink to it), and no existing file unless ``overwrite``.
- :func:`output_file` is the one writing path: it yields a temporary path in the target's
  folder (a hidden name starting with :data:`TEMP_PREFIX`; nothing exists there yet, so the
  writer creates it and the file mode follows the umask); on a clean exit it fsyncs the file
  (or every file of a folder output, e.g. a Zarr store) and puts it in place *only if the
  target is still absent* (``os.link`` for files, ``renameat2(RENAME_NOREPLACE)`` for folders),
  or replaces it (``os.replace``) with ``overwrite``. On any error the temporary is removed and
  the target is untouched. Temporaries left by a run of ours that was killed (its process is
  gone) are removed the next time something is written to that folder.
- :class:`OutputPlan` is the planner of a command's outputs: every path it will write (image,
  uncertainty, baselines, partial images, sidecars, checkpoints) is added *before any work*,
  checked by :func:`prepare_output` and against every other planned output (the same path, a
  symlink to it, or a hard link of it: ``realpath`` and ``st_dev``/``st_ino``), so that no
  output can replace another one or an input. :meth:`OutputPlan.fresh` gives a name that is
  free (``NAME.partial.tif``, ``NAME.partial-2.tif``, ...) for outputs that must never replace
  anything, such as the partial image of an interrupted acquisition.
- :func:`output_files` writes several outputs as one: each to its temporary, and only when
  all are written are they put in place (one created by this call is removed again if a later
  one cannot be put in place).
- :func:`write_image` / :func:`write_images` / :func:`write_text` write 2D images (TIFF with
  the pixel size in Å, ``.npy``, 8-bit PNG preview) or a text file (``summary.json``) through
  :func:`output_files`.

Errors are :class:`OutputError` (a ``ValueError``) naming the output path and what is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
import stat
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "TEMP_PREFIX", "OutputError", "OutputExistsError", "OutputPlan",
           "fresh_name", "output_file", "output_files", "prepare_output", "same_file",
           "write_image", "write_images", "write_text", "writing"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
#: hidden name prefix of our temporary outputs: ``.stemml-partial.<pid>.<token>.<host>.<name>``
TEMP_PREFIX = ".stemml-partial."
#: errors that mean "the output location cannot take the file" (reported against the target)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class OutputExistsError(OutputError, FileExistsError):
    """The output exists (or appeared while working) and overwriting was not requested."""


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def prepare_output(path: str | os.PathLike, *, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike | None] = (),
                   suffixes: Iterable[str] | None = None) -> Path:
    """Validate an output path before any work; returns it with its folder resolved.

    Refused (:class:`OutputError` naming ``path``): an unknown suffix (when ``suffixes`` is
    given), a missing, non-folder or read-only parent folder, a target that is one of
    ``inputs`` (the same file, a hard link or a symlink to it, or a path inside an input
    folder), an existing target without ``overwrite`` (:class:`OutputExistsError`), and an
    existing target that is neither a regular file nor a folder (FIFO, device, ...).
    """
    shown = str(path)
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.name in ("", ".", ".."):
        raise OutputError(f"output {shown}: not a file name", p)
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if p.suffix.lower() not in allowed:
            raise OutputError(
                f"output {shown}: unsupported file type {p.suffix or '(none)'!r}; use one of "
                f"{', '.join(allowed)}", p)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output {shown}: the folder {parent} does not exist", p)
    if not parent.is_dir():
        raise OutputError(f"output {shown}: {parent} is not a folder", p)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output {shown}: the folder {parent} is not writable", p)
    target = Path(os.path.realpath(parent)) / p.name
    exists = os.path.lexists(target)
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(os.path.expanduser(os.fspath(inp)))
        if (exists and _same_file(target, ip)) or (ip.is_dir() and _inside(target, ip)):
            raise OutputError(
                f"output {shown} is the input {inp}; refusing to write over an input "
                "(choose another output name)", p)
    if exists:
        if not overwrite:
            raise OutputExistsError(
                f"output {shown} already exists; choose another name or pass --overwrite", p)
        try:
            mode = os.stat(target).st_mode
        except OSError:  # a dangling symlink: replacing the link is fine
            mode = stat.S_IFREG
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise OutputError(f"output {shown} exists and is not a regular file or folder", p)
    return target


def _inside(target: Path, folder: Path) -> bool:
    try:
        target.relative_to(Path(os.path.realpath(folder)))
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# the writing path
# ---------------------------------------------------------------------------------------------
def _temp_path(target: Path) -> Path:
    name = f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.{_HOST}.{target.name}"
    return target.parent / name[:250]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ours in ``folder`` whose writing process (on this host) is gone;
    returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(TEMP_PREFIX):
            continue
        parts = e.name[len(TEMP_PREFIX):].split(".", 3)
        if len(parts) < 4 or parts[2] != _HOST or not parts[0].isdigit():
            continue
        if int(parts[0]) == os.getpid() or _pid_alive(int(parts[0])):
            continue
        _remove(Path(e.path))
        removed.append(Path(e.path))
    return removed


def _fsync_path(p: Path, directory: bool = False) -> None:
    fd = os.open(p, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync folders
        if not directory or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        for root, _dirs, files in os.walk(p):
            for f in files:
                fp = Path(root) / f
                if fp.is_file():
                    _fsync_path(fp)
            _fsync_path(Path(root), directory=True)
    elif p.is_file():
        _fsync_path(p)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """Atomically rename ``src`` to ``dst`` unless ``dst`` exists (Linux ``renameat2``).
    Returns False when the system or file system cannot do it; raises FileExistsError."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _put_in_place(tmp: Path, target: Path, overwrite: bool, shown: str) -> None:
    is_dir = tmp.is_dir() and not tmp.is_symlink()
    target_is_dir = target.is_dir() and not target.is_symlink()
    if os.path.lexists(target) and is_dir != target_is_dir and overwrite:
        kind = "a folder" if target_is_dir else "a file"
        raise OutputError(f"output {shown} exists and is {kind}; not replaced", target)
    if overwrite:
        if not is_dir or not target_is_dir:
            os.replace(tmp, target)
            return
        trash = _temp_path(target)  # a folder over a folder: swap, then remove the old one
        os.rename(target, trash)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(trash, target)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return
    if not is_dir:
        try:
            os.link(tmp, target)  # fails with EEXIST if the target appeared meanwhile
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.ENOSYS, errno.EMLINK, errno.EACCES):
                raise
        else:
            os.unlink(tmp)
            return
    if _rename_noreplace(tmp, target):
        return
    if os.path.lexists(target):  # last resort on file systems with neither
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    os.rename(tmp, target)


def _is_write_error(exc: BaseException, tmp: Path) -> bool:
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _WRITE_ERRNOS:
        return True
    names = {os.fspath(n) for n in (exc.filename, exc.filename2) if n is not None}
    return any(n == os.fspath(tmp) or n.startswith(os.fspath(tmp) + os.sep) for n in names)


def _write_failure(shown: str, target: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"output {shown}: could not be written ({reason}); nothing was written",
                       target)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside an :func:`output_file` block that only writes: any ``OSError`` (even one that
    names no file, like a failed ``write()``) is a failure of the output ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise _write_failure(str(path), Path(path), exc) from exc


@contextlib.contextmanager
def output_file(path: str | os.PathLike, *, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Write an output safely: ``with output_file(p) as tmp: write(tmp)``.

    Validates ``path`` with :func:`prepare_output` (no suffix check: do that first with
    ``prepare_output(..., suffixes=)``), yields a temporary path in the target's folder that
    does not exist yet (the writer creates a file or a folder there), and on a clean exit
    fsyncs it and puts it in place: only if the target is still absent, or replacing it with
    ``overwrite``. If the target appeared meanwhile (another run) :class:`OutputExistsError`
    is raised and nothing is replaced. On any exception the temporary is removed and the
    target is untouched; errors of the output location (full or read-only file system, ...)
    become :class:`OutputError` naming ``path``.
    """
    with output_files([path], overwrite=overwrite, inputs=inputs) as (tmp,):
        yield tmp


@contextlib.contextmanager
def output_files(paths: Sequence[str | os.PathLike], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[list[Path]]:
    """Write several outputs as one: ``with output_files([a, b]) as (ta, tb): ...``.

    Every path is validated (:func:`prepare_output`, and no two of them the same file: see
    :class:`OutputPlan`); the block writes each temporary; on a clean exit all are fsynced
    and only then put in place, in order, as :func:`output_file` does for one. When one
    cannot be put in place (it appeared meanwhile, the disk failed), the targets this call
    had already *created* are removed again, so the command leaves all of its outputs or
    none of the new ones (a replaced file cannot be restored: with ``overwrite`` each
    target is checked again just before it is replaced). On any exception in the block every
    temporary is removed and no target is touched.
    """
    inputs = tuple(inputs)
    plan = OutputPlan(inputs=inputs, overwrite=overwrite)
    shown = [str(p) for p in paths]
    targets = [plan.add(p, "output") for p in paths]
    for t in {t.parent for t in targets}:
        clean_stale_temporaries(t)
    tmps = [_temp_path(t) for t in targets]
    try:
        yield tmps
    except BaseException as exc:
        for tmp in tmps:
            _remove(tmp)
        for sh, target, tmp in zip(shown, targets, tmps):
            if _is_write_error(exc, tmp):
                raise _write_failure(sh, target, exc) from exc  # type: ignore[arg-type]
        raise
    placed: list[tuple[Path, tuple[int, int]]] = []  # targets created here: (path, (dev, ino))
    current = (shown[0], targets[0])  # the output being finished (named in errors)
    try:
        for sh, target, tmp in zip(shown, targets, tmps):
            current = (sh, target)
            if not os.path.lexists(tmp):
                raise OutputError(f"output {sh}: the writer produced no file", target)
            _fsync_tree(tmp)
        for sh, path, target, tmp in zip(shown, paths, targets, tmps):
            current = (sh, target)
            existed = os.path.lexists(target)
            if overwrite:  # the target may have changed since the check (never over an input)
                prepare_output(path, overwrite=True, inputs=inputs)
            _put_in_place(tmp, target, overwrite, sh)
            if not existed:
                st = os.lstat(target)
                placed.append((target, (st.st_dev, st.st_ino)))
    except BaseException as exc:
        for tmp in tmps:
            _remove(tmp)
        for target, ident in placed:  # only what this call created, if it is still ours
            with contextlib.suppress(OSError):
                st = os.lstat(target)
                if (st.st_dev, st.st_ino) == ident:
                    _remove(target)
        sh, target = current
        if isinstance(exc, OutputError):
            raise
        if isinstance(exc, FileExistsError):
            raise OutputExistsError(
                f"output {sh} appeared while this command was running (another run?); it was "
                "not replaced and nothing was written (pass --overwrite to replace it)", target
            ) from exc
        if isinstance(exc, OSError):
            raise _write_failure(sh, target, exc) from exc
        raise
    for folder in {t.parent for t in targets}:
        with contextlib.suppress(OSError):
            _fsync_path(folder, directory=True)


# ---------------------------------------------------------------------------------------------
# the planner: every output of a command, checked against the others before any work
# ---------------------------------------------------------------------------------------------
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same resolved path (symlinks followed,
    also for paths that do not exist yet) or, both existing, the same ``st_dev``/``st_ino``
    (hard links)."""
    a, b = os.path.expanduser(os.fspath(a)), os.path.expanduser(os.fspath(b))
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@dataclass(frozen=True)
class PlannedOutput:
    """One planned output: the path as given (``shown``), where it resolves (``target``)
    and what it is (``what``: e.g. "-o", "--uncertainty", "the iCoM baseline")."""

    shown: str
    target: Path
    what: str


class OutputPlan:
    """All the paths one command will write, checked before any work starts.

    ``plan.add(path, what)`` validates ``path`` (:func:`prepare_output`: folder, suffix, never
    an input, no existing file without ``overwrite``) and refuses it when it is the same file
    as an output planned before (same path, a symlink or a hard link to it): ``"output
    u.tif (--uncertainty) is the same file as p.tif (-o)"``. :meth:`fresh` picks a free name
    for outputs that never replace anything. :meth:`add_inputs` checks the planned outputs
    against inputs learned later (the files a data set reads, once it is opened)."""

    def __init__(self, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False) -> None:
        self.inputs: list[str] = [os.fspath(i) for i in inputs if i]
        self.overwrite = bool(overwrite)
        self.outputs: list[PlannedOutput] = []

    def __iter__(self) -> Iterator[PlannedOutput]:
        return iter(self.outputs)

    def _clash(self, target: Path) -> PlannedOutput | None:
        return next((o for o in self.outputs if same_file(target, o.target)), None)

    def add(self, path: str | os.PathLike, what: str, *, suffixes: Iterable[str] | None = None,
            overwrite: bool | None = None) -> Path:
        """Plan ``path`` (``what`` names it in messages); returns the resolved target."""
        ow = self.overwrite if overwrite is None else bool(overwrite)
        target = prepare_output(path, overwrite=ow, inputs=self.inputs, suffixes=suffixes)
        other = self._clash(target)
        if other is not None:
            raise OutputError(
                f"output {path} ({what}) is the same file as {other.shown} ({other.what}); "
                "every output needs its own name (nothing was written)", target)
        self.outputs.append(PlannedOutput(str(path), target, what))
        return target

    def fresh(self, path: str | os.PathLike, what: str, *, suffixes: Iterable[str] | None = None
              ) -> Path:
        """Plan the first free name of ``path``, ``NAME-2.EXT``, ``NAME-3.EXT``, ...: one that
        does not exist and is no other planned output (never replaces anything)."""
        for candidate in _candidates(Path(os.path.expanduser(os.fspath(path)))):
            target = Path(os.path.realpath(candidate.parent)) / candidate.name
            if os.path.lexists(target) or self._clash(target) is not None:
                continue
            return self.add(candidate, what, suffixes=suffixes, overwrite=False)
        raise OutputError(f"output {path} ({what}): no free name left beside it", Path(path))

    def add_inputs(self, *inputs: str | os.PathLike | None) -> None:
        """More inputs (e.g. the files a data set reads): every planned output is checked
        against them again."""
        new = [os.fspath(i) for i in inputs if i and os.fspath(i) not in self.inputs]
        if not new:
            return
        self.inputs.extend(new)
        for o in self.outputs:
            prepare_output(o.shown, overwrite=True, inputs=new)

    def copy(self) -> OutputPlan:
        """A plan with the same inputs and outputs, to plan more outputs beside them."""
        other = OutputPlan(inputs=self.inputs, overwrite=self.overwrite)
        other.outputs = list(self.outputs)
        return other

    def check(self) -> None:
        """Validate every planned output again (just before writing)."""
        for o in self.outputs:
            prepare_output(o.shown, overwrite=self.overwrite, inputs=self.inputs)


def _candidates(p: Path) -> Iterator[Path]:
    yield p
    for n in range(2, 10000):
        yield p.with_name(f"{p.stem}-{n}{p.suffix}")


def fresh_name(path: str | os.PathLike) -> Path:
    """The first of ``path``, ``NAME-2.EXT``, ``NAME-3.EXT``, ... that does not exist."""
    return OutputPlan().fresh(path, "output")


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def check_image(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as a 2D float32 array; an all-NaN or all-zero image is an :class:`OutputError`
    (silent garbage), naming ``what``."""
    a = np.asarray(image)
    if a.ndim != 2 or 0 in a.shape:
        raise OutputError(f"{what}: expected a 2D image (y, x), got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise OutputError(f"{what}: expected a real-valued image, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        raise OutputError(f"{what}: the image has no finite value (all NaN/inf); nothing written")
    if not np.any(a[finite]):
        raise OutputError(f"{what}: the image is all zero; nothing written")
    return a


def encode_image(tmp: str | os.PathLike, image: np.ndarray, suffix: str,
                 pixel_size_A: float | None = None, metadata: dict | None = None) -> None:
    """Write the 2D float32 ``image`` to ``tmp`` (a path that does not exist yet) in the
    format of ``suffix``: TIFF (pixel size in Å in the ImageJ metadata), ``.npy`` or an
    8-bit PNG preview (0.5-99.5 percentile scaled); ``metadata`` (JSON-serialisable) in the
    TIFF's ImageJ ``Info`` and the PNG's text chunk ``napari-4dstem-ml``."""
    import json

    info = json.dumps(metadata, default=str) if metadata else None
    suffix = suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        kw: dict = {"metadata": {}}
        if pixel_size_A and np.isfinite(pixel_size_A) and pixel_size_A > 0:
            kw = {"resolution": (1.0 / pixel_size_A, 1.0 / pixel_size_A),
                  "metadata": {"unit": "angstrom"}}
        if info:
            kw["metadata"]["Info"] = info
        tifffile.imwrite(tmp, image, imagej=True, **kw)
    elif suffix == ".npy":
        with open(tmp, "xb") as fh:
            np.save(fh, image)
    elif suffix == ".png":
        from PIL import Image

        lo, hi = np.nanpercentile(image, [0.5, 99.5])
        scaled = np.nan_to_num(np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1))
        png = None
        if info:
            from PIL.PngImagePlugin import PngInfo

            png = PngInfo()
            png.add_text("napari-4dstem-ml", info)
        Image.fromarray((scaled * 255).astype(np.uint8)).save(tmp, format="PNG", pnginfo=png)
    else:
        raise OutputError(f"output {tmp}: unsupported image type {suffix!r}; use one of "
                          f"{', '.join(IMAGE_SUFFIXES)}")


def write_image(path: str | os.PathLike, image: np.ndarray, pixel_size_A: float | None = None,
                *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = (),
                metadata: dict | None = None) -> Path:
    """Write a 2D image ``(y, x)`` as TIFF (float32, pixel size in Å in the ImageJ metadata),
    ``.npy`` (float32) or an 8-bit PNG preview (0.5-99.5 percentile scaled), through
    :func:`output_file`. An all-NaN or all-zero image is refused. Returns the written path.

    ``metadata`` (JSON-serialisable) is recorded in the TIFF's ImageJ ``Info`` and the PNG's
    text chunk ``napari-4dstem-ml`` (``.npy`` has no place for it)."""
    return write_images([(path, image, pixel_size_A, metadata)], overwrite=overwrite,
                        inputs=inputs)[0]


def write_images(items: Sequence[tuple], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> list[Path]:
    """Write several 2D images as one (:func:`output_files`): ``items`` are ``(path, image,
    pixel_size_A, metadata)``. Every path and every image is checked before anything is
    written (an all-NaN or all-zero image is refused); all appear, or none. Returns the
    written paths."""
    inputs = tuple(inputs)
    plan = OutputPlan(inputs=inputs, overwrite=overwrite)
    targets = [plan.add(it[0], "output", suffixes=IMAGE_SUFFIXES) for it in items]
    images = [check_image(it[1], f"output {it[0]}") for it in items]
    paths = [it[0] for it in items]
    with output_files(paths, overwrite=overwrite, inputs=inputs) as tmps:
        for it, target, image, tmp in zip(items, targets, images, tmps):
            pixel = it[2] if len(it) > 2 else None
            meta = it[3] if len(it) > 3 else None
            with writing(it[0]):
                encode_image(tmp, image, target.suffix, pixel, meta)
    return targets


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False,
               inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write a UTF-8 text file (e.g. ``summary.json``) through :func:`output_file`."""
    target = prepare_output(path, overwrite=overwrite, inputs=inputs)
    with output_file(path, overwrite=overwrite, inputs=inputs) as tmp, writing(path), \
            open(tmp, "x", encoding="utf-8") as fh:
        fh.write(text)
    return target


def check_output(path, overwrite: bool = False, suffixes=IMAGE_SUFFIXES, inputs=()) -> Path:
    """Deprecated name of :func:`prepare_output` (kept for callers on other branches)."""
    return prepare_output(path, overwrite=overwrite, inputs=inputs, suffixes=suffixes)
