"""Side-by-side comparison of reconstruction methods against a reference, over a region.

Given scan-plane images ``(Ny, Nx)`` of one data set — conventional ADF, iCoM, the linear model,
the 4D CNN, the ptychographic label, the ground truth (whatever exists), each tagged with its
*role* — :func:`compare_methods` scores every image against one reference (the ground truth when
there is one, else the label) over a region of scan positions, with :func:`metrics.compare`
(sub-pixel registration, scale/offset fit, edge crop; Pearson r, SSIM, PSNR, FRC half-bit).
When the reference is a ground truth (and the pixel size is in Å), every row also carries
:func:`metrics.resolution_scores` over the region: r at the ptychographic label's resolution
(the ground truth blurred by a Gaussian of σ = :data:`metrics.LABEL_SIGMA_A`), r against the
raw and the 0.4 Å low-passed ground truth, and the half-bit FRC resolution against it (Å), so
a sharp image does not lose to a blurred one only because the reference was blurred.
The table is written as CSV (:meth:`ComparisonTable.to_csv`) and, with the images, as a PNG
figure (:func:`comparison_figure`, matplotlib's Agg backend: no display needed).

Headless: the napari "Compare" widget only gathers the layers and displays this table.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics

__all__ = [
    "COLUMNS",
    "RESOLUTION_COLUMNS",
    "ROLES",
    "ComparisonTable",
    "MethodImage",
    "MethodScore",
    "choose_reference",
    "compare_methods",
    "comparison_figure",
]

#: roles an image can play, in display order. "uncertainty" is shown but never scored.
ROLES = ("adf", "icom", "linear", "cnn", "label", "ground_truth", "uncertainty")
ROLE_TITLES = {
    "adf": "ADF",
    "icom": "iCoM",
    "linear": "linear model",
    "cnn": "4D CNN",
    "label": "label (ptychography)",
    "ground_truth": "ground truth",
    "uncertainty": "uncertainty",
}
UNSCORED = ("uncertainty",)
#: reference preference: the ground truth when it exists, else the label
REFERENCE_ROLES = ("ground_truth", "label")
COLUMNS = ("method", "role", "pearson_r", "ssim", "psnr_db", "frc_resolution")
#: extra columns when the reference is a ground truth (see :func:`metrics.resolution_scores`)
RESOLUTION_COLUMNS = ("r_label", "r_raw", "r_lowpass", "frc_ground_truth")

Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class MethodImage:
    """One image to compare: a display ``name``, its ``role`` (one of :data:`ROLES`) and the
    image ``(Ny, Nx)`` on the data set's scan grid. A ground truth may carry ``references``:
    itself blurred *before* sampling (``{"label": …, "lowpass": …}``, ``(Ny, Nx)`` each, as a
    simulation stores them: ``simulate.groundtruth.reference_datasets``), which the
    resolution-aware scores then use instead of blurring the sampled image (aliased at coarse
    steps)."""

    name: str
    role: str
    image: Any = field(repr=False, compare=False)
    references: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class MethodScore:
    """Scores of one image against the reference; NaN with a ``note`` when it could not be
    scored (e.g. NaN pixels in the region: an unfinished prediction)."""

    name: str
    role: str
    pearson_r: float
    ssim: float
    psnr: float
    frc_resolution: float | None
    note: str = ""
    report: metrics.ComparisonReport | None = field(default=None, repr=False, compare=False)
    resolution: metrics.ResolutionScore | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ComparisonTable:
    """The metrics table: every scored image against ``reference`` over ``region``
    ``(y0, y1, x0, x1)`` (half-open scan positions). FRC resolution in ``unit``."""

    reference: str
    reference_role: str
    region: Rect
    pixel_size: float
    unit: str
    rows: tuple[MethodScore, ...]
    #: whether the resolution columns' references were blurred before sampling (a simulation's
    #: own) rather than blurred here from the sampled ground truth
    references_before_sampling: bool = False

    def row(self, name: str) -> MethodScore:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; have {[r.name for r in self.rows]}")

    @property
    def has_resolution(self) -> bool:
        """Whether the rows carry resolution-aware scores (reference = ground truth, Å)."""
        return any(r.resolution is not None for r in self.rows)

    def _resolution_params(self) -> tuple[float, float]:
        for r in self.rows:
            if r.resolution is not None:
                return r.resolution.label_sigma_A, r.resolution.lowpass_resolution_A
        return metrics.LABEL_SIGMA_A, metrics.LOWPASS_RESOLUTION_A

    def headers(self) -> list[str]:
        """Display column titles (the resolution columns state their Gaussians)."""
        out = ["method", "role", "Pearson r", "SSIM", "PSNR (dB)", f"FRC ({self.unit})"]
        if self.has_resolution:
            sig, res = self._resolution_params()
            out += [f"r label res. (σ {sig:g} Å)", "r raw GT", f"r GT LP {res:g} Å",
                    "FRC vs GT (Å)"]
        return out

    def _blur_note(self) -> str:
        if self.references_before_sampling:
            return "blurred before sampling (the simulation's own)"
        return ("the ground-truth image blurred here: approximate where the scan step is coarse "
                "(≥ 0.3 Å: the sampled truth is aliased)")

    def header_tooltips(self) -> list[str]:
        """One explanation per :meth:`headers` column."""
        out = ["", "", "Pearson r against the reference after sub-pixel registration",
               "SSIM after registration and a scale/offset fit", "PSNR after the same fit",
               "half-bit FRC crossing against the reference (agreement, not resolution)"]
        if self.has_resolution:
            sig, res = self._resolution_params()
            out += [
                f"Pearson r against the ground truth blurred with a Gaussian of σ = {sig:g} Å "
                f"(FWHM {2 * math.sqrt(2 * math.log(2)) * sig:.2f} Å): the resolution of the "
                f"ptychographic label; {self._blur_note()}; no registration, 3 px edge crop",
                "Pearson r against the raw ground truth (a sharp image scores higher)",
                f"Pearson r against the ground truth low-passed to 10 % transfer at {res:g} Å",
                "resolution (Å) where the FRC of the image against the raw ground truth "
                "crosses the half-bit threshold",
            ]
        return out

    def formatted(self) -> list[tuple[str, ...]]:
        """Rows as display strings, in :data:`COLUMNS` order (then
        :data:`RESOLUTION_COLUMNS` when :attr:`has_resolution`)."""

        def f(v: float | None, digits: str) -> str:
            if v is None:
                return "—"
            return "nan" if not math.isfinite(v) else format(v, digits)

        out = []
        for r in self.rows:
            row = (
                r.name,
                ROLE_TITLES.get(r.role, r.role),
                f(r.pearson_r, ".3f"),
                f(r.ssim, ".3f"),
                f(r.psnr, ".2f"),
                f(r.frc_resolution, ".3g"),
            )
            if self.has_resolution:
                z = r.resolution
                row += ((f(z.r_label, ".3f"), f(z.r_raw, ".3f"), f(z.r_lowpass, ".3f"),
                         f(z.frc_resolution_A, ".3g")) if z is not None else ("—",) * 4)
            out.append(row)
        return out

    def csv_text(self) -> str:
        """The table as CSV (full precision), with the reference and region as comments."""
        buf = io.StringIO()
        y0, y1, x0, x1 = self.region
        buf.write(f"# reference: {self.reference} ({self.reference_role})\n")
        buf.write(f"# region: rows {y0}:{y1}, columns {x0}:{x1} (scan positions)\n")
        extra = []
        if self.has_resolution:
            sig, res_lp = self._resolution_params()
            buf.write(f"# r_label: against the ground truth blurred by a Gaussian of sigma "
                      f"{sig:g} A (the ptychographic label's resolution); r_lowpass: 10 % "
                      f"transfer at {res_lp:g} A; frc_ground_truth: half-bit, A\n"
                      f"# references: {self._blur_note()}\n")
            extra = [f"r_label_sigma_{sig:g}A", "r_raw", f"r_lowpass_{res_lp:g}A",
                     "frc_ground_truth_A"]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*COLUMNS[:-1], f"frc_resolution_{self.unit}", "note", *extra])

        def num(v: float | None) -> str:
            return "" if v is None else repr(float(v))

        for r in self.rows:
            more = []
            if extra:
                z = r.resolution
                more = (["", "", "", ""] if z is None else
                        [num(z.r_label), num(z.r_raw), num(z.r_lowpass), num(z.frc_resolution_A)])
            w.writerow([r.name, r.role, repr(r.pearson_r), repr(r.ssim), repr(r.psnr),
                        num(r.frc_resolution), r.note, *more])
        return buf.getvalue()

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`csv_text` to ``path`` (``.csv``) through the package's one writing path
        (:func:`export.write_text`: complete or nothing; never over a file unasked)."""
        from .export import prepare_output, write_text

        prepare_output(path, overwrite=overwrite, suffixes=(".csv",))
        return write_text(path, self.csv_text(), overwrite=overwrite)


