"""One reconstruction pipeline for every front end.

    source (Dataset4D, calibrations as read and given)
      → sample (PatternSample: read once)
      → domain check (DataSignature of the sample against the checkpoint's training domain)
      → pattern check (every pattern's features against the checkpoint's pattern domain,
               :mod:`..pattern_domain`, one virtual-detector pass: a distance map, a verdict)
      → preprocessing (the model's Preprocessor adapted to the data set on the same sample)
      → model (the linear model as one virtual-image pass; a CNN or ensemble tile by tile;
               in process or in bands of rows on Dask workers)
      → image (+ uncertainty, + classical baselines), streamed as events

:class:`Reconstructor` is built once per job and run as a generator: it yields
:class:`~.events.PredictEvent` (rows done, the image filled in place, the new rows) and
``Message`` lines, and returns a :class:`ReconstructionReport`. The CLI (``stemml predict``),
the napari training dock, the headless demo, the benchmarks and the live mode (which takes the
same :func:`prepare` on its first rows) only adapt it: none restates a step.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .events import Message, PredictEvent, PredictionError, Reconstruction, finish
from .local import model_pass
from .sample import SAMPLE_PATTERNS, PatternSample

__all__ = ["Prepared", "ReconstructionReport", "Reconstructor", "check_image", "domain_issues",
           "iter_predict", "iter_reconstruct", "predict", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """What the pipeline knows before the pass: the sample, the data set's signature, the
    domain issues and the preprocessor adapted to the data set."""

    sample: PatternSample
    signature: Any
    issues: list
    preprocessor: Any


@dataclass
class ReconstructionReport:
    """A model applied to a data set: the image (label units), its ``uncertainty`` (ensemble
    spread, or ``None``), the domain check (``issues``: the input's quantities outside the
    model's training domain; ``signature``: what was measured), the classical ``baselines``
    (iCoM, ADF) when asked for, ``where`` the model ran, and the pattern check
    (``pattern``: a :class:`~..pattern_domain.PatternVerdict` with its distance map, or
    ``None`` with ``pattern_note`` saying why not)."""

    image: np.ndarray
    uncertainty: np.ndarray | None
    issues: list
    signature: Any
    baselines: Any = None
    where: str = "in process"
    pattern: Any = None
    pattern_note: str = ""
    #: what ``uncertainty`` is: "ensemble spread" (an ensemble's members' standard
    #: deviation), "error model" (a single model's map from the checkpoint's
    #: :class:`~..error_model.ErrorModel`: predicted local RMS error, label units), or ""
    #: when there is none; ``spread`` the ensemble's spread, ``error_map`` the error model's
    #: map (also for an ensemble, for comparison)
    uncertainty_kind: str = ""
    spread: np.ndarray | None = None
    error_map: np.ndarray | None = None
    error_model: Any = None

    def metadata(self) -> dict[str, Any]:
        """What an output file records about how it was made."""
        return {
            "domain_check": ("outside the training domain" if self.issues
                             else "inside the training domain"),
            "domain_issues": [i.to_dict() for i in self.issues],
            "signature": self.signature.to_dict(),
            "computed": self.where,
            "pattern_check": (self.pattern.to_dict() if self.pattern is not None
                              else {"checked": False, "note": self.pattern_note}),
            "uncertainty": {
                "kind": self.uncertainty_kind or None,
                "units": "label units" if self.uncertainty is not None else None,
                "error_model": None if self.error_model is None else self.error_model.to_dict(),
            },
        }


def domain_issues(loaded: Any, dataset: Dataset4D, signature: Any = None,
                  sample: Any = None) -> tuple[list, Any]:
    """Check ``dataset`` (its ``sample`` when already read) against the training domain
    stored in ``loaded``'s checkpoint; returns (issues, the data set's signature)."""
    from ..domain import DataSignature, TrainingDomain

    signature = signature or DataSignature.from_dataset(dataset, sample=sample)
    summary = (loaded.info or {}).get("train_summary", {}) if hasattr(loaded, "info") else {}
    domain = TrainingDomain.from_dict(summary.get("domain"))
    reach = loaded.preprocessor.grid_reach_alpha(signature.alpha_mrad)
    # a detector shorter than the model's grid leaves its outer input empty: down to the reach
    # floor measured at the end of training (training/trust.py) that cost no accuracy
    floor = summary.get("reach_floor")
    floor = floor.get("floor_alpha") if isinstance(floor, dict) else None
    if reach is not None and isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0:
        reach = min(reach, float(floor))
    return domain.check(signature, model_reach_alpha=reach), signature


def prepare(loaded: Any, dataset: Dataset4D, sample: PatternSample | None = None) -> Prepared:
    """The steps before the pass, on one sample (read here when not given): the domain check
    and the preprocessor adapted to ``dataset``."""
    sample = sample if sample is not None else PatternSample.take(dataset, SAMPLE_PATTERNS)
    issues, signature = domain_issues(loaded, dataset, sample=sample)
    pre = loaded.preprocessor.adapt(dataset, sample=sample)
    return Prepared(sample, signature, issues, pre)


#: the pattern check reads at most about this many positions (every few rows and columns of a
#: larger scan, the map repeated back to the full grid): its pass over a 512 × 512 scan
#: reads every second row (a quarter of the patterns) beside the model's own pass; on a cluster it
#: runs in this process
PATTERN_CHECK_POSITIONS = 65_536


class Reconstructor:
    """A model applied to a data set, from the file to the image; see the module docstring.

    ``loaded``: a :class:`~..training.checkpoint.LoadedModel` (model, preprocessor and the
    checkpoint's description with its training domain). ``compute``/``client``: where the
    model runs (:class:`~..parallel.Compute`; ``None``: in this process; ``rows_per_task``:
    scan rows per task on a cluster). ``baselines``: also
    compute iCoM and the ADF annulus the detector holds. ``device``: move the model there
    first (``"auto"``: CUDA when available).
    """

    def __init__(self, loaded: Any, dataset: Dataset4D, *, compute: Any = None, client: Any = None,
                 baselines: bool = False, tile_rows: int | None = None,
                 device: Any = None, rows_per_task: int | None = None) -> None:
        self.loaded, self.dataset = loaded, dataset
        self.compute, self.client = compute, client
        self.baselines, self.tile_rows, self.device = baselines, tile_rows, device
        self.rows_per_task = rows_per_task
        self._prepared: Prepared | None = None

    @property
    def distributed(self) -> bool:
        return self.client is not None or (self.compute is not None and not self.compute.in_process)

    @property
    def where(self) -> str:
        what = "in process" if self.compute is None else self.compute.describe()
        if self.client is not None:
            address = getattr(self.client.scheduler, "address", "?")
            return f"on the Dask cluster at {address}" + (
                "" if self.compute is None else f" ({what})")
        return what

    def prepare(self) -> Prepared:
        """The sample, the domain check and the adapted preprocessor (done once)."""
        if self._prepared is None:
            sample = None
            if self.distributed and self.client is not None:
                from .distributed import sample_on_workers

                sample = sample_on_workers(self.dataset, SAMPLE_PATTERNS, client=self.client)
            self._prepared = prepare(self.loaded, self.dataset, sample)
        return self._prepared

    def run(self) -> Generator[Message | PredictEvent, None, ReconstructionReport]:
        """Domain check (a :class:`Message` per issue), the pattern check (a :class:`Message`
        with its verdict), then the model's pass (its
        :class:`~.events.PredictEvent` s), then, with ``baselines``, iCoM and ADF. An image
        that is NaN/inf or zero everywhere is garbage: :class:`PredictionError`. With a
        cluster to start, it is started first: the workers read the sample too."""
        if self.distributed and self.client is None:
            from ..parallel import open_client

            with open_client(self.compute) as client:
                self.client = client
                try:
                    return (yield from self._run())
                finally:
                    self.client = None
        return (yield from self._run())

    def _run(self) -> Generator[Message | PredictEvent, None, ReconstructionReport]:
        prep = self.prepare()
        for issue in prep.issues:
            yield Message(f"warning: outside the model's training domain: {issue.message()}")
        pattern, pattern_note = yield from self._pattern_check(prep)
        if self.distributed:
            rec = yield from self._distributed(prep)
        else:
            rec = yield from model_pass(self.loaded.model, prep.preprocessor, self.dataset,
                                         tile_rows=self.tile_rows, device=self.device)
        check_image(rec.image, self.dataset)
        report = ReconstructionReport(rec.image, rec.uncertainty, prep.issues, prep.signature,
                                      where=self.where)
        report.pattern, report.pattern_note = pattern, pattern_note
        self._uncertainty(report)
        if self.baselines:
            from ..baselines import classical_baselines

            yield Message("classical baselines: iCoM and ADF of the same data ...")
            report.baselines = classical_baselines(self.dataset)
        return report

    def _uncertainty(self, report: ReconstructionReport) -> None:
        """The uncertainty map: an ensemble's spread; for a single model, the map of the
        checkpoint's error model (fitted on its training label's validation region). On the
        transfer suite the error model ranked the CNN's error worse than the spread alone
        (mean ρ 0.43 vs 0.51, README, Trust), so an ensemble keeps its spread; the error
        model's map is in ``error_map`` beside it."""
        from ..error_model import ErrorModel

        summary = (getattr(self.loaded, "info", None) or {}).get("train_summary", {})
        em = ErrorModel.from_dict(summary.get("error_model"))
        report.spread = report.uncertainty
        if em is not None:
            report.error_model = em
            report.error_map = em.predict(report.image, report.spread)
        if report.spread is not None:
            report.uncertainty_kind = "ensemble spread"
        elif report.error_map is not None:
            report.uncertainty, report.uncertainty_kind = report.error_map, "error model"

    def _pattern_check(self, prep: Prepared):
        """The patterns against the checkpoint's pattern domain (a :class:`Message` with the
        verdict, or a quiet note where the checkpoint holds none): the BF disk on the job's
        sample, then one virtual-detector pass on every few rows and columns of a large scan
        (at most :data:`PATTERN_CHECK_POSITIONS`; here also on a cluster)."""
        from ..pattern_domain import verdict_from_summary

        summary = (getattr(self.loaded, "info", None) or {}).get("train_summary", {})
        verdict, line = verdict_from_summary(
            summary, self.dataset.data, self.dataset.calibration,
            max_positions=PATTERN_CHECK_POSITIONS,
            mean=prep.sample.mean_pattern)
        yield Message(line, "warning" if verdict is not None and verdict.fired else "info")
        return verdict, ("" if verdict is not None else line)

    def _distributed(self, prep: Prepared):
        from .distributed import iter_predict_prepared

        return (yield from iter_predict_prepared(self.loaded.model, prep.preprocessor,
                                                 self.dataset, client=self.client,
                                                 compute=self.compute,
                                                 rows_per_task=self.rows_per_task))


