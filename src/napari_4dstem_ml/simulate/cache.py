"""Resumable cache of intermediate simulation results, next to the output file.

``<out>.parts/<digest>/`` holds ``config.json`` and one ``<name>.npz`` per finished chunk;
the digest covers every parameter that changes the cached arrays, so a rerun with the same
parameters resumes and a changed one starts afresh. Chunks and ``config.json`` are written
through the package's one writing path (:func:`napari_4dstem_ml.export.output_file`: a hidden
temporary beside the target, fsynced, then put in place), so a killed run never leaves a
truncated chunk behind, and its temporaries are cleaned up by the next write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np


class PartsCache:
    """Chunks of one simulation, in ``<out>.parts/<digest>/``."""

    def __init__(self, out: str | Path, digest: str, config: dict[str, Any] | None = None):
        out = Path(out)
        self.root = out.with_name(out.name + ".parts")
        self.dir = self.root / digest
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            from ..export import write_text

            write_text(self.dir / "config.json", json.dumps(config, indent=1), overwrite=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.npz"

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of chunk ``name``, or None when it has not been computed."""
        p = self.path(name)
        if not p.exists():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    def save(self, name: str, **arrays: np.ndarray) -> None:
        """Store chunk ``name`` (complete, or not at all)."""
        from ..export import output_file, writing

        p = self.path(name)
        with output_file(p, overwrite=True) as tmp, writing(p), open(tmp, "xb") as f:
            np.savez(f, **arrays)

    def remove(self) -> None:
        """Delete this simulation's chunks (and the ``.parts`` folder when it is empty)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass
