"""napari-4dstem-ml: machine-learning reconstruction of 4D-STEM data.

The compute core (``io``, ``detectors``, ``models``, ``training``, ``simulate``,
``cli``) imports neither napari nor Qt. GUI code lives in ``widgets`` and the
thin npe2 entry modules (``_reader``, ``_sample_data``, ``_widget``).
"""

__version__ = "0.1.0"

from .dataset import Calibration, Dataset4D  # noqa: E402
from .io import load  # noqa: E402

__all__ = ["Calibration", "Dataset4D", "load", "__version__"]
