"""The comparison as a figure a user would put on a slide (matplotlib, Agg; no GUI).

One row of panels (two when there are more than four), the reference last and framed; each
panel titled with its method and, beneath it, what it is and its scores against the reference
(Pearson r, SSIM); a scale bar in the first panel; the region the scores were computed over
outlined in every panel and explained in a legend. Written through
:func:`napari_4dstem_ml.export.output_file` (complete or nothing; never over a file unasked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: lengths a scale bar may show (in the image's unit)
NICE = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def scale_bar_length(width: float, fraction: float = 0.25) -> float:
    """A round length close to ``fraction`` of ``width`` (same unit)."""
    target = fraction * width
    fits = [n for n in NICE if n <= target]
    return fits[-1] if fits else target


def comparison_slide(
    path: str | Path,
    images: Sequence,
    table=None,
    *,
    pixel_size: float | None = None,
    unit: str = "Å",
    kinds: Mapping[str, str] | None = None,
    title: str = "",
    overwrite: bool = False,
    dpi: int = 150,
) -> Path:
    """Write the comparison figure (PNG) to ``path``; returns the path.

    ``images``: :class:`~napari_4dstem_ml.comparison.MethodImage` s (name, role, image
    ``(Ny, Nx)``); ``table``: the :class:`~napari_4dstem_ml.comparison.ComparisonTable` of
    their scores (its reference drawn last, framed; its region outlined); ``pixel_size``: the
    scan step in ``unit`` (a scale bar; none when ``None``); ``kinds``: a line per image name
    saying what it is (default: its role).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from .display import robust_limits
    from .export import output_file, prepare_output, writing

    path = prepare_output(path, overwrite=overwrite, suffixes=(".png",))
    images = list(images)
    if not images:
        raise ValueError("no images to draw")
    kinds = dict(kinds or {})
    reference = table.reference if table is not None else None
    scores = {r.name: r for r in table.rows} if table is not None else {}
    # the reference last: the eye reads the methods first, then what they are measured against
    images.sort(key=lambda m: m.name == reference)
    n = len(images)
    cols = n if n <= 4 else math.ceil(n / 2)
    rows = math.ceil(n / cols)
    legend_in = 0.35 if table is not None else 0.0
    fig = Figure(figsize=(2.6 * cols, 3.1 * rows + (0.55 if title else 0.15) + 0.5 + legend_in))
    FigureCanvasAgg(fig)
    top = 1 - (0.55 if title else 0.15) / fig.get_figheight()
    bottom = (0.5 + legend_in) / fig.get_figheight()  # room for the last row's lines
    grid = fig.add_gridspec(rows, cols, left=0.01, right=0.99, top=top, bottom=bottom,
                            wspace=0.04, hspace=0.45)
    for i, m in enumerate(images):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        img = np.asarray(m.image, np.float32)
        lo, hi = robust_limits(img, 0.5, 99.5)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        is_ref = m.name == reference
        ax.set_title(m.name if len(m.name) <= 34 else m.name[:32] + "…", fontsize=9,
                     fontweight="bold" if is_ref else "normal")
        what = kinds.get(m.name, m.role.replace("_", " "))
        s = scores.get(m.name)
        if is_ref:
            line = f"{what} — reference"
        elif s is not None and np.isfinite(s.pearson_r):
            line = f"{what}\nr {s.pearson_r:.3f} · SSIM {s.ssim:.3f}"
        else:
            line = what
        ax.text(0.5, -0.03, line, transform=ax.transAxes, ha="center", va="top", fontsize=8)
        for spine in ax.spines.values():
            spine.set_edgecolor("#d08000" if is_ref else "#999999")
            spine.set_linewidth(2.0 if is_ref else 0.6)
        if table is not None:
            y0, y1, x0, x1 = table.region
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="#f0b400", linewidth=0.9, linestyle="--"))
        if i == 0 and pixel_size:
            ny, nx = img.shape
            length = scale_bar_length(nx * pixel_size)
            px = length / pixel_size
            x_end, y_bar = nx - 0.06 * nx, ny - 0.08 * ny
            ax.plot([x_end - px, x_end], [y_bar, y_bar], color="white", linewidth=3,
                    solid_capstyle="butt")
            ax.text(x_end - px / 2, y_bar - 0.03 * ny, f"{length:g} {unit}", color="white",
                    ha="center", va="bottom", fontsize=8, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=11)
    if table is not None:
        y0, y1, x0, x1 = table.region
        handles = [Line2D([], [], color="#f0b400", linestyle="--",
                          label=f"scores computed here (rows {y0}–{y1 - 1}, columns "
                                f"{x0}–{x1 - 1}), against {reference}")]
        fig.legend(handles=handles, loc="lower center", frameon=False, fontsize=8,
                   bbox_to_anchor=(0.5, 0.0))
    with output_file(path, overwrite=overwrite) as tmp, writing(path):
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
