"""The order test files start in under `make test`'s workers (pytest-xdist, `--dist loadfile
--no-loadscope-reorder`): the longest first, so that the parallel part ends with short files on
both workers rather than one long file on one of them while the other waits. xdist's own order
(most tests first) started the one-test sanitizer build, a minute long, last. The other files keep
their collection order; the list is of files over about 20 s (the `--durations` of a CI run)."""

from __future__ import annotations

import pytest

LONGEST_FIRST = (
    "tests/loadtest/test_scenarios_beside.py",
    "tests/server/test_sanitized.py",
    "tests/fuzz/test_targets.py",
    "tests/control/test_kill_bursts.py",
    "tests/server/test_lane.py",
    "tests/test_cli.py",
    "tests/gs2/test_relay.py",
    "tests/test_readme.py",
    "tests/control/test_schemathesis.py",
    "tests/server/test_limits.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
