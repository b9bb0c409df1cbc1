"""Result images written block by block as they arrive, into a temporary file that
:func:`napari_4dstem_ml.export.output_file` puts in place only when the image is complete.

Formats by suffix: ``.h5``/``.hdf5`` (dataset ``/image`` with ``pixel_size_A``, chunks of 64
rows written as their rows arrive) and ``.zarr`` (a Zarr array folder, written chunk by chunk);
``.tif``/``.tiff`` (float32, ImageJ pixel size in Å), ``.npy`` and ``.png`` (an 8-bit preview)
are written in one go when the image is complete (a 2D image is small; no memory-mapped writes,
which a full disk would turn into a crash instead of an error).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..export import OutputError, check_image, output_file, prepare_output, writing

SINK_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".h5", ".hdf5", ".zarr")


class ImageSink:
    """Rows written into ``tmp`` (a path that does not exist yet) as they come; ``image``
    keeps the whole result (float32, NaN where nothing arrived yet) for the final checks."""

    def __init__(self, tmp: Path, suffix: str, shape: tuple[int, int],
                 pixel_size_A: float | None, shown: str | None = None) -> None:
        self.tmp, self.suffix, self.shape = Path(tmp), suffix, tuple(int(n) for n in shape)
        self.shown = shown or str(tmp)
        self.pixel = pixel_size_A if pixel_size_A and np.isfinite(pixel_size_A) else None
        self.image = np.full(self.shape, np.nan, np.float32)
        self.written = np.zeros(self.shape[0], bool)
        self._h5 = None
        if suffix in (".h5", ".hdf5"):
            import h5py

            self._h5 = h5py.File(self.tmp, "x")
            self._out = self._h5.create_dataset("image", shape=self.shape, dtype=np.float32,
                                                chunks=(max(1, min(self.shape[0], 64)),
                                                        self.shape[1]), fillvalue=np.nan)
            if self.pixel:
                self._out.attrs["pixel_size_A"] = float(self.pixel)
        elif suffix == ".zarr":
            import zarr

            self._out = zarr.open_array(str(self.tmp), mode="w-", shape=self.shape,
                                        dtype=np.float32, chunks=(64, self.shape[1]),
                                        fill_value=np.nan)
            if self.pixel:
                self._out.attrs["pixel_size_A"] = float(self.pixel)
        else:
            self._out = None  # TIFF, .npy, PNG: at the end

    def write(self, y0: int, y1: int, rows: np.ndarray) -> None:
        """Scan rows ``y0:y1`` of the image (``(y1 - y0, Nx)``)."""
        rows = np.asarray(rows, np.float32)
        self.image[y0:y1] = rows
        self.written[y0:y1] = True
        if self._out is not None:
            with writing(self.shown):  # a failure here is the output's (disk full, ...)
                self._out[y0:y1] = rows

    def missing_rows(self) -> int:
        return int((~self.written).sum())

    def close(self, what: str) -> None:
        """Finish the file; an incomplete or garbage (all-NaN, all-zero) image raises."""
        missing = self.missing_rows()
        if missing:
            raise OutputError(f"{what}: {missing} scan rows never arrived; nothing written")
        check_image(self.image, what)
        with writing(self.shown):
            self._finish()

    def _finish(self) -> None:
        image = self.image
        if self._h5 is not None:
            self._h5.close()
        elif self.suffix in (".tif", ".tiff"):
            import tifffile

            kw = {}
            if self.pixel:
                kw = {"resolution": (1.0 / self.pixel, 1.0 / self.pixel),
                      "metadata": {"unit": "angstrom"}}
            tifffile.imwrite(self.tmp, image, imagej=True, **kw)
        elif self.suffix == ".npy":
            with open(self.tmp, "xb") as fh:
                np.save(fh, image)
        elif self.suffix == ".png":
            from PIL import Image

            lo, hi = np.nanpercentile(image, [0.5, 99.5])
            scaled = np.nan_to_num(np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1))
            Image.fromarray((scaled * 255).astype(np.uint8)).save(self.tmp, format="PNG")

    def abort(self) -> None:
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        self._out = None


def prepare_sink(path: str | Path, *, overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> Path:
    """Validate an output path for :func:`image_sink` before any work."""
    return prepare_output(path, overwrite=overwrite, inputs=inputs, suffixes=SINK_SUFFIXES)


@contextlib.contextmanager
def image_sink(path: str | Path, shape: tuple[int, int], pixel_size_A: float | None = None, *,
               overwrite: bool = False, inputs: Iterable[str | Path | None] = ()
               ) -> Iterator[ImageSink]:
    """``with image_sink(out, (ny, nx)) as sink: sink.write(y0, y1, rows)``: the file appears
    at ``path`` only when every row was written and the block ends without an error."""
    target = prepare_sink(path, overwrite=overwrite, inputs=inputs)
    inputs = tuple(inputs)
    with output_file(path, overwrite=overwrite, inputs=inputs) as tmp:
        with writing(path):
            sink = ImageSink(tmp, target.suffix.lower(), shape, pixel_size_A, shown=str(path))
        try:
            yield sink  # errors of the job (reading the data, ...) pass through unchanged
            sink.close(f"output {path}")
        except BaseException:
            sink.abort()
            raise


def encode_result(tmp: Path, image: np.ndarray, suffix: str, pixel_size_A: float | None = None,
                  metadata: dict | None = None, shown: str | None = None) -> None:
    """Write the whole 2D ``image`` to ``tmp`` in any :data:`SINK_SUFFIXES` format (TIFF,
    ``.npy`` and PNG through :func:`~napari_4dstem_ml.export.encode_image`, with
    ``metadata``; HDF5 and Zarr as :class:`ImageSink` writes them)."""
    from ..export import IMAGE_SUFFIXES, encode_image

    suffix = suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        encode_image(tmp, image, suffix, pixel_size_A, metadata)
        return
    sink = ImageSink(tmp, suffix, image.shape, pixel_size_A, shown=shown)
    try:
        sink.write(0, image.shape[0], image)
        sink.close(f"output {shown or tmp}")
    except BaseException:
        sink.abort()
        raise


def write_results(items: list[tuple], *, overwrite: bool = False,
                  inputs: Iterable[str | Path | None] = ()) -> list[Path]:
    """Write several result images as one (:func:`~napari_4dstem_ml.export.output_files`):
    ``items`` are ``(path, image, pixel_size_A, metadata)`` in any :data:`SINK_SUFFIXES`
    format. Every path (also against the others) and every image (no all-NaN or all-zero
    image) is checked before anything is written; all appear, or none."""
    from ..export import OutputPlan, output_files

    inputs = tuple(inputs)
    plan = OutputPlan(inputs=inputs, overwrite=overwrite)
    targets = [plan.add(it[0], "output", suffixes=SINK_SUFFIXES) for it in items]
    images = [check_image(it[1], f"output {it[0]}") for it in items]
    with output_files([it[0] for it in items], overwrite=overwrite, inputs=inputs) as tmps:
        for it, target, image, tmp in zip(items, targets, images, tmps):
            with writing(it[0]):
                encode_result(tmp, image, target.suffix, it[2], it[3], shown=str(it[0]))
    return targets
