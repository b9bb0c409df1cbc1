"""Padded tiles of preprocessed patterns for a fully convolutional model, read and
preprocessed in the background while the model runs on the previous tile."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..training.clusters import PatternSource, reflect_index

__all__ = ["STRIP_COLUMNS", "TILE_BYTES", "TileFeeder"]


#: output columns per tile: ``predict_field`` is fastest on strips about this wide (its
#: activations stay in cache), measured 20 % faster than on 128-column strips
STRIP_COLUMNS = 64
#: bytes of one padded tile buffer (two are used: one filled while the model reads the other)
TILE_BYTES = 96e6


class TileFeeder:
    """Padded tiles ``(R + K - 1, C + K - 1, oy, ox)`` of a :class:`PatternSource`, for output
    rows ``rows`` (default: all) in bands of ``tile_rows`` and, for memory-mapped data,
    strips of :data:`STRIP_COLUMNS` columns (other data is read in whole rows: h5py would
    decompress a chunk once per strip). Two reusable buffers: each pattern is read and
    preprocessed straight into its place (no temporaries, no page faults after the first
    tiles); reflected rows and columns (``np.pad(mode="reflect")`` at the scan edges) are
    copied. Tile ``i + 1`` is prepared in a background thread while the model runs on tile
    ``i`` (the preprocessing kernel and torch both release the GIL)."""

    def __init__(self, source: PatternSource, k: int, tile_rows: int | None = None,
                 rows: tuple[int, int] | None = None) -> None:
        self.source, self.k, self.h = source, k, k // 2
        ny, nx = source.scan_shape
        self.ny, self.nx = ny, nx
        self.rows = (0, ny) if rows is None else (int(rows[0]), int(rows[1]))
        mapped = isinstance(source.dataset.data, np.ndarray) or source.cache is not None
        self.tile_cols = min(nx, STRIP_COLUMNS) if mapped else nx
        per_row = (self.tile_cols + k - 1) * int(np.prod(source.pattern_shape)) * 4
        if tile_rows is None:
            tile_rows = max(8, int(TILE_BYTES // per_row) - (k - 1))
        self.tile_rows = max(1, min(int(tile_rows), self.rows[1] - self.rows[0]))
        shape = (self.tile_rows + k - 1, self.tile_cols + k - 1, *source.pattern_shape)
        self.ranges = [
            (y0, min(self.rows[1], y0 + self.tile_rows), x0, min(nx, x0 + self.tile_cols))
            for y0 in range(self.rows[0], self.rows[1], self.tile_rows)
            for x0 in range(0, nx, self.tile_cols)
        ]
        self.buffers = [np.empty(shape, np.float32) for _ in range(min(2, len(self.ranges)))]

    def fill(self, index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The padded tile of output rows ``y0:y1``, columns ``x0:x1`` into buffer ``index``."""
        h = self.h
        buf = self.buffers[index][: y1 - y0 + 2 * h, : x1 - x0 + 2 * h]
        ry = reflect_index(np.arange(y0 - h, y1 + h), self.ny).tolist()
        rx = reflect_index(np.arange(x0 - h, x1 + h), self.nx)
        # columns read directly: the tile's own range plus the halo that lies on the scan
        c0, c1 = max(0, x0 - h), min(self.nx, x1 + h)
        b0 = c0 - (x0 - h)
        src = self.source
        done: dict[int, int] = {}
        for r, y in enumerate(ry):
            dst = buf[r, b0 : b0 + c1 - c0]
            if y in done:  # a reflected row already in this tile
                dst[...] = buf[done[y], b0 : b0 + c1 - c0]
            elif src.cache is not None:
                dst[...] = src.cache[y, c0:c1]
            elif src.grid is not None or src.stage != "model":  # resampled scan grid
                dst[...] = src.rows(np.array([y]))[0, c0:c1]
            else:
                src.preprocessor.transform(src.dataset.data[y, c0:c1], out=dst)
            done.setdefault(y, r)
        # reflected columns at the scan edges
        for j in [*range(b0), *range(b0 + c1 - c0, buf.shape[1])]:
            buf[:, j] = buf[:, b0 + int(rx[j]) - c0]
        return buf

    def tiles(self, background: bool = True) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """``(y0, y1, x0, x1, padded tile)`` in scan order, the next prepared in the background
        on one core (``background=False``: each prepared when asked, on all cores; for a model
        so cheap that preprocessing is all the work)."""
        from concurrent.futures import ThreadPoolExecutor

        ranges, nb = self.ranges, len(self.buffers)
        if not background:
            for i, rng in enumerate(ranges):
                yield (*rng, self.fill(i % nb, *rng))
            return
        with ThreadPoolExecutor(1, thread_name_prefix="stemml-tiles",
                                initializer=_one_numba_thread) as ex:
            fut = ex.submit(self.fill, 0, *ranges[0])
            for i, rng in enumerate(ranges):
                tile = fut.result()
                if i + 1 < len(ranges) and nb > 1:
                    fut = ex.submit(self.fill, (i + 1) % nb, *ranges[i + 1])
                yield (*rng, tile)
                if i + 1 < len(ranges) and nb == 1:
                    fut = ex.submit(self.fill, 0, *ranges[i + 1])


def _one_numba_thread() -> None:
    """The tile thread preprocesses on one core (numba's thread count is per thread): torch has
    the others, and no second OpenMP pool spins against torch's."""
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass


