"""Rows in, growing images out: the navigation image, virtual detectors and a model's
reconstruction, row by row, with the numerics of the offline paths.

* navigation image: total counts per pattern (negatives included, as recorded);
* virtual detectors: :func:`~napari_4dstem_ml.detectors.engine.virtual_images` on each block
  of rows (masks fixed at the first block: an ``auto`` centre is the bright-field disk of the
  first scan row's mean pattern);
* model: the steps before the pass of the offline pipeline (:func:`~..predict.prepare`: the
  domain check and the preprocessor's data-set values) on the first block of rows; each row is
  preprocessed once and kept while a K×K cluster may still need it; output row ``y`` is
  predicted as soon as row ``y + K//2`` is in (reflected at the scan edges,
  ``np.pad(mode="reflect")``, so the finished image equals the offline ``predict`` with the
  same preprocessor). A CNN takes the rows one by one through its row stream (each row through
  the first convolution once); other models run ``predict_field`` on all ready rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from .rows import AcquisitionStalled, RowSource

MaskFactory = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LiveEvent:
    """After a block of rows: ``rows_acquired`` scan rows are in; ``rows_done[name]`` rows of
    each image (``images[name]``, ``(Ny, Nx)`` float32, NaN where not done yet) are final.
    ``latency_s``: seconds from the block's arrival to its images being updated."""

    rows_acquired: int
    rows_total: int
    rows_done: dict[str, int]
    images: dict[str, np.ndarray] = field(repr=False)
    latency_s: float
    elapsed_s: float
    frames: int

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.elapsed_s, 1e-9)


@dataclass(frozen=True)
class LiveResult:
    """How an acquisition ended: ``complete``, or ``stalled`` with the message."""

    images: dict[str, np.ndarray]
    rows_done: dict[str, int]
    rows_total: int
    complete: bool
    message: str = ""
    elapsed_s: float = 0.0
    max_latency_s: float = 0.0
    frames: int = 0


