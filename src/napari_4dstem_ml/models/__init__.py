"""Models mapping a K×K cluster of preprocessed diffraction patterns to one intensity.

Importing this package imports torch; ``napari_4dstem_ml`` itself does not import it.

Interface (all models are ``torch.nn.Module``; axis order (scan_y, scan_x, ky, kx)):

- ``LinearConfig(cluster_size=5, n_radial_bins=32, r_max=None, mask_init="bright_field",
  init_radius_fraction=0.25)``, ``kind == "linear"``.
- ``CNN4dConfig(cluster_size=5, channels=(8, 16), kernel_scan=3, kernel_det=3,
  input_pool=2, pool_det=2, pool_mode="max", activation="leaky_relu", dropout=0.2)``,
  ``kind == "conv4d"``.
- Both configs are frozen dataclasses with ``to_dict()`` (JSON-safe) and ``from_dict(d)``;
  ``config_from_dict(d)`` dispatches on ``d["kind"]``; bad values raise ``ModelConfigError``
  (a ``ValueError``).
- ``build_model(config, detector_shape=(ky, kx)) -> nn.Module`` (``RadialLinear``, ``CNN4d`` or
  ``Ensemble``; :mod:`.build` maps each config type to its model class, :mod:`.config` imports
  no model module).
- ``model.cluster_size`` (K), ``model.detector_shape``, ``model.config``.
- ``model.forward(x)``: x float32 ``(B, K, K, ky, kx)`` (cluster centre at [K//2, K//2]) → ``(B,)``.
- ``model.predict_field(x)``: x ``(Ny+K-1, Nx+K-1, ky, kx)`` (a padded tile; torch tensor or
  NumPy array) → ``(Ny, Nx)`` float32 tensor on the model's device, equal to ``forward`` on the
  cluster around every position (eval mode), fully convolutional over the scan axes.
- ``RadialLinear``: ``detector_mask() -> (ky, kx)`` float32, ``cluster_weights() -> (K, K)``,
  ``radial_profile() -> (r_px, m)``, ``export_detector_mask(path) -> Path`` (``.npy``).
- ``EnsembleConfig(member=CNN4dConfig(), size=3, mirror_average=None)``, ``kind == "ensemble"``:
  an ``Ensemble`` of ``size`` independently initialised members; ``predict_field`` is their mean,
  ``predict_field_members`` / ``forward_members`` give every member (uncertainty); with
  ``mirror_average`` (default for CNN members) in eval mode each member also on the x-mirrored
  input (scan x and kx flipped), its output mirrored back: 2 × ``size`` rows.
- ``Conv4d(in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True)`` on
  ``(B, C, D0, D1, D2, D3)``; functional ``conv4d(x, weight, bias, stride, padding)``.
"""

from .build import build_model
from .cnn4d import CNN4d
from .config import (
    CNN4dConfig,
    EnsembleConfig,
    LinearConfig,
    ModelConfig,
    ModelConfigError,
    config_from_dict,
)
from .conv4d import Conv4d, conv4d
from .ensemble import Ensemble
from .linear import RadialLinear

__all__ = [
    "CNN4d",
    "CNN4dConfig",
    "Conv4d",
    "Ensemble",
    "EnsembleConfig",
    "LinearConfig",
    "ModelConfig",
    "ModelConfigError",
    "RadialLinear",
    "build_model",
    "config_from_dict",
    "conv4d",
]
