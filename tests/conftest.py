"""Fixtures shared by the test modules, and the suite's guards.

- every test has a time limit (``timeout`` in pyproject.toml, pytest-timeout): a hang fails
  that test with its stack instead of stopping the suite;
- ``real_data``: the folder of files written by real detectors and other software
  (``../shared/real-data`` beside the repository; tests using it skip where it is absent);
- ``synthetic``: a small synthetic data set with a known answer (``make_synthetic``), one per
  test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: files written by real instruments and by other people's software, with what their headers state
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The read-only real-data folder (skips the test where it is absent)."""
    if not (REAL_DATA / "expected.json").is_file():
        pytest.skip(f"the real-data folder is not at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="module")
def synthetic():
    """A 24 x 28 scan of 24 x 24 patterns with a known projected potential (seed 0)."""
    from napari_4dstem_ml.training.synthetic import make_synthetic

    return make_synthetic((24, 28), (24, 24), seed=0)
