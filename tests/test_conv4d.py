"""Conv4d against an independent float64 NumPy reference (loops over kernel offsets)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.models.conv4d import Conv4d, conv4d  # noqa: E402


def reference_conv4d(x, w, b, stride, padding):
    """out[n,o,p] = b[o] + sum_{c,i} w[o,c,i] x_pad[n,c,p*s+i], float64, loops over offsets i."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    k = w.shape[2:]
    n = [(xp.shape[2 + a] - k[a]) // stride[a] + 1 for a in range(4)]
    out = np.zeros((x.shape[0], w.shape[0], *n))
    for i in np.ndindex(*k):
        sl = tuple(slice(i[a], i[a] + stride[a] * (n[a] - 1) + 1, stride[a]) for a in range(4))
        out += np.einsum("oc,nc...->no...", w[(slice(None), slice(None), *i)], xp[(..., *sl)])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None, None, None]
    return out


CASES = [
    # in, out, kernel, stride, padding, input spatial
    (1, 2, (3, 3, 3, 3), (1, 1, 1, 1), (0, 0, 0, 0), (5, 5, 6, 6)),
    (3, 4, (1, 2, 3, 2), (1, 1, 1, 1), (0, 1, 2, 0), (4, 5, 6, 5)),
    (2, 3, (3, 1, 3, 3), (1, 1, 2, 2), (1, 0, 1, 1), (5, 4, 7, 8)),
    (2, 2, (2, 3, 1, 2), (2, 1, 1, 3), (1, 1, 0, 1), (6, 5, 4, 7)),
]


@pytest.mark.parametrize("cin,cout,k,s,p,spatial", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", ["fold3d", "im2col2d", "auto"])
def test_conv4d_matches_reference(cin, cout, k, s, p, spatial, bias, method):
    torch.manual_seed(1)
    layer = Conv4d(cin, cout, k, stride=s, padding=p, bias=bias, method=method)
    x = torch.randn(2, cin, *spatial)
    y = layer(x)
    ref = reference_conv4d(
        x.numpy(),
        layer.weight.detach().numpy(),
        None if layer.bias is None else layer.bias.detach().numpy(),
        s,
        p,
    )
    assert tuple(y.shape) == ref.shape
    assert tuple(y.shape[2:]) == layer.output_shape(spatial)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["fold3d", "im2col2d"])
def test_conv4d_float64_exact_and_int_kernel(method):
    torch.manual_seed(2)
    x = torch.randn(1, 2, 4, 5, 5, 4, dtype=torch.float64)
    w = torch.randn(3, 2, 2, 2, 2, 2, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = conv4d(x, w, b, stride=1, padding=1, method=method)
    ref = reference_conv4d(x.numpy(), w.numpy(), b.numpy(), (1,) * 4, (1,) * 4)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["fold3d", "im2col2d"])
def test_conv4d_gradcheck(method):
    torch.manual_seed(3)
    x = torch.randn(2, 2, 3, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv4d(x, w, b, (2, 1, 2, 1), (1, 1, 1, 0), method), (x, w, b)
    )


def test_conv4d_parameters_registered_and_initialised():
    layer = Conv4d(3, 5, (2, 3, 3, 2))
    names = dict(layer.named_parameters())
    assert set(names) == {"weight", "bias"}
    assert tuple(layer.weight.shape) == (5, 3, 2, 3, 3, 2)
    bound = 1 / math.sqrt(3 * 2 * 3 * 3 * 2)
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.8 * bound  # uniform over the full range, not all tiny
    assert layer.bias.abs().max() <= bound


def test_conv4d_bad_input():
    layer = Conv4d(2, 1, 3)
    with pytest.raises(ValueError, match="expects input"):
        layer(torch.zeros(2, 2, 5, 5, 5))
    with pytest.raises(ValueError, match="weight"):
        layer(torch.zeros(1, 3, 5, 5, 5, 5))
    with pytest.raises(ValueError, match="smaller than kernel"):
        layer(torch.zeros(1, 2, 5, 5, 2, 5))
    with pytest.raises(ValueError, match="method"):
        Conv4d(1, 1, 3, method="fft")
    with pytest.raises(ValueError, match="kernel_size"):
        Conv4d(1, 1, (3, 3, 3))
