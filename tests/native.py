"""What each piece of the C part's tests checks first: built where CI requires it
(RELAY_REQUIRE_NATIVE: gcc is there, so a missing extension is a failure, not a skip), and chosen
or refused by RELAY_PURE_PYTHON in a fresh interpreter, where the choice is made at import."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import pytest

from relay.settings import pure_python


def built(module: str) -> ModuleType | None:
    """The extension `module` as built here, whatever RELAY_PURE_PYTHON says; None where it is
    not (no C compiler)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def require_built(built: object | None, not_built: str) -> None:
    """Fails where CI requires the C part and `built` is None; elsewhere skips saying why."""
    if os.environ.get("RELAY_REQUIRE_NATIVE"):
        assert built is not None, not_built
    if built is None:
        pytest.skip(not_built)


def check_in_use(
    built: object | None, not_built: str, native: bool, chosen: object, pair: tuple[object, object]
) -> None:
    """`require_built`, then: the module's `NATIVE` and its choice (`chosen`) are the C one of
    `pair` (C, Python), unless RELAY_PURE_PYTHON asked for the Python one."""
    require_built(built, not_built)
    c, py = pair
    assert (native, chosen) == ((False, py) if pure_python() else (True, c))


def printed_with_pure_python(code: str, value: str) -> list[str]:
    """What `code` prints, split into words, run with RELAY_PURE_PYTHON=`value`."""
    env = {**os.environ, "RELAY_PURE_PYTHON": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()
