"""Exceptions raised by relay.client.connect() and the Client."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's own exceptions."""


class ConnectError(ClientError):
    """No WELCOME within the timeout, the transport could not be opened, or the relay closed."""


class Unreachable(ConnectError):
    """No relay at that address: nothing listens there (refused), or nothing answers at all. A
    relay's room may have ended (a room nobody joins closes after its idle timeout)."""


class WrongRoomKey(ConnectError):
    """A relay is there but refused the handshake (WebSocket close 1008), or, over UDP, is there
    (its TCP port answers) but ignored it: a relay never answers a HELLO made with another room's
    key, so this is almost always the wrong key (or a client of another protocol version)."""


class JoinRefused(ConnectError):
    """The relay answered the JOIN with ERROR (room full, unauthorized, overloaded, ...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"join refused: error {code}: {text}" if text else f"join refused: error {code}")
        self.code = code
        self.text = text
