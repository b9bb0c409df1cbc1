"""A 4D convolution built from batched 3D convolutions.

Input ``(B, C, D0, D1, D2, D3)`` (for 4D-STEM: channels, scan_y, scan_x, ky, kx), weight
``(out_channels, in_channels, k0, k1, k2, k3)``. Like every PyTorch convolution this is a
cross-correlation: ``out[b, o, p0.., p3] = bias[o] + sum_{c, i0..i3} w[o, c, i0..i3] *
x[b, c, p0*s0 + i0 - pad0, ..., p3*s3 + i3 - pad3]`` (zero padding).

Axis 0 is folded into the batch: for each kernel slice ``i0`` one ``F.conv3d`` runs over the
remaining three axes of all the (strided) input slices that slice meets, and the ``k0``
results are summed. There is no Python loop over positions. For few input channels (a first
layer on one-channel patterns, where oneDNN's conv3d is slow) the ``k0·k1`` shifted copies
along axes 0 and 1 are stacked as channels instead and one ``F.conv2d`` runs over axes 2, 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv4d", "conv4d"]


def _tuple4(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int, int, int]:
    if isinstance(value, int):
        out = (value,) * 4
    else:
        out = tuple(int(v) for v in value)
    if len(out) != 4 or any(v < minimum for v in out):
        raise ValueError(f"Conv4d {name} must be an int or 4 ints >= {minimum}, got {value!r}")
    return out  # type: ignore[return-value]


def _im2col2d(x, weight, bias, s, p, n0, n1):
    """Unfold kernel axes 0 and 1 into channels, then one conv2d over axes 2 and 3."""
    b, c = x.shape[:2]
    o, _, k0, k1 = weight.shape[:4]
    xs = x.permute(0, 2, 3, 1, 4, 5)  # (B, D0, D1, C, D2, D3)
    if p[0] or p[1]:
        xs = F.pad(xs, (0, 0) * 3 + (p[1], p[1], p[0], p[0]))
    cols = torch.stack(
        [
            xs[:, i0 : i0 + s[0] * (n0 - 1) + 1 : s[0], i1 : i1 + s[1] * (n1 - 1) + 1 : s[1]]
            for i0 in range(k0)
            for i1 in range(k1)
        ],
        3,
    )  # (B, n0, n1, k0*k1, C, D2, D3)
    cols = cols.view(b * n0 * n1, k0 * k1 * c, *x.shape[4:])
    cols = cols.contiguous(memory_format=torch.channels_last)
    w = weight.permute(0, 2, 3, 1, 4, 5).reshape(o, k0 * k1 * c, *weight.shape[4:])
    y = F.conv2d(cols, w, bias, stride=s[2:], padding=p[2:])
    return y.view(b, n0, n1, o, *y.shape[2:]).permute(0, 3, 1, 2, 4, 5)


def conv4d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    method: str = "auto",
) -> torch.Tensor:
    """Functional 4D cross-correlation; see the module docstring for shapes and formula.

    ``method``: ``"fold3d"`` (fold axis 0 into the batch, one conv3d per kernel slice),
    ``"im2col2d"`` (stack the k0·k1 scan-shifted copies as channels, one conv2d; faster when
    ``in_channels`` is small, e.g. a first layer on one-channel patterns) or ``"auto"``
    (``im2col2d`` when ``in_channels · k0 · k1 <= 16``).
    """
    if x.dim() != 6:
        raise ValueError(f"conv4d expects input (B, C, D0, D1, D2, D3), got shape {tuple(x.shape)}")
    if weight.dim() != 6 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv4d weight must be (out, {x.shape[1]}, k0, k1, k2, k3), got {tuple(weight.shape)}"
        )
    s = _tuple4(stride, "stride", 1)
    p = _tuple4(padding, "padding", 0)
    b, c, d0 = x.shape[:3]
    rest = x.shape[3:]
    o, _, k0 = weight.shape[:3]
    d0p = d0 + 2 * p[0]
    n0 = (d0p - k0) // s[0] + 1
    for a in range(4):
        if x.shape[2 + a] + 2 * p[a] < weight.shape[2 + a]:
            raise ValueError(
                f"conv4d: input axis {a} of size {x.shape[2 + a]} (padding {p[a]}) is smaller "
                f"than kernel {weight.shape[2 + a]}"
            )
    if method == "auto":
        method = "im2col2d" if c * k0 * weight.shape[3] <= 16 else "fold3d"
    if method == "im2col2d":
        n1 = (x.shape[3] + 2 * p[1] - weight.shape[3]) // s[1] + 1
        return _im2col2d(x, weight, bias, s, p, n0, n1)
    if method != "fold3d":
        raise ValueError(f"conv4d method must be 'auto', 'fold3d' or 'im2col2d', got {method!r}")
    # (B, D0, C, D1, D2, D3): axis 0 next to the batch so that slices fold into it cheaply
    xf = x.transpose(1, 2)
    if p[0]:
        xf = F.pad(xf, (0, 0) * 4 + (p[0], p[0]))
    xf = xf.contiguous()
    out = None
    for i in range(k0):
        sl = xf[:, i : i + s[0] * (n0 - 1) + 1 : s[0]]
        y = F.conv3d(
            sl.reshape(b * n0, c, *rest), weight[:, :, i], None, stride=s[1:], padding=p[1:]
        )
        out = y if out is None else out.add_(y)
    assert out is not None
    if bias is not None:
        out = out + bias.view(1, o, 1, 1, 1)
    return out.view(b, n0, o, *out.shape[2:]).transpose(1, 2)


class Conv4d(nn.Module):
    """4D convolution layer (cross-correlation), input ``(B, C, D0, D1, D2, D3)``.

    ``kernel_size``, ``stride`` and ``padding`` are an int or one value per axis; padding is
    zero padding on both sides; ``method`` as in ``conv4d``. Parameters are initialised like ``torch.nn.ConvNd``
    (Kaiming-uniform weights with ``a = sqrt(5)``, uniform bias in ``±1/sqrt(fan_in)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        method: str = "auto",
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Conv4d channels must be >= 1, got in={in_channels}, out={out_channels}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _tuple4(kernel_size, "kernel_size", 1)
        self.stride = _tuple4(stride, "stride", 1)
        self.padding = _tuple4(padding, "padding", 0)
        if method not in ("auto", "fold3d", "im2col2d"):
            raise ValueError(
                f"Conv4d method must be 'auto', 'fold3d' or 'im2col2d', got {method!r}"
            )
        self.method = method
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, int, int, int]:
        """Output sizes of the four convolved axes for input sizes ``spatial``."""
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - k) // s + 1
            for n, k, s, p in zip(spatial, self.kernel_size, self.stride, self.padding)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv4d(x, self.weight, self.bias, self.stride, self.padding, self.method)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )
