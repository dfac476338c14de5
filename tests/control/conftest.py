from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.control.app import ControlPlane
from tests.control.helpers import make_config, threaded_control_plane


@pytest.fixture
def threaded_cp(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane on a background thread (records only), for the synchronous gs2 SDK."""
    with threaded_control_plane(make_config(tmp_path, provisioner="none")) as cp:
        yield cp


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """An in-process control plane whose local provisioner starts stand-in relays."""
    plane = ControlPlane(make_config(tmp_path))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()
