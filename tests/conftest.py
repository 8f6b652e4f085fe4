"""Shared test fixtures: the real-data folder and a real matcher server on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("INK_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real fingerprint data not found at {path}")
    return path


@pytest.fixture
def matcher_server(tmp_path):
    """A real gRPC matcher over a fresh SQLite watchlist, plain text on a free local port."""
    from matcher.server import start_server

    running = start_server(tmp_path / "watchlist.sqlite", "127.0.0.1:0", insecure=True,
                           workers=4)
    try:
        yield running
    finally:
        running.stop(grace=None)
