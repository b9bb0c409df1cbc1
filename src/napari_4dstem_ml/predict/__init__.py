"""Applying a trained model to a data set: one pipeline for every front end.

- ``pipeline``: :class:`Reconstructor` (sample → domain check → preprocessing → model → image,
  in process or on Dask workers), :func:`prepare` (the steps before the pass, also used live),
  :class:`ReconstructionReport`; :func:`predict` / :func:`iter_reconstruct` (the model's pass
  alone).
- ``sample``: :class:`PatternSample`, the patterns read once per job before the pass.
- ``fields``: a model tile by tile (``predict_field`` on padded tiles; ensembles' spread).
- ``tiles``: :class:`TileFeeder`, padded tiles read and preprocessed in the background.
- ``linear``: the linear model as one virtual-image pass and a K x K convolution.
- ``events``: :class:`PredictEvent`, :class:`Reconstruction`, :class:`Message`,
  :class:`PredictionError`.

Importing this package does not import torch.
"""

from __future__ import annotations

from .events import Message, PredictEvent, PredictionError, Reconstruction
from .pipeline import (
    Prepared,
    ReconstructionReport,
    Reconstructor,
    check_image,
    domain_issues,
    iter_predict,
    iter_reconstruct,
    predict,
    prepare,
)
from .sample import SAMPLE_PATTERNS, PatternSample

__all__ = ["SAMPLE_PATTERNS", "Message", "PatternSample", "PredictEvent", "PredictionError",
           "Prepared", "Reconstruction", "ReconstructionReport", "Reconstructor", "check_image",
           "domain_issues", "iter_predict", "iter_reconstruct", "predict", "prepare"]
