"""Every server test also fails if the relay logged an error (an exception escaped a handler,
a callback such as Room.flush raised, a sweep failed): bad input must be dropped and counted."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_relay_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("asyncio", "relay")
    ]
    assert not errors, "relay or event loop logged errors:\n" + "\n".join(r.getMessage() for r in errors)
