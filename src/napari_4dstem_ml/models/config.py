"""Model configurations (frozen, JSON-safe); no model module is imported here.

Each config has a ``kind`` field (``"linear"`` or ``"conv4d"``) that ``config_from_dict``
dispatches on, so a checkpoint can store ``config.to_dict()`` and rebuild the model with
``build_model(config_from_dict(d), detector_shape)`` (:mod:`.build`, which maps each
config type to its model class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "ModelConfigError",
    "LinearConfig",
    "CNN4dConfig",
    "EnsembleConfig",
    "ModelConfig",
    "config_from_dict",
    "member_config",
]

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu")
POOL_MODES = ("max", "avg")
MASK_INITS = ("bright_field", "zeros", "random")


class ModelConfigError(ValueError):
    """A model configuration parameter is out of range or of the wrong kind."""


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ModelConfigError(f"{name} must be one of {choices}, got {value!r}")


class _ConfigMixin:
    """``to_dict``/``from_dict`` shared by the model configs."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        kind = d.pop("kind", cls.kind)  # type: ignore[attr-defined]
        if kind != cls.kind:  # type: ignore[attr-defined]
            raise ModelConfigError(
                f"{cls.__name__}.from_dict: kind must be {cls.kind!r}, got {kind!r}"  # type: ignore[attr-defined]
            )
        known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"{cls.__name__}: unknown parameter(s) {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class LinearConfig(_ConfigMixin):
    """Radially symmetric linear model (``RadialLinear``).

    ``cluster_size`` K (odd) in scan positions; ``n_radial_bins`` nodes of the detector filter
    m(|k|), evenly spaced over [0, ``r_max``] in detector pixels (``None``: distance from the
    detector centre to a corner). ``mask_init``: ``"bright_field"`` (m = 1 for |k| <
    ``init_radius_fraction`` · r_max, normalised to unit sum), ``"zeros"`` or ``"random"``.
    """

    cluster_size: int = 5
    n_radial_bins: int = 32
    r_max: float | None = None
    mask_init: str = "bright_field"
    init_radius_fraction: float = 0.25
    kind: str = field(default="linear", init=False)

    def __post_init__(self) -> None:
        _check_int("cluster_size", self.cluster_size, 1)
        if self.cluster_size % 2 != 1:
            raise ModelConfigError(f"cluster_size must be odd, got {self.cluster_size}")
        _check_int("n_radial_bins", self.n_radial_bins, 2)
        if self.r_max is not None and not float(self.r_max) > 0:
            raise ModelConfigError(f"r_max must be > 0 detector pixels or None, got {self.r_max!r}")
        _check_choice("mask_init", self.mask_init, MASK_INITS)
        if not 0 < float(self.init_radius_fraction) <= 1:
            raise ModelConfigError(
                f"init_radius_fraction must be in (0, 1], got {self.init_radius_fraction!r}"
            )


