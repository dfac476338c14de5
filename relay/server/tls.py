"""TLS on the WebSocket port, so a page served over https can reach the relay (`wss://`).

Browsers give WebCrypto, which the TypeScript client needs, only to secure contexts, and a page
on https may open only `wss://`; a terminator in front of relays that each listen on a port of
their own is awkward to run. So the relay terminates TLS itself when it has a certificate, on
the same port number as plain `ws://` and UDP: a connection whose first byte is a TLS handshake
record (0x16; an HTTP request starts with a letter) is TLS, anything else is plain, so clients
that build `ws://` URLs themselves (GS2's) keep working beside browsers on `wss://`.

The TLS layer is ssl's memory-BIO object, so it has no socket of its own: `TlsLayer` takes over
the connection's transport as its protocol once the first byte says TLS, and stands in for that
transport to the WebSocket code (relay/server/links.py), which then reads and writes plaintext
as on any connection. Plain connections pay nothing for it after their first read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from relay.server.metrics import Counters
from relay.server.ratelimit import TokenBucket

log = logging.getLogger("relay.server")

HANDSHAKE_RECORD = 0x16
"""The first byte of a TLS connection (a handshake record: the ClientHello)."""
RELOAD_CHECK = 60.0
"""Seconds between looks at the certificate files for a renewal, at most (taken at a new TLS
connection, never on a timer)."""
READ_SIZE = 65536


class TlsError(ValueError):
    """The certificate or key cannot be loaded: the relay does not start."""


def not_after(cert_file: str) -> float:
    """When the chain's first certificate (the server's own) expires, in Unix seconds: what
    `relay_tls_certificate_expiry_timestamp_seconds` shows, for an alert before it does."""
    from cryptography import x509  # only where there is a certificate

    try:
        with open(cert_file, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())[0].not_valid_after_utc.timestamp()
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the TLS certificate {cert_file}: {exc}") from exc


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2 or newer, no renegotiation (a client could make the relay pay a handshake per
    request), ALPN http/1.1 (a WebSocket's opening handshake is HTTP/1.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc}") from exc
    return context


class Certificate:
    """A certificate chain and key, loaded at start (TlsError when they cannot be) into one
    context, and loaded into it again when either file changes: a renewal reaches a relay or a
    control plane that outlives the old certificate, new connections get it, open ones keep
    theirs. A renewal that cannot be loaded whole (half written) leaves the context as it was,
    and is tried again at the next look."""

    def __init__(self, cert_file: str, key_file: str, now: float) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._stamp = self._files_stamp()
        self.context = server_context(cert_file, key_file)
        self.not_after = not_after(cert_file)  # Unix seconds, of the certificate served
        self._checked = now

    def _files_stamp(self) -> tuple[int, ...]:
        try:
            stats = [os.stat(f) for f in (self.cert_file, self.key_file)]
        except OSError:
            return ()
        return tuple(n for st in stats for n in (st.st_mtime_ns, st.st_ino, st.st_size))

    def current(self, now: float) -> ssl.SSLContext:
        """The context, after a look at the files if the last was RELOAD_CHECK ago or more."""
        if now - self._checked >= RELOAD_CHECK:
            self._checked = now
            stamp = self._files_stamp()
            if stamp and stamp != self._stamp:
                try:
                    server_context(self.cert_file, self.key_file)  # whole, or the live one is untouched
                    expires = not_after(self.cert_file)
                    self.context.load_cert_chain(self.cert_file, self.key_file)
                    self.not_after, self._stamp = expires, stamp
                    log.info("TLS certificate reloaded from %s", self.cert_file)
                except (TlsError, OSError, ssl.SSLError) as exc:
                    log.warning("%s; keeping the one loaded", exc)
        return self.context


class TlsTerminator:
    """What a relay's TLS connections share: the certificate and the handshake rate limit.

    A TLS handshake costs the relay a key exchange and a signature (0.26 ms with an ECDSA P-256
    key, `python -m loadtest.tlscost`; several times that with RSA), more than a HELLO's work,
    before the client has shown anything: the rate limit keeps a flood of them from taking the
    room's CPU (its members' traffic is not slowed; new TLS connections over the rate are
    dropped, counted `tls_rate_limited`)."""

    def __init__(self, certificate: Certificate, per_second: int, counters: Counters, now: float) -> None:
        self.certificate = certificate
        self.counters = counters
        self.bucket = TokenBucket(per_second, 2 * per_second, now)

    def start(
        self,
        transport: asyncio.Transport,
        received: Callable[[bytes], None],
        lost: Callable[[Exception | None], None],
        eof: Callable[[], None],
        now: float,
    ) -> TlsLayer | None:
        """Takes over `transport`, whose first read began with a handshake record (the caller
        hands that read to the layer); None (the connection aborted, counted) when over the
        handshake rate."""
        if not self.bucket.take(1, now):
            self.counters.drops["tls_rate_limited"] += 1
            transport.abort()
            return None
        layer = TlsLayer(transport, self.certificate.current(now), self.counters, received, lost, eof)
        transport.set_protocol(layer)
        return layer


class TlsLayer(asyncio.Protocol):
    """One TLS connection: the raw transport's protocol, and the transport of the WebSocket code
    above it (`write`, `close`, `abort`, `is_closing`, `get_write_buffer_size`,
    `get_extra_info`). A handshake that fails, or a record that does not authenticate, drops the
    connection without an answer (counted `tls_handshake`, `tls_error`)."""

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        counters: Counters,
        received: Callable[[bytes], None],
        lost: Callable[[Exception | None], None],
        eof: Callable[[], None],
    ) -> None:
        self.raw = raw
        self.counters = counters
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._received = received
        self._lost = lost
        self._eof = eof
        self.handshaken = False
        self._failed = False

    # ---- the raw transport's protocol ----

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self._incoming.write(data)
        tls = self._tls
        if not self.handshaken:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._fail("tls_handshake", exc)
                return
            self.handshaken = True
        incoming = self._incoming
        while not self._failed:
            try:
                chunk = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:  # the rest of a record is still to come
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client is done writing
                self._flush()
                self._eof()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._fail("tls_error", exc)
                return
            if not chunk:
                break
            self._received(chunk)
            if not incoming.pending and not tls.pending():  # all read: no SSLWantReadError to
                break  # raise and catch (a third of a record's read, one record a read)
        self._flush()  # TLS 1.3 session tickets after the handshake, alerts

    def eof_received(self) -> bool | None:
        if not self.handshaken:  # a client that gave up on the handshake (a certificate it
            # does not trust: clients often close without sending their alert)
            self._fail("tls_handshake", EOFError("closed during the handshake"))
        elif not self._failed:
            self._eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _fail(self, reason: str, exc: Exception) -> None:
        self._failed = True
        self.counters.drops[reason] += 1
        log.debug("TLS connection dropped (%s): %s", reason, exc)
        self.raw.abort()

    def _flush(self) -> None:
        if self._outgoing.pending and not self.raw.is_closing():
            self.raw.write(self._outgoing.read())

    # ---- the transport of the WebSocket code ----

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed or not self.handshaken:
            return
        try:
            self._tls.write(data)
        except (ssl.SSLError, ValueError) as exc:
            self._fail("tls_error", exc)
            return
        record = self._outgoing.read()  # a record (none for no data): _flush's test is not needed
        if not self.raw.is_closing():
            self.raw.write(record)

    def close(self) -> None:
        """close_notify, then the transport's close (which writes what is buffered first)."""
        if self.handshaken and not self._failed and not self.raw.is_closing():
            with contextlib.suppress(ssl.SSLError, ValueError):  # SSLWantReadError: the client's
                self._tls.unwrap()  # close_notify is not awaited
            self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls
        return self.raw.get_extra_info(name, default)
