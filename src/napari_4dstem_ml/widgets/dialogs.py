"""File dialogs of the docks: they open in the folder last used (remembered between launches),
else the user's home folder — never the working directory, which for ``make run`` is the
source checkout."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QWidget

SECTION, KEY = "files", "last_dir"


def start_dir(session) -> Path:
    """The folder a dialog opens in: the last one used if it still exists, else home."""
    last = session.settings.get(SECTION, KEY) if session is not None else None
    if isinstance(last, str) and last and Path(last).is_dir():
        return Path(last)
    return Path.home()


def remember(session, path: str) -> None:
    if path and session is not None:
        session.settings.set(SECTION, KEY, str(Path(path).parent))


def save_file(parent: QWidget, session, title: str, name: str, filters: str) -> str:
    """A save dialog proposing ``name`` in the remembered folder; "" when cancelled."""
    path, _ = QFileDialog.getSaveFileName(parent, title, str(start_dir(session) / name), filters)
    remember(session, path)
    return path


def open_file(parent: QWidget, session, title: str, filters: str = "") -> str:
    """An open dialog in the remembered folder; "" when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, title, str(start_dir(session)), filters)
    remember(session, path)
    return path
