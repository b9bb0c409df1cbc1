"""The widgets' settings, remembered between launches in one small JSON file.

The file is ``$XDG_CONFIG_HOME/napari-4dstem-ml/settings.json`` (``~/.config/...``).
``NAPARI_4DSTEM_ML_SETTINGS`` overrides it: a path to use another file, or ``off`` to neither
read nor write settings. Under pytest (``PYTEST_CURRENT_TEST`` set) settings are off unless
that variable names a file, so tests never see or change a user's settings.

Values are plain JSON (numbers, strings, booleans) in sections, one per widget; a file that
cannot be read is ignored (defaults are used, the file is left alone until the next change).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ENV_VAR = "NAPARI_4DSTEM_ML_SETTINGS"


def settings_path() -> Path | None:
    """The settings file in use, or ``None`` when settings are off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in ("", "off", "0", "none", "false"):
            return None
        return Path(value).expanduser()
    if "PYTEST_CURRENT_TEST" in os.environ:
        return None
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "napari-4dstem-ml" / "settings.json"


class Settings:
    """Sections of JSON values, read once and written (atomically) on every change."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = settings_path() if path is None else path
        self.values: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.values = {k: v for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self.values = {}

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.values.get(section, {}).get(key, default)

    def set(self, section: str, key: str, value: Any) -> None:
        if self.values.get(section, {}).get(key) == value:
            return
        self.values.setdefault(section, {})[key] = value
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".settings.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.values, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # settings are a convenience: never an error for the user

    def bind(self, section: str, key: str, widget) -> None:
        """Restore ``widget``'s value from the settings (if stored) and store every change.

        Handles ``QComboBox`` (current text, when it is one of the items), ``QSpinBox`` /
        ``QDoubleSpinBox`` (value) and ``QCheckBox`` (checked).
        """
        from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QSpinBox

        stored = self.get(section, key)
        if isinstance(widget, QComboBox):
            if isinstance(stored, str) and widget.findText(stored) >= 0:
                widget.setCurrentText(stored)
            widget.currentTextChanged.connect(lambda v: self.set(section, key, v))
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            if isinstance(stored, (int, float)) and not isinstance(stored, bool):
                widget.setValue(type(widget.value())(stored))
            widget.valueChanged.connect(lambda v: self.set(section, key, v))
        elif isinstance(widget, QAbstractButton) and widget.isCheckable():
            if isinstance(stored, bool):
                widget.setChecked(stored)
            widget.toggled.connect(lambda v: self.set(section, key, bool(v)))
        else:
            raise TypeError(f"cannot bind a {type(widget).__name__} to a setting")
