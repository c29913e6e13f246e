"""Fixtures for client tests: the shared live server (tests/clients/live.py)."""
from __future__ import annotations

import pytest

from tests.clients.live import shared_default_server
from tests.helpers.live_server import SubprocessServer


@pytest.fixture(scope="package")  # the shared server; restarted if it was stopped
def live_server() -> SubprocessServer:
    return shared_default_server()