def choose_reference(images: Sequence[MethodImage]) -> MethodImage | None:
    """The reference among ``images``: the (last) ground truth, else the (last) label."""
    for role in REFERENCE_ROLES:
        found = [m for m in images if m.role == role]
        if found:
            return found[-1]
    return None


def _crop(image: Any, region: Rect) -> np.ndarray:
    y0, y1, x0, x1 = region
    return np.asarray(image, np.float64)[y0:y1, x0:x1]


def compare_methods(
    images: Sequence[MethodImage],
    reference: MethodImage | None = None,
    region: Rect | None = None,
    *,
    pixel_size: float = 1.0,
    unit: str = "px",
) -> ComparisonTable:
    """Score every image of ``images`` (except the reference and unscored roles) against
    ``reference`` (default :func:`choose_reference`) over ``region`` ``(y0, y1, x0, x1)``
    (default: the whole scan), with :func:`metrics.compare` at ``pixel_size`` (``unit``).

    All images must be on the same scan grid ``(Ny, Nx)``. With a ground-truth reference and
    ``unit`` "Å" each row also gets :func:`metrics.resolution_scores` (see the module text).
    """
    images = list(images)
    if reference is None:
        reference = choose_reference(images)
    if reference is None:
        raise ValueError("nothing to compare against: no ground truth and no label image")
    ref = np.asarray(reference.image, np.float64)
    if ref.ndim != 2:
        raise ValueError(f"reference {reference.name!r} must be a 2D image, got {ref.shape}")
    ny, nx = ref.shape
    region = (0, ny, 0, nx) if region is None else tuple(int(v) for v in region)
    y0, y1, x0, x1 = region
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise ValueError(f"region {region} is empty or outside the {ny} × {nx} scan")
    ref_c = _crop(ref, region)
    if not np.all(np.isfinite(ref_c)):
        raise ValueError(
            f"reference {reference.name!r} has no value at some positions of the region "
            f"{region}: choose a region it covers"
        )
    with_res = reference.role == "ground_truth" and unit in ("Å", "A")
    refs = dict(reference.references or {}) if with_res else {}
    label_ref = _crop(np.asarray(refs["label"], np.float64), region) if "label" in refs else None
    low_ref = _crop(np.asarray(refs["lowpass"], np.float64), region) if "lowpass" in refs else None
    rows = []
    for m in images:
        if m is reference or m.role in UNSCORED:
            continue
        img = np.asarray(m.image)
        if img.shape != ref.shape:
            raise ValueError(
                f"{m.name!r} is {img.shape}, the reference {reference.name!r} is {ref.shape}: "
                "all images must be on the scan grid"
            )
        crop = _crop(img, region)
        if not np.all(np.isfinite(crop)):
            rows.append(MethodScore(m.name, m.role, math.nan, math.nan, math.nan, None,
                                    note="NaN in the region (unfinished?)"))
            continue
        rep = metrics.compare(crop, ref_c, pixel_size=pixel_size)
        res = None
        if with_res:
            try:
                res = metrics.resolution_scores(crop, ref_c, pixel_size,
                                                label_reference=label_ref,
                                                lowpass_reference=low_ref)
            except ValueError:  # a region too small for the edge crop
                res = None
        rows.append(
            MethodScore(m.name, m.role, rep.pearson_r, rep.ssim, rep.psnr, rep.frc_resolution,
                        report=rep, resolution=res)
        )
    return ComparisonTable(
        reference=reference.name,
        reference_role=reference.role,
        region=region,
        pixel_size=float(pixel_size),
        unit=unit,
        rows=tuple(rows),
        references_before_sampling=label_ref is not None,
    )