def check_image(image: np.ndarray, dataset: Dataset4D) -> None:
    """A prediction that is NaN/inf or zero everywhere is garbage: :class:`PredictionError`
    naming the data set."""
    finite = np.isfinite(image)
    if not finite.any() or not np.any(image[finite]):
        what = "NaN/inf" if not finite.any() else "zero"
        raise PredictionError(f"{dataset.source or 'the data set'}: the prediction is {what} "
                              "everywhere (the data or the model hold no usable values)")


# ---------------------------------------------------------------------------------------------
# the model's pass alone (no domain check): tests, training previews, scripts
# ---------------------------------------------------------------------------------------------
def iter_reconstruct(model, preprocessor, dataset: Dataset4D, *, tile_rows: int | None = None,
                     device: Any = None) -> Generator[PredictEvent, None, Reconstruction]:
    """``model`` over every position of ``dataset`` (``preprocessor`` adapted to it first:
    its centre, detector pixel and dose refitted when it is another data set); yields a
    :class:`~.events.PredictEvent` per band of rows and returns a :class:`Reconstruction`
    (image in label units and, for an ensemble, its uncertainty). An image that is NaN/inf or
    zero everywhere raises :class:`PredictionError`. ``device``: move the model there first."""
    pre = preprocessor.adapt(dataset)
    rec = yield from model_pass(model, pre, dataset, tile_rows=tile_rows, device=device)
    check_image(rec.image, dataset)
    return rec


def iter_predict(model, preprocessor, dataset: Dataset4D, *, tile_rows: int | None = None,
                 device: Any = None) -> Generator[PredictEvent, None, np.ndarray]:
    """:func:`iter_reconstruct` returning the image ``(Ny, Nx)`` (label units) only."""
    rec = yield from iter_reconstruct(model, preprocessor, dataset, tile_rows=tile_rows,
                                      device=device)
    return rec.image


def predict(model, preprocessor, dataset: Dataset4D, *, tile_rows: int | None = None,
            progress: Any = None, device: Any = None) -> np.ndarray:
    """The image ``(Ny, Nx)`` float32 (label units) of ``dataset``; ``progress`` is called
    with each :class:`~.events.PredictEvent`."""
    return finish(iter_predict(model, preprocessor, dataset, tile_rows=tile_rows, device=device),
                  progress)
