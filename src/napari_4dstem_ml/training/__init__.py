"""Training and checkpoints for the cluster models (applying them: :mod:`napari_4dstem_ml.predict`).

- ``clusters``: K×K neighbourhoods of patterns, ``RegionSplit``, ``PatternSource``.
- ``loop``: ``train(...)`` generator of events, ``TrainConfig``, ``TrainResult``, ``run_training``.
- ``patches``: scan patches for fully convolutional training (``patch_plan``, ``patch_input``).
- ``checkpoint``: ``save_checkpoint`` (atomic, one file) / ``load_checkpoint``, ``CheckpointError``.
- ``synthetic``: ``make_synthetic`` test data with a known answer.

Importing this package does not import torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "RegionSplit": "clusters",
    "PatternSource": "clusters",
    "SplitError": "clusters",
    "TrainConfig": "loop",
    "TrainResult": "loop",
    "TrainError": "loop",
    "StepEvent": "loop",
    "EpochEvent": "loop",
    "PreviewEvent": "loop",
    "PrepareEvent": "loop",
    "DoneEvent": "loop",
    "train": "loop",
    "run_training": "loop",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "LoadedModel": "checkpoint",
    "CheckpointError": "checkpoint",
    "make_synthetic": "synthetic",
    "SyntheticData": "synthetic",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
