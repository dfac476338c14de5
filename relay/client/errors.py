"""Exceptions raised by relay.client.connect() and the Client."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's own exceptions."""


class ConnectError(ClientError):
    """No WELCOME within the timeout, the transport could not be opened, or the relay closed."""


class JoinRefused(ConnectError):
    """The relay answered the JOIN with ERROR (room full, unauthorized, overloaded, ...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"join refused: error {code}: {text}" if text else f"join refused: error {code}")
        self.code = code
        self.text = text
