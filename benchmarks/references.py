"""Ground-truth references the benchmarks score simulated files against: the projected
potential blurred *before* it is sampled on the scan grid
(``napari_4dstem_ml.simulate.truth``), at the ptychographic label's resolution
(``metrics.LABEL_SIGMA_A``) and at the 0.4 Å low-pass — read from the file where its generator
stored it, else rebuilt. Rebuilding a potential takes 0.2 s for a crystal and up to 2 min for a
large defect box, so each is cached in ``benchmarks/_data/truth_cache`` (keyed by the file's
name, size, modification time and σ).

Until issue 17's scoring fix the benchmarks blurred the sampled ``/ground_truth/potential``
instead; at 0.3-0.4 Å steps that reference is aliased (r 0.91 against this one for CeO2 at
0.4 Å, 0.95 for SrTiO3, 0.99 for Si at 0.3 Å, > 0.99 at 0.2 Å)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks/_data/truth_cache"


def _stored(path: Path, sigma_A: float) -> np.ndarray | None:
    """The reference the generator stored for ``sigma_A`` (the label's σ or the 0.4 Å low-pass:
    ``simulate.groundtruth.reference_datasets``), else None."""
    import h5py

    from napari_4dstem_ml.metrics import LABEL_SIGMA_A, LOWPASS_RESOLUTION_A
    from napari_4dstem_ml.simulate.groundtruth import (
        LABEL_REFERENCE,
        LOWPASS_REFERENCE,
        lowpass_sigma_A,
    )

    for name, sig in ((LABEL_REFERENCE, LABEL_SIGMA_A),
                      (LOWPASS_REFERENCE, lowpass_sigma_A(LOWPASS_RESOLUTION_A))):
        if abs(sigma_A - sig) < 1e-9:
            with h5py.File(path, "r") as f:
                return np.asarray(f[name], np.float64) if name in f else None
    return None


def truth_at(path: Path, sigma_A: float) -> np.ndarray:
    """The ground truth of the simulated file ``path`` blurred by a Gaussian of ``sigma_A``
    (Å) before sampling, on its scan grid ``(y, x)`` (V·Å): as the file stores it where it
    does, else rebuilt (and cached)."""
    from napari_4dstem_ml.simulate.truth import ground_truth

    stored = _stored(Path(path), sigma_A)
    if stored is not None:
        return stored
    p = Path(path)
    st = p.stat()
    key = CACHE / f"{p.stem}_{st.st_size}_{st.st_mtime_ns}_{sigma_A:.4f}.npy"
    if key.is_file():
        return np.load(key)
    out = ground_truth(p).at(sigma_A)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = key.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(key)
    return out


def label_truth(path: Path) -> np.ndarray:
    """:func:`truth_at` the ptychographic label's resolution (``metrics.LABEL_SIGMA_A``)."""
    from napari_4dstem_ml.metrics import LABEL_SIGMA_A

    return truth_at(path, LABEL_SIGMA_A)


def lowpass_truth(path: Path) -> np.ndarray:
    """:func:`truth_at` the 0.4 Å low-pass (10 % transfer at 1/0.4 Å⁻¹, ``metrics.lowpass``)."""
    from napari_4dstem_ml.metrics import LOWPASS_RESOLUTION_A
    from napari_4dstem_ml.simulate.groundtruth import lowpass_sigma_A

    return truth_at(path, lowpass_sigma_A(LOWPASS_RESOLUTION_A))
