"""The load tests send only to this machine: loopback addresses (127.0.0.0/8, ::1), or a network
namespace a test made (whose loopback is its own). An address given from outside (a control
plane's URL, the room addresses it hands out) is checked before anything is sent to it."""

from __future__ import annotations

import ipaddress
import socket


def loopback_problem(host: str) -> str | None:
    """Why `host` is not a loopback address, or None; a name counts when every address it
    resolves to is loopback (a name that does not resolve does not)."""
    try:
        addresses = {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except (OSError, UnicodeError) as exc:
            return f"{host!r} does not resolve ({exc})"
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    outside = sorted(str(a) for a in addresses if not a.is_loopback)
    if outside or not addresses:
        return f"{host!r} is not a loopback address ({', '.join(outside) or 'no address'})"
    return None


def require_loopback(host: str, what: str) -> None:
    """Raises ValueError unless `host` is loopback: load is never sent off this machine."""
    problem = loopback_problem(host)
    if problem:
        raise ValueError(f"{what}: {problem}; the load tests send only to 127.0.0.0/8 or ::1")
