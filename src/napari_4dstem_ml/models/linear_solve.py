"""Direct least-squares fit of the radially symmetric linear model.

The model ``out = Σ_g w_g Σ_r m_r F_{g,r} + b`` is *bilinear*: for fixed cluster weights w it
is linear in the radial profile m (and the bias), and for fixed m it is linear in w. Here
``F_{g,r}`` is the projection of the patterns of distance group g onto radial hat function r
(summed over the group's cluster positions). Alternating ridge least squares (ALS) reaches
the MSE optimum in a handful of iterations, without learning-rate tuning; each iteration
costs a few tiny (n_bins × n_bins) solves once the features are computed in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linear import RadialLinear, cluster_distance_groups

__all__ = ["ALSResult", "cluster_features", "fit_als", "fit_radial_linear", "fit_radial_linear_items"]


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """np.pad 'reflect' indexing (edge not repeated) for offsets up to n - 1."""
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def cluster_features(
    radial: np.ndarray, k: int, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Features ``(B, n_groups, n_bins)`` float64 for the clusters centred at (ys, xs).

    ``radial`` ``(Ny, Nx, n_bins)``: each preprocessed pattern projected on the radial hat
    functions (pattern @ interpolation matrix). Clusters are K × K, edges by reflection;
    positions at equal distance from the centre are summed into their group.
    """
    ny, nx, nb = radial.shape
    groups, _ = cluster_distance_groups(k)
    n_groups = int(groups.max()) + 1
    out = np.zeros((len(ys), n_groups, nb), np.float64)
    h = k // 2
    for dy in range(-h, h + 1):
        yy = _reflect(ys + dy, ny)
        for dx in range(-h, h + 1):
            xx = _reflect(xs + dx, nx)
            out[:, groups[dy + h, dx + h]] += radial[yy, xx]
    return out


@dataclass(frozen=True)
class ALSResult:
    """Fitted parameters and the training MSE after each iteration."""

    w: np.ndarray
    m: np.ndarray
    bias: float
    mse: list[float]


