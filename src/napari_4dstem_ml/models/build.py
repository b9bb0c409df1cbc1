"""``build_model``: the model class of each config type (the one place that maps them).

:mod:`.config` holds the configs alone and imports no model module; the model modules import
their config from it, and this module imports both (so neither imports the other back).
"""

from __future__ import annotations

from torch import nn

from .cnn4d import CNN4d
from .config import CNN4dConfig, EnsembleConfig, LinearConfig, ModelConfig, ModelConfigError
from .ensemble import Ensemble
from .linear import RadialLinear

__all__ = ["MODEL_CLASSES", "build_model"]

#: the single-model class built for each config type (an ensemble is built of its members)
MODEL_CLASSES: dict[type, type[nn.Module]] = {LinearConfig: RadialLinear, CNN4dConfig: CNN4d}


def build_model(config: ModelConfig, detector_shape: tuple[int, int]) -> nn.Module:
    """Build the ``torch.nn.Module`` for ``config`` on patterns of ``detector_shape`` (ky, kx)."""
    if isinstance(config, EnsembleConfig):
        return Ensemble([build_model(config.member, detector_shape) for _ in range(config.size)],
                        mirror_average=config.mirror_average)
    for config_type, model_class in MODEL_CLASSES.items():
        if isinstance(config, config_type):
            return model_class(config, detector_shape)
    raise ModelConfigError(f"build_model: unknown config type {type(config).__name__}")