class LivePipeline:
    """Growing images of a scan ``scan_shape`` with detector ``detector_shape``.

    ``detectors``: name → mask ``(ky, kx)``, or name → a function of the first row's mean
    pattern returning the mask (for an automatic centre). ``model`` (with ``cluster_size`` and
    ``predict_field``) and ``preprocessor``: the reconstruction, image ``"model"``; ``models``:
    more of them, name → ``(model, preprocessor)``.
    """

    def __init__(self, scan_shape: tuple[int, int], detector_shape: tuple[int, int], *,
                 detectors: dict[str, np.ndarray | MaskFactory] | None = None, model=None,
                 preprocessor=None, models: dict[str, tuple[Any, ...]] | None = None,
                 calibration: Calibration | None = None, navigation: bool = True,
                 info: dict | None = None) -> None:
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.detector_shape = tuple(int(n) for n in detector_shape)
        self.calibration = calibration or Calibration()
        self._detector_specs = dict(detectors or {})
        self.masks: dict[str, np.ndarray] = {}
        self.models: dict[str, _LiveModel] = {}
        if model is not None:
            models = {"model": (model, preprocessor, info), **(models or {})}
        for name, spec in (models or {}).items():
            m, pre, m_info = (*spec, None)[:3]
            if pre is None:
                raise ValueError(f"model {name!r} needs its preprocessor")
            self.models[name] = _LiveModel(m, pre, self.scan_shape, m_info)
        ny, nx = self.scan_shape
        names = (["navigation"] if navigation else []) + list(self._detector_specs) + list(self.models)
        self.images = {n: np.full((ny, nx), np.nan, np.float32) for n in names}
        self.rows_done = dict.fromkeys(names, 0)
        self.acquired = 0

    @property
    def messages(self) -> list[str]:
        """What the domain check said of the data on the first rows, per model."""
        out = [f"warning: outside the training domain of {name}: {issue.message()}"
               for name, lm in self.models.items() for issue in lm.issues]
        return out + [f"warning: {name}: {lm.pattern.message}" for name, lm in self.models.items()
                      if lm.pattern is not None and lm.pattern.fired]

    @property
    def model(self):
        """The model of image ``"model"`` (``None`` without one)."""
        lm = self.models.get("model")
        return None if lm is None else lm.model

    def warm_up(self) -> None:
        """Compile and load the kernels on blank rows shaped like the source's (strided EMPAD
        frames), so that the first real row does not wait for them."""
        import scipy.ndimage  # noqa: F401 - the centre finder's first use imports it

        from ..detectors.engine import virtual_images
        from ..detectors.geometry import annular_mask

        ky, kx = self.detector_shape
        nx = self.scan_shape[1]
        blank = np.zeros((1, min(nx, 8), ky + 2, kx), np.float32)[:, :, :ky, :]
        c = ((ky - 1) / 2, (kx - 1) / 2)
        masks = [np.asarray(s, np.float32) for s in self._detector_specs.values() if not callable(s)]
        if any(callable(s) for s in self._detector_specs.values()):  # typical annuli
            masks.append(annular_mask((ky, kx), c, ky / 8, ky / 3))
        if masks:
            virtual_images(blank, np.stack(masks))
        for lm in self.models.values():
            lm.warm_up(blank[0])

    # -- set-up on the first block ----------------------------------------------------------
    def _first_block(self, block: np.ndarray) -> None:
        if self._detector_specs:
            mean = None
            for name, spec in self._detector_specs.items():
                if callable(spec):
                    if mean is None:  # the first scan row: the same whatever the timing
                        mean = block[0].mean(0, dtype=np.float64)
                    spec = spec(mean)
                self.masks[name] = np.asarray(spec, np.float32)
        if self.models:
            from ..predict.sample import PatternSample

            ds = Dataset4D(block, calibration=self.calibration, reader="live")
            sample = PatternSample.from_block(block, f"the first {len(block)} scan row(s)")
            for lm in self.models.values():
                lm.adapt(ds, sample)

    # -- processing -------------------------------------------------------------------------
    def process(self, y0: int, y1: int, block: np.ndarray) -> None:
        """Scan rows ``y0:y1`` arrived (``block`` ``(y1 - y0, Nx, ky, kx)``, in scan order)."""
        if y0 != self.acquired:
            raise ValueError(f"rows must arrive in order: expected row {self.acquired}, got {y0}")
        if y0 == 0:
            self._first_block(block)
        if "navigation" in self.images:
            self.images["navigation"][y0:y1] = block.sum(axis=(2, 3), dtype=np.float32)
            self.rows_done["navigation"] = y1
        if self.masks:
            from ..detectors.engine import virtual_images

            names = list(self.masks)
            out = virtual_images(block, np.stack([self.masks[n] for n in names]))
            for i, n in enumerate(names):
                self.images[n][y0:y1] = out[i]
                self.rows_done[n] = y1
        self.acquired = y1
        for name, lm in self.models.items():
            lm.add_rows(y0, block)
            self.rows_done[name] = lm.predict_ready(self.images[name], y1)


