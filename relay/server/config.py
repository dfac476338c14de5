"""RelayConfig: every knob of one room's relay, with the defaults of docs/protocol.md section 9.

Each field says what it is where it is declared (`doc(...)`); `relay serve --help` and the
settings table of docs/operations.md are written from those texts and the fields' types and
bounds (relay/settings.py), and relay/agent/launch.py writes and reads these as flags and
RELAY_* variables. Values are checked when a RelayConfig is made (a pydantic dataclass). What a
relay process needs beyond its room (registration with a control plane, caps) is the agent's:
relay/agent/config.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from relay.protocol.keys import decode_room_key
from relay.protocol.messages import Limits
from relay.settings import CONFIG

Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]
SecondsOrZero = Annotated[float, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]


def doc(default: Any, text: str, **extra: Any) -> Any:
    """A field's default with its description (the help of its flag); `extra` is shown to users
    (e.g. shown_default: the default in words)."""
    return Field(default=default, description=text, json_schema_extra=extra or None)


@dataclass(frozen=True, slots=True, config=CONFIG)
class RelayConfig:
    """One room's relay. Times are seconds; 0 for a rate means unlimited."""

    room_key: str = doc(
        "",
        "the room's key, base64url of 32 bytes (getRoom's encryptionKey); a secret",
        secret=True,
        shown_default="required (under Agones: the allocation's)",
    )
    host: str = doc("127.0.0.1", "address for UDP and WebSocket")
    port: Port = doc(0, "UDP and TCP (WebSocket) share this number; 0 picks one free for both")
    admin_host: str = doc("127.0.0.1", "address of the admin server")
    admin_port: Port | None = doc(
        None, "port of /metrics, /healthz and /readyz; 0 picks a free one; none: no admin server"
    )
    # limits
    max_players: Count = doc(32, "members at once; a JOIN past it gets ERROR room full (0: every JOIN)")
    max_payload_udp: Positive = doc(1100, "bytes of one SEND's data from a UDP member")
    max_payload_ws: Positive = doc(16384, "bytes of one SEND's data from a WebSocket member")
    max_profile: Count = doc(1024, "bytes of a member's profile")
    messages_per_second: Count = doc(100, "messages a member may send per second (0: unlimited)")
    message_burst: Count = doc(200, "messages a member may send at once above its rate")
    bytes_per_second: Count = doc(65536, "payload bytes a member may send per second (0: unlimited)")
    byte_burst: Count = doc(131072, "payload bytes a member may send at once above its rate")
    abuse_kick_after: Seconds = doc(
        5.0, "seconds over a rate limit without a break before the member is kicked"
    )
    ws_send_buffer: Positive = doc(
        262144, "bytes a WebSocket reader may fall behind before it is disconnected"
    )
    max_pending_handshakes: Positive = doc(1024, "handshakes answered but not yet completed, at most")
    handshake_timeout: Seconds = doc(10.0, "seconds a session may stay without joining")
    max_pending_connections: Positive = doc(
        256, "TCP connections without a session at once; the oldest is closed for a newer one"
    )
    connect_timeout: Seconds = doc(
        5.0, "seconds a TCP connection has to upgrade to WebSocket and send an authentic HELLO"
    )
    # liveness and lifecycle
    keepalive_timeout: Seconds = doc(10.0, "seconds of silence after which a member is dropped")
    resume_grace: SecondsOrZero = doc(15.0, "seconds a dropped WebSocket member's seat is held for a resume")
    idle_timeout: Seconds = doc(60.0, "seconds without member traffic after which the room closes")
    lifetime: Seconds = doc(10800.0, "seconds after which the room closes whatever happens")
    coalesce_tick: SecondsOrZero = doc(
        0.0, "seconds between flushes; 0 flushes at the end of each event-loop pass"
    )
    max_coalesce_delay_udp: SecondsOrZero = doc(
        0.00025,
        "with no tick: a pass still reading datagrams this long after it queued its first message "
        "flushes what it holds, so the first of a burst do not wait for the last (WebSocket input "
        "flushes at the end of its pass only)",
    )
    cpu_budget: NonNegative | None = doc(
        None,
        "cores this relay stays under by pacing its reads when busy (docs/tiers.md); "
        "none or 0: no pacing. relay serve with a tier sets the tier's (realtime1.nano: 0.125)",
    )
    max_pace: SecondsOrZero = doc(
        0.008,
        "the longest a paced relay waits after a pass before it reads again (seconds): under one "
        "period of the tiers' CPU caps (10 ms), since a message waits up to the pace and the nano "
        "tier's p99 sat at it",
    )
    drain_timeout: SecondsOrZero = doc(1.5, "seconds to wait on close for WebSocket buffers to empty")
    token_public_key: str | None = doc(
        None,
        "base64url Ed25519 public key; when set, JOIN (and a GS2 client's HelloRequest) must carry "
        "a user access token it signed",
    )
    gs2_clients: bool = doc(
        True,
        "accept GS2 game clients (GS2-Realtime's WebSocket wire: signed, not encrypted) on the "
        "WebSocket port beside native clients (docs/gs2-clients.md)",
    )
    tls_cert: str | None = doc(
        None,
        "PEM certificate chain (a file): the WebSocket port also serves wss://, as browsers on "
        "https pages need; plain ws:// and UDP stay on the same port. Reloaded when it changes",
    )
    tls_key: str | None = doc(None, "PEM private key of tls_cert (a file); both or neither")
    tls_handshakes_per_second: Positive = doc(
        20, "TLS handshakes begun per second at most, in bursts of twice as many; more are dropped"
    )

    @field_validator("room_key")
    @classmethod
    def _room_key(cls, value: str) -> str:
        if value:
            decode_room_key(value)  # ValueError: "room key must be base64url of 32 bytes"
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RelayConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    def limits(self, transport: str) -> Limits:
        """What WELCOME tells a member of `transport` ("udp", "ws" or "gs2": a GS2 client is on
        the WebSocket port, with WebSocket's payload limit)."""
        return Limits(
            max_players=self.max_players,
            max_payload=self.max_payload_udp if transport == "udp" else self.max_payload_ws,
            max_profile=self.max_profile,
            messages_per_second=self.messages_per_second,
            bytes_per_second=self.bytes_per_second,
            keepalive_timeout_ms=int(self.keepalive_timeout * 1000),
            resume_grace_ms=int(self.resume_grace * 1000),
        )
