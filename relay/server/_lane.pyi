"""Types of relay/server/_lane.c (the room's UDP port and its members' connections read in C);
what each does is said there."""

from collections.abc import Callable, Sequence
from typing import Any, final

BATCH: int
MAX_PACKET: int
SEND: int
DATA: int
VERSION: int

Hook = tuple[object, str, Callable[[float], object]]

@final
class Entry:
    """A session's handles in the lane (opaque but for `queued`: 1 once its connection wrote
    through its transport)."""

    queued: int

@final
class Lane:
    fast: int
    punted: int
    entries: int
    def __init__(
        self,
        fd: int,
        room: Any,
        counters: Any,
        punt: Callable[[bytes, Any, float], object],
        punt_opened: Callable[[Any, bytes, bytes, int, Any, float], object],
        max_payload: int,
        max_plaintext: int,
        hooks: Sequence[Hook] = (),
        fanout_bounds: Sequence[float] | None = None,
        on_full: Callable[[], object] | None = None,
    ) -> None: ...
    def read(self) -> None: ...
    def offer(self, session: Any, member: Any, path: Any, name: bytes, /) -> bool: ...
    def close(self) -> None: ...
    def ws_limits(
        self,
        max_payload: int,
        max_plaintext: int,
        send_buffer: int,
        hooks: tuple[Hook, ...],
        schedule: Callable[[], object],
        /,
    ) -> None: ...
    def ws_offer(
        self, session: Any, member: Any, fd: int, conn: Any, transport: Any, recipient: Any = None, /
    ) -> Entry | None: ...
    def ws_forget(self, entry: Entry, /) -> None: ...
    def ws_read(self, entry: Entry, /) -> None: ...
    def ws_flush(self) -> None: ...
    def gs2_limits(self, key: bytes, started: float, max_size: int, /) -> None: ...
    def gs2_decode(self, data: bytes, /) -> tuple[bytes, tuple[int, ...]] | None: ...