class _LiveModel:
    """One model in a live pipeline: the steps before the pass (:func:`~..predict.prepare`:
    domain check, preprocessor adapted) on the first block of rows, then each row preprocessed
    once and, for a CNN (or an ensemble of them), pushed through the network's
    :class:`~..models.cnn4d.RowStream` (each row through the first convolution once: the
    K - 1 halo rows of a block are never recomputed); other models run ``predict_field`` on
    the rows whose clusters are complete."""

    def __init__(self, model, preprocessor, scan_shape: tuple[int, int], info=None) -> None:
        from ..training.clusters import check_cluster_size

        self.model, self.preprocessor, self.info = model, preprocessor, info or {}
        self.scan_shape = scan_shape
        self.k = check_cluster_size(int(model.cluster_size), scan_shape)
        self.pre = None
        self.issues: list = []
        self.pattern = None  # the pattern check's verdict on the first rows (PatternVerdict)
        self.rows: dict[int, np.ndarray] = {}
        self.done = 0
        self.fed = 0  # padded rows pushed through the row streams
        self.streams = None
        self.readout = None  # a linear model as virtual images: (members, readouts, masks, clip)
        self.vimg: np.ndarray | None = None

    def warm_up(self, blank: np.ndarray) -> None:
        import torch

        if tuple(blank.shape[-2:]) == tuple(self.preprocessor.detector_shape):
            self.preprocessor.transform(blank)  # else adapted on the first block, then used
        oy, ox = self.preprocessor.output_shape
        with torch.inference_mode():
            self.model.eval().predict_field(torch.zeros((self.k, self.k, oy, ox)))

    def adapt(self, ds: Dataset4D, sample) -> None:
        from types import SimpleNamespace

        from ..models.cnn4d import row_stream
        from ..predict import prepare
        from ..predict.linear import linear_on_raw_detector

        loaded = SimpleNamespace(model=self.model, preprocessor=self.preprocessor, info=self.info)
        prep = prepare(loaded, ds, sample)
        self.pre, self.issues = prep.preprocessor, prep.issues
        from ..pattern_domain import verdict_from_summary

        self.pattern, _ = verdict_from_summary(self.info.get("train_summary"), ds.data,
                                               ds.calibration, mean=sample.mean_pattern)
        self.model.eval()
        members = list(getattr(self.model, "members", [self.model]))
        if linear_on_raw_detector(self.model, self.pre, ds):  # as offline: virtual images
            readouts = [self.pre.raw_readout(m.detector_mask()) for m in members]
            masks = np.stack([r[0] for r in readouts])
            self.readout = (members, readouts, masks, ds.dtype.kind != "u")
            self.vimg = np.zeros((len(members), *self.scan_shape), np.float64)
            return
        streams = [row_stream(m) for m in members]
        if getattr(self.model, "mirror_average", False):  # as offline: the mirrored views too
            streams += [row_stream(m, mirrored=True) for m in members]
        self.streams = streams if all(s is not None for s in streams) else None

    def add_rows(self, y0: int, block: np.ndarray) -> None:
        if self.readout is not None:
            from ..detectors.engine import virtual_images

            _, _, masks, clip = self.readout
            self.vimg[:, y0:y0 + len(block)] = virtual_images(block, masks, clip_negative=clip)
            return
        for i in range(len(block)):
            self.rows[y0 + i] = self.pre.transform(block[i])

    def predict_ready(self, image: np.ndarray, acquired: int) -> int:
        """Predict every output row whose clusters are complete; returns the rows done."""
        if self.streams is not None:
            return self._stream_ready(image, acquired)
        ready = self._ready_rows(acquired)
        if ready is None:
            return self.done
        if self.readout is not None:
            return self._readout_rows(image, *ready)
        import torch

        start, stop, ry, rx = ready
        h = self.k // 2
        tile = np.stack([self.rows[int(y)] for y in ry])[:, rx]
        with torch.inference_mode():
            out = self.model.predict_field(torch.from_numpy(tile))
        image[start:stop] = self.pre.model_to_label(out.cpu().numpy())
        self.done = stop
        for y in [y for y in self.rows if 2 * h < y < stop - h]:
            del self.rows[y]  # rows 0..2h stay: reflection at the top edge reads them
        return stop

    def _ready_rows(self, acquired: int):
        """``(start, stop, ry, rx)``: the output rows whose clusters are complete once
        ``acquired`` rows are in, and the (reflected) data rows and columns their clusters
        span; ``None`` when there are none."""
        from ..training.clusters import reflect_index

        ny, nx = self.scan_shape
        h = self.k // 2
        start = self.done
        stop = ny if acquired == ny else max(start, acquired - h)
        if stop <= start:
            return None
        return (start, stop, reflect_index(np.arange(start - h, stop + h), ny),
                reflect_index(np.arange(-h, nx + h), nx))

    def _readout_rows(self, image: np.ndarray, start: int, stop: int, ry, rx) -> int:
        """The linear model's rows ``start:stop`` from its virtual images: the K x K
        correlation (reflected at the scan edges, as offline)."""
        from scipy.ndimage import correlate

        h = self.k // 2
        nx = self.scan_shape[1]
        members, readouts, _, _ = self.readout
        outs = []
        for m, (_, offset), v in zip(members, readouts, self.vimg):
            tile = v[ry][:, rx] + offset
            o = correlate(tile, m.cluster_weights().astype(np.float64), mode="constant")
            outs.append(o[h:h + stop - start, h:h + nx] + float(m.bias.detach()))
        image[start:stop] = self.pre.model_to_label(np.mean(outs, 0))
        self.done = stop
        return stop

    def _stream_ready(self, image: np.ndarray, acquired: int) -> int:
        """Push the padded rows whose data rows are in through the row streams, as one block
        (on one torch thread: small blocks are fastest without a thread team to synchronise,
        and the other core stays with reading and preprocessing)."""
        import torch

        from ..training.clusters import reflect_index

        ny, nx = self.scan_shape
        h = self.k // 2
        rx = reflect_index(np.arange(-h, nx + h), nx)
        start = self.fed
        ready = []
        while self.fed < ny + 2 * h:
            y = int(reflect_index(np.array([self.fed - h]), ny)[0])
            if y >= acquired:
                break
            ready.append(self.rows[y][rx])
            self.fed += 1
        if not ready:
            return self.done
        block = torch.from_numpy(np.ascontiguousarray(np.stack(ready)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                each = torch.stack([s.push(block) for s in self.streams]).cpu().numpy()
        finally:
            torch.set_num_threads(threads)
        n = each.shape[1]
        if n:
            image[self.done:self.done + n] = self.pre.model_to_label(each.mean(0))
            self.done += n
        # rows 0..2h and the last h + 1 stay: reflection at the scan edges reads them
        keep_from = min(start - 2 * h - 1, ny - 1 - h)
        for old in [r for r in self.rows if 2 * h < r < keep_from]:
            del self.rows[old]
        return self.done


def iter_live(source: RowSource, pipeline: LivePipeline) -> Iterator[LiveEvent]:
    """Feed ``source``'s rows through ``pipeline``; one :class:`LiveEvent` per block. Raises
    :class:`AcquisitionStalled` from the source."""
    t0 = time.perf_counter()
    ny, nx = pipeline.scan_shape
    for y0, y1, block in source.rows():
        t_in = time.perf_counter()
        pipeline.process(y0, y1, block)
        now = time.perf_counter()
        yield LiveEvent(y1, ny, dict(pipeline.rows_done), pipeline.images, now - t_in, now - t0,
                        y1 * nx)


def run_live(source: RowSource, pipeline: LivePipeline,
             on_event: Callable[[LiveEvent], Any] | None = None) -> LiveResult:
    """Run a whole acquisition; a stall ends it with ``complete=False`` and the message (the
    images hold the rows done so far)."""
    t0 = time.perf_counter()
    worst = 0.0
    frames = 0
    try:
        for ev in iter_live(source, pipeline):
            worst = max(worst, ev.latency_s)
            frames = ev.frames
            if on_event is not None:
                on_event(ev)
    except AcquisitionStalled as exc:
        return LiveResult(pipeline.images, dict(pipeline.rows_done), pipeline.scan_shape[0],
                          False, str(exc), time.perf_counter() - t0, worst, frames)
    return LiveResult(pipeline.images, dict(pipeline.rows_done), pipeline.scan_shape[0], True,
                      "", time.perf_counter() - t0, worst, frames)
