"""``make run``'s display probe: a DISPLAY with no X server behind it falls back to headless
(Qt would abort the process instead of raising)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from napari_4dstem_ml import launch


def _free_display_number() -> int:
    """A display number with neither a local nor an abstract X socket, nor a TCP listener."""
    for n in range(4000 + os.getpid() % 1000, 6000):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not launch.x_display_reachable(
            f":{n}", timeout=0.2
        ):
            return n
    pytest.skip("no free display number")


def test_unreachable_and_malformed_displays():
    n = _free_display_number()
    assert not launch.x_display_reachable(f":{n}")
    assert not launch.x_display_reachable(f":{n}.0")
    for bad in ("", "garbage", ":", ":x", "host:"):
        assert not launch.x_display_reachable(bad)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets")
def test_a_listening_local_server_is_reachable():
    n = _free_display_number()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        try:  # abstract socket (Linux): no file to clean up
            server.bind(f"\0/tmp/.X11-unix/X{n}")
        except OSError:
            pytest.skip("abstract unix sockets unavailable")
        server.listen(1)
        assert launch.x_display_reachable(f":{n}")
        assert launch.x_display_reachable(f"unix:{n}.0")
    assert not launch.x_display_reachable(f":{n}")


def test_a_listening_tcp_server_is_reachable():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        if port <= 6000:
            pytest.skip("ephemeral port below 6000")
        assert launch.x_display_reachable(f"127.0.0.1:{port - 6000}")


def test_main_runs_headless_when_display_is_dead(monkeypatch, tmp_path, capsys):
    n = _free_display_number()
    monkeypatch.setattr(launch.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", f":{n}")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not launch.has_display()
    calls = []

    def fake_headless(out, models, time_limit_s):
        calls.append((out, models))
        return Path(out)

    monkeypatch.setattr(launch, "run_headless", fake_headless)
    assert launch.main(["--out", str(tmp_path), "--models", "linear"]) == 0
    assert calls == [(str(tmp_path), ("linear",))]
    assert f"no X server answers at DISPLAY=:{n}" in capsys.readouterr().out
