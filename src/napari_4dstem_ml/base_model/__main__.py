"""``python -m napari_4dstem_ml.base_model``: train the shipped base models (see .recipe)."""

import sys

from .recipe import main

sys.exit(main())
