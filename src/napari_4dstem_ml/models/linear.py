"""Radially symmetric linear model: cluster weights w(|r|) times one detector filter m(|k|).

For a K×K cluster of preprocessed patterns I_j (cluster position r_j in scan steps from the
centre, detector pixel k):

    out = sum_j w(|r_j|) * sum_k m(|k|) I_j(k) + b

w has one weight per distinct distance |r_j| (grouped exactly by the integer dy² + dx²);
m is linearly interpolated from ``n_radial_bins`` nodes evenly spaced over [0, r_max]
(detector pixels from the geometric detector centre ((ky-1)/2, (kx-1)/2); zero beyond r_max).
The model factorises: one virtual image with mask m, then a K×K convolution with w.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import LinearConfig

__all__ = ["RadialLinear", "radial_interpolation_matrix", "cluster_distance_groups"]


def cluster_distance_groups(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Group index ``(K, K)`` int64 of each cluster position and the distinct r² (scan steps²)."""
    d = np.arange(k) - k // 2
    r2 = d[:, None] ** 2 + d[None, :] ** 2
    values, index = np.unique(r2, return_inverse=True)
    return index.reshape(k, k).astype(np.int64), values.astype(np.int64)


def radial_interpolation_matrix(
    detector_shape: tuple[int, int], n_bins: int, r_max: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Hat-function matrix ``P`` (ky*kx, n_bins) float64 with ``mask = P @ m``.

    Returns ``(P, r_nodes, r_max)``: nodes evenly spaced over [0, r_max] detector pixels from
    the geometric centre; pixels beyond r_max get zero rows.
    """
    ky, kx = detector_shape
    y = np.arange(ky) - (ky - 1) / 2
    x = np.arange(kx) - (kx - 1) / 2
    r = np.hypot(y[:, None], x[None, :]).ravel()
    if r_max is None:
        r_max = float(np.hypot((ky - 1) / 2, (kx - 1) / 2)) or 1.0
    nodes = np.linspace(0.0, r_max, n_bins)
    step = nodes[1] - nodes[0]
    t = r / step
    i0 = np.clip(np.floor(t).astype(np.int64), 0, n_bins - 2)
    frac = t - i0
    p = np.zeros((r.size, n_bins))
    inside = r <= r_max * (1 + 1e-12)
    rows = np.nonzero(inside)[0]
    p[rows, i0[rows]] = 1.0 - frac[rows]
    p[rows, i0[rows] + 1] = frac[rows]
    return p, nodes, float(r_max)


class RadialLinear(nn.Module):
    """Linear cluster model; see the module docstring. Input patterns are preprocessed."""

    def __init__(self, config: LinearConfig, detector_shape: tuple[int, int]) -> None:
        super().__init__()
        ky, kx = (int(v) for v in detector_shape)
        if ky < 1 or kx < 1:
            raise ValueError(f"RadialLinear: detector_shape must be positive, got {detector_shape}")
        self.config = config
        self.detector_shape = (ky, kx)
        self.cluster_size = config.cluster_size
        k = config.cluster_size
        groups, r2 = cluster_distance_groups(k)
        p, nodes, r_max = radial_interpolation_matrix((ky, kx), config.n_radial_bins, config.r_max)
        self.r_max = r_max
        self.register_buffer("group_index", torch.from_numpy(groups))
        self.register_buffer("cluster_r2", torch.from_numpy(r2))
        self.register_buffer("interp", torch.from_numpy(p.astype(np.float32)))
        self.register_buffer("r_nodes", torch.from_numpy(nodes.astype(np.float32)))
        w = torch.zeros(len(r2))
        w[0] = 1.0  # r² = 0 is the cluster centre
        self.w = nn.Parameter(w)
        self.m = nn.Parameter(self._initial_profile(config, nodes, p))
        self.bias = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _initial_profile(config: LinearConfig, nodes: np.ndarray, p: np.ndarray) -> torch.Tensor:
        n = config.n_radial_bins
        if config.mask_init == "zeros":
            return torch.zeros(n)
        if config.mask_init == "random":
            return torch.randn(n) * (1.0 / np.sqrt(p.shape[0]))
        m = (nodes <= config.init_radius_fraction * nodes[-1]).astype(np.float64)
        total = (p @ m).sum()
        return torch.from_numpy(m / total if total > 0 else m).float()

    # ---- learned filters -------------------------------------------------------------
    def _mask_flat(self) -> torch.Tensor:
        return self.interp @ self.m

    def _cluster_kernel(self) -> torch.Tensor:
        return self.w[self.group_index]

    def detector_mask(self) -> np.ndarray:
        """The learned detector filter m on the detector grid, ``(ky, kx)`` float32."""
        with torch.no_grad():
            return self._mask_flat().reshape(self.detector_shape).cpu().numpy().astype(np.float32)

    def cluster_weights(self) -> np.ndarray:
        """Weights w(|r|) on the K×K cluster (centre at [K//2, K//2]), float32."""
        with torch.no_grad():
            return self._cluster_kernel().cpu().numpy().astype(np.float32)

    def radial_profile(self) -> tuple[np.ndarray, np.ndarray]:
        """``(r_px, m)``: node radii in detector pixels and the filter values there."""
        with torch.no_grad():
            return self.r_nodes.cpu().numpy().copy(), self.m.detach().cpu().numpy().copy()

    def export_detector_mask(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save ``detector_mask()`` as a ``.npy`` file (float32, (ky, kx)) through the package's
        one writing path (:func:`napari_4dstem_ml.export.write_image`); returns the path."""
        from ..export import write_image

        path = Path(path)
        if path.suffix != ".npy":
            path = path.with_suffix(".npy")
        return write_image(path, self.detector_mask(), overwrite=overwrite)

    # ---- evaluation ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) float32 → (B,) intensities."""
        k = self.cluster_size
        if x.dim() != 5 or tuple(x.shape[1:]) != (k, k, *self.detector_shape):
            raise ValueError(
                f"RadialLinear.forward expects (B, {k}, {k}, {self.detector_shape[0]}, "
                f"{self.detector_shape[1]}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        v = x.reshape(b, k * k, -1) @ self._mask_flat()  # (B, K*K) virtual intensities
        return v @ self._cluster_kernel().reshape(-1) + self.bias

    def virtual_image(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Virtual image with mask m of patterns ``x`` (Ny, Nx, ky, kx) → (Ny, Nx) tensor."""
        if isinstance(x, torch.Tensor) and (
            x.device.type != "cpu" or (torch.is_grad_enabled() and self.m.requires_grad)
        ):
            return (x.reshape(*x.shape[:2], -1) @ self._mask_flat()).to(torch.float32)
        from ..detectors.engine import virtual_images

        data = x.detach().numpy() if isinstance(x, torch.Tensor) else x
        return torch.from_numpy(np.asarray(virtual_images(data, self.detector_mask())))

    def predict_field(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Padded tile ``x`` (Ny+K-1, Nx+K-1, ky, kx) → (Ny, Nx): virtual image, then K×K conv."""
        k = self.cluster_size
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[2:] != self.detector_shape or min(shape[:2]) < k:
            raise ValueError(
                f"RadialLinear.predict_field expects (Ny+{k - 1}, Nx+{k - 1}, "
                f"{self.detector_shape[0]}, {self.detector_shape[1]}) with Ny, Nx >= 1, got {shape}"
            )
        img = self.virtual_image(x).to(self.w.device)
        out = F.conv2d(img[None, None], self._cluster_kernel()[None, None])
        return out[0, 0] + self.bias