def comparison_figure(
    path: str | Path,
    images: Sequence[MethodImage],
    table: ComparisonTable | None = None,
    *,
    title: str = "",
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """A PNG figure: one labelled panel per image (robust contrast, the region outlined), and
    the metrics ``table`` beneath; matplotlib's Agg backend, written through
    :func:`export.output_file` (complete or nothing; never over a file unasked)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .display import robust_limits
    from .export import output_file, prepare_output, writing

    path = prepare_output(path, overwrite=overwrite, suffixes=(".png",))
    images = list(images)
    if not images:
        raise ValueError("no images to draw")
    n = len(images)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    n_table = 0 if table is None else len(table.rows) + 1
    fig = Figure(figsize=(3.0 * cols, 3.1 * rows + 0.3 * n_table + 0.4))
    FigureCanvasAgg(fig)
    top = 1.0 - (0.35 / fig.get_figheight() if title else 0.02)
    bottom = (0.3 * n_table + 0.4) / fig.get_figheight() if n_table else 0.02
    grid = fig.add_gridspec(rows, cols, left=0.02, right=0.98, top=top, bottom=bottom,
                            wspace=0.05, hspace=0.15)
    for i, m in enumerate(images):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        img = np.asarray(m.image, np.float32)
        lo, hi = robust_limits(img, 0.5, 99.5)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(m.name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if table is not None:
            y0, y1, x0, x1 = table.region
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="yellow", linewidth=0.8, linestyle="--"))
    if title:
        fig.suptitle(title, fontsize=10)
    if table is not None and table.rows:
        ax = fig.add_axes((0.02, 0.01, 0.96, bottom - 0.02))
        ax.axis("off")
        header = table.headers()
        t = ax.table(cellText=[list(r) for r in table.formatted()], colLabels=header,
                     loc="center", cellLoc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(8)
        ax.set_title(f"against {table.reference}, yellow region", fontsize=8)

    with output_file(path, overwrite=overwrite) as tmp, writing(path):
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
