"""4D CNN on a K×K cluster of diffraction patterns.

Layers (``CNN4dConfig``): average-pool the detector by ``input_pool``; Conv4d (1 → C1, kernel
(ks, ks, kd, kd), valid over the scan axes, same padding over the detector axes); pool the
detector by ``pool_det``; activation; Conv4d (C1 → C2); pool; activation; dropout; a dense
layer to one intensity. The dense layer is a Conv4d whose kernel covers the remaining
s × s scan window (s = K − 2(ks − 1), 1 for the defaults) and the whole pooled detector, so
the network is fully convolutional over the scan axes: ``predict_field`` runs the same layers
on a whole padded tile and each pattern goes through the first convolution once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import CNN4dConfig
from .conv4d import Conv4d

__all__ = ["CNN4d"]


def _pool_detector(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """Pool the last two axes of (B, C, D0, D1, D2, D3) by ``factor`` (floor of the size)."""
    if factor == 1:
        return x
    b, c, d0, d1, d2, d3 = x.shape
    flat = x.reshape(b, c * d0 * d1, d2, d3)
    pool = F.max_pool2d if mode == "max" else F.avg_pool2d
    y = pool(flat, factor, factor)
    return y.view(b, c, d0, d1, *y.shape[-2:])


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "elu": nn.ELU,
        "gelu": nn.GELU,
    }[name]()


class CNN4d(nn.Module):
    """The 4D CNN; see the module docstring. Input patterns are preprocessed, float32."""

    def __init__(self, config: CNN4dConfig, detector_shape: tuple[int, int]) -> None:
        super().__init__()
        ky, kx = (int(v) for v in detector_shape)
        self.config = config
        self.detector_shape = (ky, kx)
        self.cluster_size = k = config.cluster_size
        ks, kd = config.kernel_scan, config.kernel_det
        c1, c2 = config.channels
        pad = (0, 0, kd // 2, kd // 2)
        dy, dx = ky // config.input_pool, kx // config.input_pool
        for _ in range(2):
            dy, dx = dy // config.pool_det, dx // config.pool_det
        if dy < 1 or dx < 1:
            raise ValueError(
                f"CNN4d: detector {detector_shape} is too small for input_pool="
                f"{config.input_pool} and two pools of pool_det={config.pool_det}"
            )
        self.feature_shape = (c2, dy, dx)
        self.conv1 = Conv4d(1, c1, (ks, ks, kd, kd), padding=pad)
        self.conv2 = Conv4d(c1, c2, (ks, ks, kd, kd), padding=pad)
        self.act1 = _activation(config.activation)
        self.act2 = _activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        s = k - 2 * (ks - 1)
        self.dense = Conv4d(c2, 1, (s, s, dy, dx))

    def first_layer_filters(self) -> np.ndarray:
        """The first convolution's kernels as one 2D float32 montage, for display.

        Channel c's kernel ``(ks, ks, kd, kd)`` (scan y, scan x, detector y, detector x) is a
        ``(ks·kd) × (ks·kd)`` block: the scan offset picks the ``kd × kd`` tile, the detector
        offset the pixel in it. Blocks fill a grid of ``ceil(sqrt(2C))`` columns row by row,
        with 1-px gaps of 0.
        """
        w = self.conv1.weight.detach().float().cpu().numpy()[:, 0]
        c, ks, _, kd, _ = w.shape
        n = ks * kd
        cols = min(c, int(np.ceil(np.sqrt(2 * c))))
        rows = int(np.ceil(c / cols))
        blocks = w.transpose(0, 1, 3, 2, 4).reshape(c, n, n)
        out = np.zeros((rows * (n + 1) - 1, cols * (n + 1) - 1), np.float32)
        for i in range(c):
            r, q = divmod(i, cols)
            out[r * (n + 1) : r * (n + 1) + n, q * (n + 1) : q * (n + 1) + n] = blocks[i]
        return out

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Sy, Sx, ky, kx) → (B, C2, Sy - 2(ks-1), Sx - 2(ks-1), dy, dx)."""
        cfg = self.config
        x = _pool_detector(x, cfg.input_pool, "avg")
        x = self.act1(_pool_detector(self.conv1(x), cfg.pool_det, cfg.pool_mode))
        x = self.act2(_pool_detector(self.conv2(x), cfg.pool_det, cfg.pool_mode))
        return self.dropout(x)

    def _head(self, f: torch.Tensor) -> torch.Tensor:
        """Dense layer: (B, C2, Sy', Sx', dy, dx) → (B, Sy' - s + 1, Sx' - s + 1)."""
        w = self.dense.weight
        if w.shape[2] == 1 and w.shape[3] == 1:
            # 1×1 scan window: a plain dot product per scan position (faster than conv3d)
            b, c, n0, n1 = f.shape[:4]
            flat = f.permute(0, 2, 3, 1, 4, 5).reshape(b, n0, n1, -1)
            return flat @ w.reshape(-1) + self.dense.bias[0]
        return self.dense(f)[:, 0, :, :, 0, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) float32 → (B,) intensities."""
        k = self.cluster_size
        if x.dim() != 5 or tuple(x.shape[1:]) != (k, k, *self.detector_shape):
            raise ValueError(
                f"CNN4d.forward expects (B, {k}, {k}, {self.detector_shape[0]}, "
                f"{self.detector_shape[1]}), got {tuple(x.shape)}"
            )
        return self._head(self._features(x[:, None]))[:, 0, 0]

    def predict_field(
        self, x: torch.Tensor | np.ndarray, rows_per_chunk: int | None = None
    ) -> torch.Tensor:
        """Padded tile ``x`` (Ny+K-1, Nx+K-1, ky, kx) → (Ny, Nx) on the model's device.

        Equal to ``forward`` on the cluster around every position (in eval mode). Output rows
        are computed in chunks of ``rows_per_chunk`` (default: about 32 MB of first-layer
        activations per chunk, at least 8 rows; cache-sized chunks are fastest on CPU); each
        chunk recomputes K-1 rows of its neighbour, so tiles of ~64 columns work well.
        """
        k = self.cluster_size
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[2:] != self.detector_shape or min(shape[:2]) < k:
            raise ValueError(
                f"CNN4d.predict_field expects (Ny+{k - 1}, Nx+{k - 1}, "
                f"{self.detector_shape[0]}, {self.detector_shape[1]}) with Ny, Nx >= 1, got {shape}"
            )
        ny = shape[0] - k + 1
        device = self.dense.weight.device
        if rows_per_chunk is None:
            cfg = self.config
            per_pos = cfg.channels[0] * np.prod(self.detector_shape) / cfg.input_pool**2 * 4
            rows_per_chunk = max(8, int(32e6 / (per_pos * shape[1])) - (k - 1))
        rows = []
        for y0 in range(0, ny, rows_per_chunk):
            y1 = min(ny, y0 + rows_per_chunk)
            tile = x[y0 : y1 + k - 1]
            tile = torch.as_tensor(np.asarray(tile) if not isinstance(tile, torch.Tensor) else tile)
            tile = tile.to(device=device, dtype=self.dense.weight.dtype)
            rows.append(self._head(self._features(tile[None, None]))[0])
        return torch.cat(rows, 0)


class RowStream:
    """The network over a padded field fed a few scan rows at a time (live reconstruction):
    each row goes through every convolution once — the last rows' activations are kept as the
    next block's halo — and output rows come out as soon as the rows their clusters span are in.
    Rows ``(n, Sx, ky, kx)`` are those of the padded tile that :meth:`CNN4d.predict_field`
    takes, in order; :meth:`push` returns the new output rows ``(m, Sx - K + 1)`` (``m`` may be
    0), equal to ``predict_field``'s rows to float32 rounding (eval mode). ``mirrored``: the
    network sees every row flipped along scan x and kx, its output rows flipped back (the
    mirrored view of :class:`~.ensemble.Ensemble`'s ``mirror_average``)."""

    def __init__(self, model: CNN4d, mirrored: bool = False) -> None:
        cfg = model.config
        self.model = model
        self.mirrored = bool(mirrored)
        self.ks = cfg.kernel_scan
        self.s = model.cluster_size - 2 * (self.ks - 1)
        self.inputs = self.mid = self.features = None  # the halo rows of each stage

    @staticmethod
    def _stage(halo, new, keep: int, fn):
        """``fn`` over the halo rows and the new rows (scan-valid along rows); returns the
        output rows and the last ``keep`` rows of the input, the next block's halo."""
        x = new if halo is None else torch.cat([halo, new], 2)
        tail = x[:, :, max(0, x.shape[2] - keep):] if keep else None
        if x.shape[2] <= keep:
            return None, x
        return fn(x), tail

    def push(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        m, cfg = self.model, self.model.config
        x = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
        if x.dim() == 3:
            x = x[None]
        if self.mirrored:
            x = x.flip((1, 3))
        x = x.to(device=m.dense.weight.device, dtype=m.dense.weight.dtype)[None, None]
        x = _pool_detector(x, cfg.input_pool, "avg")
        ks = self.ks
        a, self.inputs = self._stage(self.inputs, x, ks - 1, lambda v: m.act1(
            _pool_detector(m.conv1(v), cfg.pool_det, cfg.pool_mode)))
        if a is None:
            return x.new_zeros((0, x.shape[3] - m.cluster_size + 1))
        f, self.mid = self._stage(self.mid, a, ks - 1, lambda v: m.dropout(m.act2(
            _pool_detector(m.conv2(v), cfg.pool_det, cfg.pool_mode))))
        if f is None:
            return x.new_zeros((0, x.shape[3] - m.cluster_size + 1))
        out, self.features = self._stage(self.features, f, self.s - 1, lambda v: m._head(v)[0])
        if out is None:
            return x.new_zeros((0, x.shape[3] - m.cluster_size + 1))
        return out.flip(1) if self.mirrored else out


def row_stream(model, mirrored: bool = False) -> RowStream | None:
    """A :class:`RowStream` of a :class:`CNN4d` (``mirrored``: of its x-mirrored view), else
    ``None`` (other models have none)."""
    return RowStream(model, mirrored) if isinstance(model, CNN4d) else None