def _ridge(x: np.ndarray, y: np.ndarray, lam: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Least squares with an unpenalised last column (the bias) and relative ridge ``lam``
    pulling the other coefficients towards ``prior`` (default 0)."""
    a = x.T @ x
    scale = float(np.trace(a[:-1, :-1])) / max(a.shape[0] - 1, 1)
    reg = np.eye(a.shape[0]) * lam * max(scale, 1e-30)
    reg[-1, -1] = 0.0
    rhs = x.T @ y
    if prior is not None:
        rhs = rhs + reg[:, :-1] @ np.asarray(prior, np.float64)
    return np.linalg.solve(a + reg, rhs)


def fit_als(
    features: np.ndarray,
    target: np.ndarray,
    w0: np.ndarray,
    *,
    iterations: int = 30,
    ridge: float = 1e-6,
    tol: float = 1e-7,
    m0: np.ndarray | None = None,
    prior_weight: float | None = None,
) -> ALSResult:
    """Alternate ridge solves for m (w fixed) and w (m fixed) on ``features`` (B, G, R).

    ``w0`` (G,) starts the iteration (e.g. 1 at the centre, 0 elsewhere). The scale
    ambiguity (w·c, m/c) is fixed by keeping the centre weight w[0] = ±1 in the end.
    ``prior_weight`` with ``m0``: a relative ridge of that weight pulls (m, w) towards
    (``m0``, ``w0``) instead of 0 (fine-tuning a fitted model on new data).
    """
    f = np.asarray(features, np.float64)
    y = np.asarray(target, np.float64)
    b_, g_, r_ = f.shape
    ones = np.ones((b_, 1))
    w = np.asarray(w0, np.float64).copy()
    m = np.zeros(r_)
    bias = 0.0
    history: list[float] = []
    lam = ridge if prior_weight is None else max(ridge, float(prior_weight))
    pm = None if prior_weight is None or m0 is None else np.asarray(m0, np.float64)
    pw = None if pm is None else np.asarray(w0, np.float64)
    for _ in range(iterations):
        xm = np.einsum("bgr,g->br", f, w)
        sol = _ridge(np.hstack([xm, ones]), y, lam, pm)
        m, bias = sol[:-1], sol[-1]
        xw = np.einsum("bgr,r->bg", f, m)
        sol = _ridge(np.hstack([xw, ones]), y, lam, pw)
        w, bias = sol[:-1], sol[-1]
        mse = float(np.mean((xw @ w + bias - y) ** 2))
        history.append(mse)
        if len(history) > 1 and history[-2] - mse <= tol * max(history[-2], 1e-30):
            break
    c = w[0] if abs(w[0]) > 1e-12 else (np.max(np.abs(w)) or 1.0)
    return ALSResult(w / c, m * c, float(bias), history)


def fit_radial_linear(
    model: RadialLinear,
    field: np.ndarray,
    target: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    **kwargs,
) -> ALSResult:
    """Fit ``model`` in place on the preprocessed ``field`` ``(Ny, Nx, oy, ox)`` (an array, or
    a :class:`~napari_4dstem_ml.training.clusters.PatternSource`) so that the clusters
    centred at (ys, xs) map to ``target`` (same length); returns the fit."""
    import torch

    interp = model.interp.detach().cpu().numpy().astype(np.float64)
    if hasattr(field, "rows"):  # a training PatternSource: rows come preprocessed
        ny, nx = field.scan_shape

        def get(y0: int, y1: int) -> np.ndarray:
            return field.rows(np.arange(y0, y1))
    else:
        ny, nx = field.shape[:2]

        def get(y0: int, y1: int) -> np.ndarray:
            return field[y0:y1]

    radial = np.empty((ny, nx, interp.shape[1]), np.float64)
    for y0 in range(0, ny, 16):  # row bands keep the float64 temporaries small
        block = np.asarray(get(y0, min(ny, y0 + 16)), np.float64)
        radial[y0 : y0 + len(block)] = block.reshape(len(block), nx, -1) @ interp
    feats = cluster_features(radial, model.cluster_size, np.asarray(ys), np.asarray(xs))
    w0 = np.zeros(feats.shape[1])
    w0[0] = 1.0
    res = fit_als(feats, target, w0, **kwargs)
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(res.w).to(model.w))
        model.m.copy_(torch.from_numpy(res.m).to(model.m))
        model.bias.copy_(torch.tensor(res.bias).to(model.bias))
    return res


def _radial_field(model: RadialLinear, field) -> np.ndarray:
    """Every preprocessed pattern of ``field`` (array or PatternSource) projected on the radial
    hat functions → ``(Ny, Nx, n_bins)`` float64."""
    interp = model.interp.detach().cpu().numpy().astype(np.float64)
    if hasattr(field, "rows"):
        ny, nx = field.scan_shape

        def get(y0: int, y1: int) -> np.ndarray:
            return field.rows(np.arange(y0, y1))
    else:
        ny, nx = field.shape[:2]

        def get(y0: int, y1: int) -> np.ndarray:
            return field[y0:y1]

    radial = np.empty((ny, nx, interp.shape[1]), np.float64)
    for y0 in range(0, ny, 16):
        block = np.asarray(get(y0, min(ny, y0 + 16)), np.float64)
        radial[y0 : y0 + len(block)] = block.reshape(len(block), nx, -1) @ interp
    return radial


def fit_radial_linear_items(
    model: RadialLinear,
    items: list,
    *,
    bootstrap: np.random.Generator | None = None,
    prior: float | None = None,
    **kwargs,
) -> ALSResult:
    """Fit ``model`` in place on several fields at once: ``items`` holds
    ``(field, target (Ny, Nx), ys, xs)``, the targets read at (ys, xs). ``bootstrap``: fit on a
    resample (with replacement) of the positions (ensemble members). ``prior``: a relative
    ridge of that weight towards the model's current weights (fine-tuning)."""
    import torch

    feats, targets = [], []
    for field, target, ys, xs in items:
        if len(ys) == 0:
            continue
        radial = _radial_field(model, field)
        feats.append(cluster_features(radial, model.cluster_size, np.asarray(ys), np.asarray(xs)))
        targets.append(np.asarray(target)[ys, xs])
    f = np.concatenate(feats)
    t = np.concatenate(targets)
    if bootstrap is not None:
        pick = bootstrap.integers(0, len(t), len(t))
        f, t = f[pick], t[pick]
    if prior is not None:
        w0 = model.w.detach().cpu().numpy().astype(np.float64)
        m0 = model.m.detach().cpu().numpy().astype(np.float64)
        res = fit_als(f, t, w0, m0=m0, prior_weight=prior, **kwargs)
    else:
        w0 = np.zeros(f.shape[1])
        w0[0] = 1.0
        res = fit_als(f, t, w0, **kwargs)
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(res.w).to(model.w))
        model.m.copy_(torch.from_numpy(res.m).to(model.m))
        model.bias.copy_(torch.tensor(res.bias).to(model.bias))
    return res
