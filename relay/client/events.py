"""Events a Client yields. All but Disconnected come from the sans-I/O connection:

- `Joined(connection_id, user_id, profile)`: another member joined (or appeared in a snapshot).
- `Left(connection_id, reason)`: a member left; reason is a LeaveReason, or 0 (LEAVE_UNSEEN)
  when it was found missing from a fresh snapshot (after a resume or SYNC).
- `ProfileChanged(connection_id, profile)`.
- `Received(sender, data)`: a MESSAGE; `sender` was stamped by the relay.
- `ErrorEvent(code, text)`: an ERROR (ErrorCode), e.g. 2 rate limited, 4 payload too large.
- `ClosingEvent(reason, text)`: the relay ended the session (CloseReason); the stream ends.
- `ConnectionLost(reason)`: the transport went or went silent; a resume follows when enabled.
- `Resumed(connection_id, kept_seat)`: the resume succeeded (kept_seat False: the seat had
  expired and this is a fresh join with a new connection id).
- `Disconnected(reason)`: the client gave up (reconnect disabled, refused, or the resume window
  passed); the stream ends.

The connect() call consumes the first WELCOME itself, so `Welcomed` never reaches the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.protocol.client import (
    ClientEvent,
    ClosingEvent,
    ConnectionLost,
    ErrorEvent,
    Joined,
    Left,
    ProfileChanged,
    Received,
    Resumed,
    Welcomed,
)


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The client is done without a CLOSING from the relay; `reason` says why."""

    reason: str


Event = ClientEvent | Disconnected

__all__ = [
    "ClientEvent",
    "ClosingEvent",
    "ConnectionLost",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "Joined",
    "Left",
    "ProfileChanged",
    "Received",
    "Resumed",
    "Welcomed",
]
