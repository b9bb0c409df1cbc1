"""A deep ensemble of cluster models: the mean is the reconstruction, the spread its uncertainty.

Members are independently initialised copies of one architecture (a :class:`CNN4d` or a
:class:`RadialLinear`), trained on the same batches with their own initialisation and dropout
(Lakshminarayanan et al. 2017). ``predict_field`` returns the members' mean, so the ensemble
drops in wherever a single model is used; ``predict_field_members`` returns every member's
image, from which inference computes the per-pixel standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Mean of ``members`` (same cluster size and detector grid)."""

    def __init__(self, members: list[nn.Module]) -> None:
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

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) → (B,) mean of the members."""
        return self.forward_members(x).mean(0)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, K, K, ky, kx) → (M, B), one row per member."""
        return torch.stack([m(x) for m in self.members])

    def predict_field(self, x: torch.Tensor | np.ndarray, **kwargs) -> torch.Tensor:
        """Padded tile → (Ny, Nx) mean of the members (see the members' ``predict_field``)."""
        return self.predict_field_members(x, **kwargs).mean(0)

    def predict_field_members(self, x: torch.Tensor | np.ndarray, **kwargs) -> torch.Tensor:
        """Padded tile → (M, Ny, Nx), one image per member."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        return torch.stack([m.predict_field(x, **kwargs) for m in self.members])
