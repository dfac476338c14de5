"""`python -m loadtest.tlscost`: the figures docs/operations.md quotes for TLS come from the
relay's own layer, through a handshake and records that arrive whole on the other side."""

from __future__ import annotations

import pytest

from loadtest import tlscost


def test_tlscost_measures_the_relays_layer(capsys: pytest.CaptureFixture[str]) -> None:
    got = tlscost.measure(records=2_000, handshakes=3)
    assert set(got) == {"handshake_us", "write_us", "read_us"}
    assert all(0 < v < 1e6 for v in got.values()), got
    assert got["handshake_us"] > got["write_us"]  # a key exchange and a signature, against one record
    assert tlscost.main(["--records", "1000"]) == 0
    assert capsys.readouterr().out.startswith("TLS in the relay: handshake ")
