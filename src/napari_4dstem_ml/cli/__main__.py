"""``python -m napari_4dstem_ml.cli``."""

import sys

from . import main

sys.exit(main())
