"""RelayConfig: every knob of one relay process, with the defaults of docs/protocol.md section 9."""

from __future__ import annotations

from dataclasses import dataclass

from relay.protocol.messages import Limits


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """One room's relay. Times are seconds; 0 for a rate means unlimited."""

    room_key: str = ""
    host: str = "127.0.0.1"
    port: int = 0  # UDP and TCP (WebSocket) share this number; 0 picks one free for both
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None  # /metrics and /healthz; 0 = ephemeral, None = no admin server
    # limits
    max_players: int = 32
    max_payload_udp: int = 1100
    max_payload_ws: int = 16384
    max_profile: int = 1024
    messages_per_second: int = 100
    message_burst: int = 200
    bytes_per_second: int = 65536
    byte_burst: int = 131072
    abuse_kick_after: float = 5.0  # over a rate limit continuously this long: kicked
    ws_send_buffer: int = 262144  # a WebSocket reader further behind than this is disconnected
    max_pending_handshakes: int = 1024
    handshake_timeout: float = 10.0
    # liveness and lifecycle
    keepalive_timeout: float = 10.0
    resume_grace: float = 15.0
    idle_timeout: float = 60.0
    lifetime: float = 10800.0
    coalesce_tick: float = 0.0  # 0: flush at the end of each event-loop pass
    # with no tick: a pass still reading datagrams this long after it queued its first message
    # flushes what it holds, so the first of a burst (uvloop reads up to 32 datagrams in one
    # pass) do not wait for the last; WebSocket input flushes at the end of its pass only
    max_coalesce_delay_udp: float = 0.00025
    drain_timeout: float = 1.5  # on close, how long to wait for WebSocket buffers to empty
    # user binding: base64url Ed25519 public key; when set JOIN must carry a valid token
    token_public_key: str | None = None
    # agent (relay/agent): registration with the control plane
    control_url: str | None = None
    namespace: str | None = None
    room: str | None = None
    agent_secret: str | None = None
    advertise_host: str | None = None
    # caps (relay/agent/caps.py): the tier this relay keeps to, and who enforces it
    tier: str | None = None  # e.g. "realtime1.nano" (relay/agent/tiers.py); None: no caps
    caps: str = "soft"  # "cgroup": the spawner placed us in a capped cgroup; "soft": in-process only

    def limits(self, transport: str) -> Limits:
        return Limits(
            max_players=self.max_players,
            max_payload=self.max_payload_udp if transport == "udp" else self.max_payload_ws,
            max_profile=self.max_profile,
            messages_per_second=self.messages_per_second,
            bytes_per_second=self.bytes_per_second,
            keepalive_timeout_ms=int(self.keepalive_timeout * 1000),
            resume_grace_ms=int(self.resume_grace * 1000),
        )
