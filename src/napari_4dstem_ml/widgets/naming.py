"""What the plugin's layers and table rows are called: every view says what it shows.

Pure functions (no Qt), shared by the docks, so that one thing has one name everywhere.
"""

from __future__ import annotations


def label_kind(method: str | None) -> str:
    """What a label image is, from its method text (``label_method`` of a sample, or a label
    file's description): "ptychography", "low-passed potential", "projected potential",
    "simulation", or "label" when the text does not say."""
    text = (method or "").lower()
    if "ptycho" in text:
        return "ptychography"
    if "potential" in text:
        if any(w in text for w in ("low-pass", "low pass", "lowpass", "gaussian")):
            return "low-passed potential"
        return "projected potential"
    if "simulat" in text:
        return "simulation"
    return "label"


def label_title(method: str | None) -> str:
    """``"label (ptychography)"``, ``"label (low-passed potential)"``, … (``"label"``)."""
    kind = label_kind(method)
    return "label" if kind == "label" else f"label ({kind})"


def registered_name(dataset: str, method: str | None = None) -> str:
    """The label put onto ``dataset``'s scan grid (its kind, when known)."""
    kind = label_kind(method)
    what = "label" if kind == "label" else f"label ({kind})"
    return f"{what} on scan grid: {dataset}"


def applied_name(model: str, dataset: str) -> str:
    """A model's reconstruction of a data set."""
    return f"{model} → {dataset}"
