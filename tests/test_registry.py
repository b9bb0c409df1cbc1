"""The readers' registry is the one list of what opens: the npe2 manifest's reader patterns
must be exactly the registry's extensions (a format added to one and not the other would open
from the CLI and not from napari, or the reverse)."""

from pathlib import Path

import yaml

from napari_4dstem_ml.io import EXTENSIONS
from napari_4dstem_ml.io.registry import READERS

MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


def test_manifest_reader_patterns_equal_the_registry_extensions():
    manifest = yaml.safe_load(MANIFEST.read_text())
    readers = {r["command"]: r for r in manifest["contributions"]["readers"]}
    patterns = readers["napari-4dstem-ml.get_reader"]["filename_patterns"]
    assert sorted(patterns) == sorted(f"*{ext}" for ext in EXTENSIONS)
    assert len(set(patterns)) == len(patterns)


def test_every_registered_reader_declares_its_extensions():
    listed = set(EXTENSIONS)
    for name, module in READERS.items():
        assert module.NAME == name
        assert set(module.EXTENSIONS) <= listed, name
