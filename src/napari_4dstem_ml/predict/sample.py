"""The one look at the data before the pass: a sample of patterns read once per job.

Everything that must see the data before a model runs — the domain check (dose, dark-field
fraction, the bright-field disk) and the preprocessing's data-set values (centre, mean counts)
— takes it from one :class:`PatternSample`, read once (:func:`~..preprocess.sample_patterns`:
whole scan rows spread over the scan, one read; on a Dask cluster by the workers), never by a
scan of its own. Live, the sample is the first block of rows the detector delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..dataset import Dataset4D

__all__ = ["SAMPLE_PATTERNS", "PatternSample"]

#: patterns in a job's sample (as many as the preprocessing is fitted on)
SAMPLE_PATTERNS = 1024


@dataclass(frozen=True)
class PatternSample:
    """``patterns`` ``(n, ky, kx)`` float32, negatives clipped, NaN/inf patterns left out."""

    patterns: np.ndarray = field(repr=False)
    where: str = "whole scan rows spread over the scan"

    @classmethod
    def take(cls, dataset: Dataset4D, max_patterns: int = SAMPLE_PATTERNS) -> PatternSample:
        """Read about ``max_patterns`` patterns of ``dataset`` in one go."""
        from ..preprocess import sample_patterns

        return cls(sample_patterns(dataset, max_patterns))

    @classmethod
    def from_block(cls, block: np.ndarray, where: str = "the first rows") -> PatternSample:
        """The patterns of a block of rows ``(rows, nx, ky, kx)`` (live: the first block)."""
        from ..preprocess import PreprocessError

        p = np.asarray(block, np.float32).reshape(-1, *block.shape[-2:])
        p = p[np.isfinite(p).all(axis=(1, 2))]
        if len(p) == 0:
            raise PreprocessError(f"every diffraction pattern of {where} holds NaN/inf values")
        return cls(np.clip(p, 0, None), where)

    @cached_property
    def mean_pattern(self) -> np.ndarray:
        """Mean pattern ``(ky, kx)`` float64."""
        return self.patterns.mean(0, dtype=np.float64)

    @cached_property
    def mean_counts(self) -> float:
        """Mean total counts per pattern (the dose the preprocessing divides by)."""
        return float(self.patterns.sum(axis=(1, 2), dtype=np.float64).mean())

    def __len__(self) -> int:
        return int(self.patterns.shape[0])