@dataclass(frozen=True)
class CNN4dConfig(_ConfigMixin):
    """4D CNN (``CNN4d``): [avg-pool ``input_pool``] → Conv4d → pool → act → Conv4d → pool →
    act → dropout → dense.

    ``cluster_size`` K (odd); ``channels`` of the two convolutions; ``kernel_scan`` /
    ``kernel_det`` kernel sizes over the scan / detector axes (scan: valid, detector: same
    padding, so ``kernel_det`` must be odd); ``input_pool`` detector binning (average) before
    the first convolution; ``pool_det`` pooling (``pool_mode``) over the detector axes after
    each convolution; ``activation``; ``dropout`` probability before the dense layer.
    """

    cluster_size: int = 5
    channels: tuple[int, int] = (8, 16)
    kernel_scan: int = 3
    kernel_det: int = 3
    input_pool: int = 2
    pool_det: int = 2
    pool_mode: str = "max"
    activation: str = "leaky_relu"
    dropout: float = 0.2
    kind: str = field(default="conv4d", init=False)

    def __post_init__(self) -> None:
        ch = self.channels
        if isinstance(ch, int) or len(ch) != 2:
            raise ModelConfigError(f"channels must be two integers, got {ch!r}")
        object.__setattr__(self, "channels", tuple(ch))
        for c in self.channels:
            _check_int("channels", c, 1)
        _check_int("cluster_size", self.cluster_size, 1)
        if self.cluster_size % 2 != 1:
            raise ModelConfigError(f"cluster_size must be odd, got {self.cluster_size}")
        _check_int("kernel_scan", self.kernel_scan, 1)
        if self.cluster_size - 2 * (self.kernel_scan - 1) < 1:
            raise ModelConfigError(
                f"two scan convolutions of kernel_scan={self.kernel_scan} do not fit in a "
                f"cluster of cluster_size={self.cluster_size} (need K >= 2*kernel_scan - 1)"
            )
        _check_int("kernel_det", self.kernel_det, 1)
        if self.kernel_det % 2 != 1:
            raise ModelConfigError(f"kernel_det must be odd, got {self.kernel_det}")
        _check_int("input_pool", self.input_pool, 1)
        _check_int("pool_det", self.pool_det, 1)
        _check_choice("pool_mode", self.pool_mode, POOL_MODES)
        _check_choice("activation", self.activation, ACTIVATIONS)
        if not 0 <= float(self.dropout) < 1:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class EnsembleConfig:
    """A deep ensemble (``Ensemble``): ``size`` independently initialised copies of the
    ``member`` model, trained on the same batches; the prediction is their mean and the
    per-pixel spread (standard deviation) their uncertainty.

    ``mirror_average`` (``None``: on for CNN members, off for linear ones): at inference (eval
    mode) every member also sees the scan mirrored — scan x and detector kx flipped together, a
    symmetry training augments — and its prediction, mirrored back, joins the others: 2 ×
    ``size`` images for the mean and the spread, twice the model's cost
    (``benchmarks/mirror_average.py``). Rows keep their order, so a live scan streams it as it
    streams the members. Checkpoints written before it existed read as ``False``."""

    member: LinearConfig | CNN4dConfig = field(default_factory=CNN4dConfig)
    size: int = 3
    mirror_average: bool | None = None
    kind: str = field(default="ensemble", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.member, (LinearConfig, CNN4dConfig)):
            raise ModelConfigError(
                f"ensemble member must be a LinearConfig or CNN4dConfig, got {self.member!r}"
            )
        _check_int("size", self.size, 1)
        if self.size > 32:
            raise ModelConfigError(f"ensemble size must be <= 32, got {self.size}")
        cnn = isinstance(self.member, CNN4dConfig)
        if self.mirror_average is None:
            object.__setattr__(self, "mirror_average", cnn)
        if not isinstance(self.mirror_average, bool):
            raise ModelConfigError(f"mirror_average must be True or False, got {self.mirror_average!r}")
        if self.mirror_average and not cnn:
            raise ModelConfigError("mirror_average needs CNN members (a linear model is applied "
                                   "as virtual images, with no mirrored pass to average)")

    @property
    def cluster_size(self) -> int:
        return self.member.cluster_size

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "mirror_average": self.mirror_average,
                "member": self.member.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleConfig:
        d = dict(d)
        if d.pop("kind", "ensemble") != "ensemble":
            raise ModelConfigError("EnsembleConfig.from_dict: kind must be 'ensemble'")
        unknown = sorted(set(d) - {"size", "member", "mirror_average"})
        if unknown:
            raise ModelConfigError(f"EnsembleConfig: unknown parameter(s) {unknown}")
        member = config_from_dict(d.get("member") or {})
        if isinstance(member, EnsembleConfig):
            raise ModelConfigError("an ensemble's member cannot be an ensemble")
        # written before mirror averaging existed: as it was made
        return cls(member=member, size=d.get("size", 3),
                   mirror_average=d.get("mirror_average", False))


ModelConfig = LinearConfig | CNN4dConfig | EnsembleConfig

_KINDS: dict[str, type] = {"linear": LinearConfig, "conv4d": CNN4dConfig, "ensemble": EnsembleConfig}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a model config from ``to_dict()`` output, dispatching on ``d["kind"]``."""
    if not isinstance(d, dict):
        raise ModelConfigError(f"a model config must be a mapping, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ModelConfigError(f"model config 'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind].from_dict(d)


def member_config(config: ModelConfig) -> LinearConfig | CNN4dConfig:
    """The single-model config of ``config`` (the member of an ensemble)."""
    return config.member if isinstance(config, EnsembleConfig) else config

