"""The widgets' settings, remembered between launches in one small JSON file.

The file is ``$XDG_CONFIG_HOME/napari-4dstem-ml/settings.json`` (``~/.config/...``).
``NAPARI_4DSTEM_ML_SETTINGS`` overrides it: a path to use another file, or ``off`` to neither
read nor write settings. Under pytest (``PYTEST_CURRENT_TEST`` set) settings are off unless
that variable names a file, so tests never see or change a user's settings.

Values are plain JSON (numbers, strings, booleans) in sections, one per widget; a file that
cannot be read is ignored (defaults are used, the file is left alone until the next change).
Every value is validated when the file is read — its type (a JSON scalar; a finite number,
an integer within Qt's range) and, for the settings the widgets store (:data:`SCHEMA`), its
range — and again against the default the widget asks with (:meth:`Settings.get`) and the
widget's own range (:meth:`Settings.bind`). A value that fails is not used: the default is,
and :attr:`Settings.notes` (also issued once as a ``UserWarning``, which napari shows as a
notification) says which and why. A hand-edited or corrupt file never stops a widget.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

ENV_VAR = "NAPARI_4DSTEM_ML_SETTINGS"
#: the largest integer a Qt spin box takes (a C int)
QT_INT_MAX = 2**31 - 1
#: what the widgets store: (section, key pattern) -> (type, lowest, highest) or the choices
SCHEMA: dict[tuple[str, str], tuple] = {
    ("training", r"model"): (str, ("linear", "conv4d")),
    ("training", r"cluster_size"): (int, 1, 63),
    ("training", r".+\.epochs"): (int, 1, 10**6),
    ("training", r".+\.lr"): (float, 1e-9, 10.0),
    ("training", r".+\.batch_size"): (int, 1, 2**20),
    ("browser", r"exponent"): (float, 1e-3, 10.0),
}


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


def _problem(section: str, key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the setting ``section.key`` (``None``: it can)."""
    if isinstance(value, bool) or value is None:
        kind_ok = value is not None
    else:
        kind_ok = isinstance(value, (int, float, str))
    if not kind_ok:
        return f"a {type(value).__name__}, not a number, text or true/false"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > QT_INT_MAX:
        return "too large"
    if isinstance(value, str) and len(value) > 1000:
        return "too long"
    for (sec, pattern), rule in SCHEMA.items():
        if sec != section or not re.fullmatch(pattern, key):
            continue
        kind = rule[0]
        if kind is str:
            if value not in rule[1]:
                return f"expected one of {', '.join(rule[1])}"
            return None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not float(value).is_integer()):
            return f"expected {'an integer' if kind is int else 'a number'}"
        if not rule[1] <= value <= rule[2]:
            return f"expected {rule[1]:g}..{rule[2]:g}"
    return None


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a stored ``value`` can stand for a widget's ``default``."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, (int, float)) and float(value).is_integer()
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


class Settings:
    """Sections of JSON values, read once (and validated) and written (atomically) on every
    change. ``notes``: what was not used from the file, and why."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = settings_path() if path is None else path
        self.values: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"),
                                    parse_constant=lambda c: float("nan"))
            except (OSError, ValueError, RecursionError) as exc:
                self._note(f"settings file {self.path} is not readable JSON ({exc}); the "
                           "defaults are used")
                loaded = {}
            if not isinstance(loaded, dict):
                self._note(f"settings file {self.path} holds no sections; the defaults are used")
                loaded = {}
            for section, values in loaded.items():
                if not isinstance(values, dict):
                    self._note(f"settings [{section}] is not a section; ignored")
                    continue
                good = {}
                for key, value in values.items():
                    why = _problem(section, str(key), value)
                    if why is None:
                        good[str(key)] = value
                    else:
                        self._note(f"setting {section}.{key} = {_show(value)}: {why}; the "
                                   "default is used")
                self.values[str(section)] = good
        if self.notes:
            warnings.warn("napari-4dstem-ml: " + "; ".join(self.notes[:5])
                          + (f" (and {len(self.notes) - 5} more)" if len(self.notes) > 5 else ""),
                          UserWarning, stacklevel=2)

    def _note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """The stored value, if it is valid and of the kind of ``default``; else ``default``
        (with a note). An integral number stands for an integer default."""
        value = self.values.get(section, {}).get(key, default)
        if value is default:
            return default
        if not _same_kind(value, default):
            self._note(f"setting {section}.{key} = {_show(value)}: expected a value like "
                       f"{default!r}; the default is used")
            return default
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return value

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
            number = isinstance(stored, (int, float)) and not isinstance(stored, bool)
            if number and isinstance(widget, QSpinBox) and not float(stored).is_integer():
                self._note(f"setting {section}.{key} = {_show(stored)}: expected an integer")
            elif number and not widget.minimum() <= stored <= widget.maximum():
                self._note(f"setting {section}.{key} = {_show(stored)}: outside "
                           f"{widget.minimum():g}..{widget.maximum():g}; the default is used")
            elif number:
                widget.setValue(type(widget.value())(stored))
            widget.valueChanged.connect(lambda v: self.set(section, key, v))
        elif isinstance(widget, QAbstractButton) and widget.isCheckable():
            if isinstance(stored, bool):
                widget.setChecked(stored)
            widget.toggled.connect(lambda v: self.set(section, key, bool(v)))
        else:
            raise TypeError(f"cannot bind a {type(widget).__name__} to a setting")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
