"""The Python client of the relay: `client = await relay.client.connect(host, port, key, user)`.

See relay/client/client.py for the Client API and relay/client/events.py for the events; the
protocol itself is the sans-I/O relay.protocol.client.ClientConnection.
"""

from relay.client.client import Client, connect
from relay.client.errors import ClientError, ConnectError, JoinRefused, Unreachable, WrongRoomKey
from relay.client.events import (
    ClosingEvent,
    ConnectionLost,
    Disconnected,
    ErrorEvent,
    Event,
    Joined,
    Left,
    ProfileChanged,
    Received,
    Resumed,
)
from relay.protocol.client import ClientConfig, ClientStats, ConnectionClosedError
from relay.protocol.messages import Member

__all__ = [
    "Client",
    "ClientConfig",
    "ClientError",
    "ClientStats",
    "ClosingEvent",
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionLost",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "JoinRefused",
    "Joined",
    "Left",
    "Member",
    "ProfileChanged",
    "Received",
    "Resumed",
    "Unreachable",
    "WrongRoomKey",
    "connect",
]
