"""Writing result images and arrays safely: atomic, and never over a user's file unasked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")


class OutputExistsError(FileExistsError):
    """The output path exists and overwriting was not requested."""


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; the target is untouched on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(path: Path, overwrite: bool = False, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """Validate an output path: known suffix, and no silent overwrite."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"output {path}: unsupported file type {path.suffix!r}; use one of {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} already exists; choose another name or pass --overwrite")
    return path


def write_image(path, image: np.ndarray, pixel_size_A: float | None = None, overwrite: bool = False,
                metadata: dict | None = None) -> Path:
    """Write a 2D float image ``(y, x)`` as TIFF (float32, pixel size in Å in the ImageJ
    metadata), ``.npy``, or an 8-bit PNG preview (percentile-scaled), atomically.

    ``metadata`` (JSON-serialisable) is recorded in the TIFF's ImageJ ``Info`` and the PNG's
    text chunk ``napari-4dstem-ml`` (``.npy`` has no place for it)."""
    import json

    path = check_output(Path(path), overwrite)
    image = np.asarray(image, dtype=np.float32)
    suffix = path.suffix.lower()
    info = json.dumps(metadata, default=str) if metadata else None

    def write(tmp: Path) -> None:
        if suffix in (".tif", ".tiff"):
            import tifffile

            kw: dict = {"metadata": {}}
            if pixel_size_A:
                kw = {"resolution": (1.0 / pixel_size_A, 1.0 / pixel_size_A), "metadata": {"unit": "angstrom"}}
            if info:
                kw["metadata"]["Info"] = info
            tifffile.imwrite(tmp, image, imagej=True, **kw)
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, image)
        else:
            from PIL import Image

            lo, hi = np.nanpercentile(image, [0.5, 99.5])
            scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
            png = None
            if info:
                from PIL.PngImagePlugin import PngInfo

                png = PngInfo()
                png.add_text("napari-4dstem-ml", info)
            Image.fromarray((scaled * 255).astype(np.uint8)).save(tmp, format="PNG", pnginfo=png)

    return atomic_write(path, write)
