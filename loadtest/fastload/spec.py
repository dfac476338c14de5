"""What the harness hands a load worker: frozen, so it pickles into a spawned process as is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Members that send to each other, on one relay: (user_id, transport, sender index) each."""

    host: str
    port: int
    room_key: str
    members: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker's groups and the shape of its load."""

    groups: tuple[GroupSpec, ...]
    targeted: bool  # groups share a relay: send to the 3 others by id instead of broadcasting
    payload_size: int = 100
    batch: int = 8
    cpus: frozenset[int] | None = None
    connect_timeout: float = 10.0
