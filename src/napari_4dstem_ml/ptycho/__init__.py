"""Ptychographic reconstruction of the training label inside the plugin (extra ``[ptycho]``).

- :mod:`.config`: :class:`PtychoConfig` (frozen, JSON).
- :mod:`.backends`: the back-end interface (:class:`PtychoData`, :class:`ObjectGeometry`);
  :mod:`.quantem_backend` drives quantem's ``PtychoLite``; :mod:`.registry`: ``get_backend``
  (the back ends by name).
- :mod:`.job`: :func:`reconstruct_label`, the job as a generator of :class:`PtychoEvent`
  (ETA, cancellable, resumable) ending with a :class:`PtychoLabel`;
  :func:`training_label` makes it the training label (registration check included);
  :func:`label_job` chains both (the training dock's "Reconstruct label").
- :mod:`.quality`: the label on the scan grid, half-data FRC, r against a ground truth, trust
  warnings.
- :mod:`.label_file`: writing the label (HDF5 with its provenance, or an image file).

Nothing here imports the back end's library until a reconstruction starts.
"""

from .backends import BackendUnavailableError, ObjectGeometry, PtychoData
from .config import MODES, PtychoConfig
from .job import (
    PtychoEvent,
    PtychoLabel,
    TrainingLabel,
    label_job,
    prepare_data,
    reconstruct_label,
    training_label,
)
from .quality import LabelQuality
from .registry import BACKENDS, get_backend

__all__ = ["BACKENDS", "MODES", "BackendUnavailableError", "LabelQuality", "ObjectGeometry",
           "PtychoConfig", "PtychoData", "PtychoEvent", "PtychoLabel", "TrainingLabel", "get_backend",
           "label_job", "prepare_data", "reconstruct_label", "training_label"]
