"""`python -m loadtest.tlscost [--records N]`: what TLS costs the relay per WebSocket record and
per handshake, in its own code path (relay/server/tls.py's TlsLayer over ssl's memory BIOs, a
client on memory BIOs too, no sockets), with a throwaway ECDSA P-256 certificate. The figures
docs/operations.md ("TLS") quotes beside the nano scenario's wss runs."""

from __future__ import annotations

import argparse
import contextlib
import ssl
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.certs import make_tls_files
from relay.server.metrics import Counters
from relay.server.tls import TlsLayer, server_context

RECORD = bytes(300)  # a WebSocket frame of a pass to one member, about


class _Wire:
    """The raw transport under the layer: keeps what the layer writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        raise AssertionError("the layer dropped the connection")

    def set_protocol(self, protocol: Any) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


@dataclass
class _Pair:
    """The relay's layer and a client on memory BIOs, past their handshake."""

    layer: TlsLayer
    wire: _Wire
    client: ssl.SSLObject
    incoming: ssl.MemoryBIO  # to the client
    outgoing: ssl.MemoryBIO  # from the client
    handshake_s: float  # what the layer spent in the handshake


def _connected(server: ssl.SSLContext, client: ssl.SSLContext) -> _Pair:
    wire = _Wire()
    layer = TlsLayer(wire, server, Counters(), lambda data: None, lambda exc: None, lambda: None)  # type: ignore[arg-type]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    spent = 0.0
    while not layer.handshaken:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        t0 = time.perf_counter()
        layer.data_received(outgoing.read())
        spent += time.perf_counter() - t0
        incoming.write(wire.take())
    tls.do_handshake()  # the client takes the server's last flight
    return _Pair(layer, wire, tls, incoming, outgoing, spent)


def measure(records: int = 200_000, handshakes: int = 200) -> dict[str, float]:
    """Microseconds: the median handshake, a record written, a record read."""
    with tempfile.TemporaryDirectory() as folder:
        files = make_tls_files(Path(folder))
        server = server_context(str(files.cert), str(files.key))
        client = ssl.create_default_context(cafile=str(files.ca))
        handshake = statistics.median(_connected(server, client).handshake_s for _ in range(handshakes))
        pair = _connected(server, client)
        t0 = time.perf_counter()
        for _ in range(records):
            pair.layer.write(RECORD)
        write = (time.perf_counter() - t0) / records
        pair.incoming.write(pair.wire.take())
        assert pair.client.read(len(RECORD)) == RECORD  # what was written is a record the client reads
        sent = []
        for _ in range(records):
            pair.client.write(RECORD)
            sent.append(pair.outgoing.read())
        t0 = time.perf_counter()
        for record in sent:
            pair.layer.data_received(record)
        read = (time.perf_counter() - t0) / records
    return {"handshake_us": handshake * 1e6, "write_us": write * 1e6, "read_us": read * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.tlscost", description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args(argv)
    got = measure(args.records)
    print(
        f"TLS in the relay: handshake {got['handshake_us']:.0f} us (median, ECDSA P-256), "
        f"a {len(RECORD)}-byte record written {got['write_us']:.2f} us, read {got['read_us']:.2f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
