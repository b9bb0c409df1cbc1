"""A deep ensemble of cluster models: the mean is the reconstruction, the spread its uncertainty.

Members are independently initialised copies of one architecture (a :class:`CNN4d` or a
:class:`RadialLinear`), trained on the same batches with their own initialisation and dropout
(Lakshminarayanan et al. 2017). ``predict_field`` returns the members' mean, so the ensemble
drops in wherever a single model is used; ``predict_field_members`` returns every member's
image, from which inference computes the per-pixel standard deviation.

With ``mirror_average`` (eval mode only: training steps see each member once) every member is
also applied to the scan mirrored along x — scan x and detector kx flipped together, one of
the joint symmetries training augments — and its image mirrored back: 2 M images. Training's
validation (which epoch is kept) reads the members alone (:meth:`Ensemble.single_view`), so
the option changes how a model is applied, not how it is trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Mean of ``members`` (same cluster size and detector grid); ``mirror_average``: in eval
    mode each member's prediction on the x-mirrored input (mirrored back) joins them."""

    def __init__(self, members: list[nn.Module], mirror_average: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        ks = {int(m.cluster_size) for m in members}
        shapes = {tuple(m.detector_shape) for m in members}
        if len(ks) != 1 or len(shapes) != 1:
            raise ValueError(f"ensemble members disagree: cluster sizes {ks}, detectors {shapes}")
        self.members = nn.ModuleList(members)
        self.cluster_size = ks.pop()
        self.detector_shape = shapes.pop()
        self.mirror_average = bool(mirror_average)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) → (B,) mean of the members."""
        return self.forward_members(x).mean(0)

    @contextmanager
    def single_view(self) -> Iterator[Ensemble]:
        """Within the block, predictions read the members alone (``mirror_average`` off)."""
        keep = self.mirror_average
        self.mirror_average = False
        try:
            yield self
        finally:
            self.mirror_average = keep

    @property
    def mirrored(self) -> bool:
        """Whether a prediction now averages the mirrored views (``mirror_average``, eval mode)."""
        return self.mirror_average and not self.training

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) → (M, B), one row per member; (2 M, B) when
        :attr:`mirrored` (the members on the clusters flipped along scan x and kx)."""
        out = [m(x) for m in self.members]
        if self.mirrored:
            xm = x.flip((2, 4))
            out += [m(xm) for m in self.members]
        return torch.stack(out)

    def predict_field(self, x: torch.Tensor | np.ndarray, **kwargs) -> torch.Tensor:
        """Padded tile → (Ny, Nx) mean of the members (see the members' ``predict_field``)."""
        return self.predict_field_members(x, **kwargs).mean(0)

    def predict_field_members(self, x: torch.Tensor | np.ndarray, **kwargs) -> torch.Tensor:
        """Padded tile (Sy, Sx, ky, kx) → (M, Ny, Nx), one image per member; (2 M, Ny, Nx)
        when :attr:`mirrored` (each member on the tile flipped along scan x and kx, its image
        flipped back)."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        out = [m.predict_field(x, **kwargs) for m in self.members]
        if self.mirrored:
            xm = x.flip((1, 3))
            out += [m.predict_field(xm, **kwargs).flip(1) for m in self.members]
        return torch.stack(out)
