"""magicgui forms remembered between launches.

:func:`persist` restores every value widget of a magicgui container from the session's
settings (:mod:`.settings`, one section per form) and stores each change. A stored value that
cannot apply any more (a choice that no longer exists, a number out of range) is dropped quietly:
the widget keeps its default, and nothing is reported as an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def value_widgets(container) -> list:
    """The value widgets of a magicgui container, nested containers included."""
    from magicgui.widgets import Container
    from magicgui.widgets.bases import ValueWidget

    out = []
    for w in container:
        if isinstance(w, Container):
            out += value_widgets(w)
        elif isinstance(w, ValueWidget):
            out.append(w)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def persist(settings, section: str, container) -> list[str]:
    """Restore ``container``'s values from ``settings[section]`` (by widget name) and store
    every later change; returns the names of stored values that could not apply (reset)."""
    reset = []
    for w in value_widgets(container):
        stored = settings.get(section, w.name)
        if stored is not None:
            try:
                w.value = stored
            except (ValueError, TypeError):
                reset.append(w.name)
        w.changed.connect(lambda value, name=w.name: settings.set(section, name, _jsonable(value)))
    return reset
